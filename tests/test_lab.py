"""Integration, as root, inside the lab: a host on a LAN made of namespaces, never the machine's own network."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from helpers import HOST_LIMITS, fake_sysctls, host_state, ip_json, leftovers, multiip, ours, running_lab, sh, within

from multiip import lab as labmod

pytestmark = pytest.mark.root

LAB_NET = ipaddress.IPv4Network("198.18.0.0/16")


def releases(lab: labmod.Lab) -> int:
    return len(re.findall(r"DHCPRELEASE\(lan0\)", (lab.state_dir / "dnsmasq.log").read_text()))


def active_leases(lab: labmod.Lab) -> int:
    """Leases the lab's server holds, but the lab host's own (a setup renews it on the bridge and never
    releases it: the address goes back to the host's uplink)."""
    lines = (lab.state_dir / "dnsmasq.leases").read_text().splitlines()
    return len([line for line in lines if f" {lab.host_mac} " not in line])


def render_to(tmp_path: Path, name: str, *args: str) -> Path:
    path = tmp_path / name
    path.write_text(multiip("render", *args).stdout)
    return path


def assert_clean(lab: labmod.Lab, prefix: str, uplink_before: dict[str, object]) -> None:
    assert leftovers(prefix, lab.host_ns) == []
    after = host_state(lab.host_ns, prefix)
    assert after == uplink_before, "the lab host's network is not as it was"


def check_dhcp_setup(lab: labmod.Lab, prefix: str, count: int) -> dict[str, object]:
    """count namespaces, each with a lab DHCP address and a resolver of its own; status --json agrees with ip."""
    status = json.loads(multiip("status", "--prefix", prefix, "--json", netns=lab.host_ns).stdout)
    rows = status["namespaces"]
    assert [r["name"] for r in rows] == [f"{prefix}{i}" for i in range(count)]
    seen = set()
    for r in rows:
        assert r["ipv4"] is not None, r
        ip = ipaddress.IPv4Interface(r["ipv4"])
        assert ip.ip in LAB_NET and ip.ip >= lab.dhcp_first and ip.network == LAB_NET
        assert r["gateway"] == str(lab.lan_ip)
        assert r["dhcp_alive"] and r["port_range"] == "1024-65535"
        seen.add(str(ip.ip))
        # what ip says in that namespace
        links = {x["ifname"]: x for x in ip_json("address", "show", netns=r["name"])}
        link = links[r["interface"]]
        assert link["address"] == r["mac"]
        assert [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"] == [r["ipv4"]]
        resolv = Path(f"/etc/netns/{r['name']}/resolv.conf").read_text()
        assert f"nameserver {lab.lan_ip}" in resolv  # the lab's DNS option landed in the namespace's own file
    assert len(seen) == count
    return status


def connect_from(namespaces: list[str], lab: labmod.Lab) -> list[subprocess.Popen[str]]:
    """One held connection from each namespace to the lab sink (a small bounded client each)."""
    code = (
        "import socket,sys,time; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); "
        "print('up', flush=True); time.sleep(10)"
    )
    procs = []
    for ns in namespaces:
        p = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", code, str(lab.lan_ip), str(lab.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "up"
    return procs


def wait_for(predicate, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_exported_script_gives_20_dhcp_namespaces_and_teardown_removes_them(
    lab: labmod.Lab, prefix: str, tmp_path: Path
) -> None:
    before = host_state(lab.host_ns, prefix)
    resolv_before = Path("/etc/resolv.conf").read_bytes()
    setup = render_to(tmp_path, "setup.sh", "--prefix", prefix)  # the defaults: 20 namespaces, DHCP auto
    teardown = render_to(tmp_path, "teardown.sh", "--teardown", "--prefix", prefix)
    sh("bash", str(setup), netns=lab.host_ns)
    status = check_dhcp_setup(lab, prefix, 20)
    assert status["uplink"] == "eth0" and status["bridge"] == "br0"
    # the host kept its address, now on the bridge, with its default route
    addrs = {
        x["ifname"]: [a["local"] for a in x["addr_info"]] for x in ip_json("-4", "address", "show", netns=lab.host_ns)
    }
    assert addrs["br0"] == [str(lab.host_ip)] and addrs.get("eth0", []) == []
    assert ip_json("-4", "route", "show", "default", netns=lab.host_ns)[0]["dev"] == "br0"
    assert Path("/etc/resolv.conf").read_bytes() == resolv_before

    # connections from two namespaces reach the sink, from their own addresses
    ips = [r["ipv4"].split("/")[0] for r in status["namespaces"][:2]]  # type: ignore[index]
    procs = connect_from([f"{prefix}0", f"{prefix}1"], lab)
    try:
        assert wait_for(lambda: all(labmod.sink_stats(lab)["peers"].get(ip) == 1 for ip in ips))
    finally:
        for p in procs:
            p.kill()
            p.wait()

    released = releases(lab)
    sh("bash", str(teardown), netns=lab.host_ns)
    assert releases(lab) - released == 20  # the server saw every release
    assert active_leases(lab) == 0
    assert_clean(lab, prefix, before)


def test_run_gives_20_dhcp_namespaces_and_down_removes_them(lab: labmod.Lab, prefix: str) -> None:
    before = host_state(lab.host_ns, prefix)
    multiip("run", "--prefix", prefix, "--yes", netns=lab.host_ns)
    check_dhcp_setup(lab, prefix, 20)
    released = releases(lab)
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert releases(lab) - released == 20
    assert_clean(lab, prefix, before)


def test_where_systemd_is_pid_1_the_scripts_run_again_in_a_scope_of_their_own(
    lab: labmod.Lab, prefix: str, tmp_path: Path
) -> None:
    """No systemd runs here: a stand-in systemd-run logs how it is asked and runs the command, so this proves
    the scripts hand themselves to `systemd-run --scope` once (and go on there), not what systemd then does."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "systemd-run.log"
    (fake / "systemd-run").write_text(
        f'#!/bin/sh\necho "$*" >>{log}\nwhile [ "${{1#-}}" != "$1" ]; do shift; done\nexec "$@"\n'
    )
    (fake / "systemd-run").chmod(0o755)
    (tmp_path / "system").mkdir()
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "MULTIIP_SYSTEMD_DIR": str(tmp_path / "system")}
    before = host_state(lab.host_ns, prefix)
    cp = multiip("run", "--prefix", prefix, "--count", "2", "--yes", netns=lab.host_ns, env=env)
    assert "ready: 2 namespaces" in cp.stderr
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns, env=env)
    asked = log.read_text().splitlines()
    assert len(asked) == 2 and all(re.match(rf"--quiet --scope --unit=multiip-{prefix}-\d+ ", a) for a in asked), asked
    assert all(" env MULTIIP_SCOPE=" in a for a in asked)  # once each: the script in its scope does not ask again
    assert_clean(lab, prefix, before)


def test_script_and_run_leave_the_same_host(lab: labmod.Lab, prefix: str, tmp_path: Path) -> None:
    """One source of truth: the exported script and `run` give the same host (static addresses)."""
    args = [
        "--prefix",
        prefix,
        "--count",
        "6",
        "--dhcp",
        "none",
        "--address",
        "198.18.200.1/16",
        "--bridge-tool",
        "brctl",
    ]
    before = host_state(lab.host_ns, prefix)
    sh("bash", str(render_to(tmp_path, "setup.sh", *args)), netns=lab.host_ns)
    by_script = host_state(lab.host_ns, prefix)
    sh("bash", str(render_to(tmp_path, "teardown.sh", "--teardown", "--prefix", prefix)), netns=lab.host_ns)
    assert_clean(lab, prefix, before)
    multiip("run", *args, "--yes", netns=lab.host_ns)
    by_run = host_state(lab.host_ns, prefix)
    assert by_run == by_script
    assert by_run["namespaces"][f"{prefix}5"]["addresses"] == [
        ("lo", "127.0.0.1", 8),
        (f"{prefix}-t5", "198.18.200.6", 16),
    ]
    assert by_run["namespaces"][f"{prefix}0"]["ports"] == ["1024", "65535"]
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert_clean(lab, prefix, before)


def test_static_namespaces_have_their_insides_and_no_ipv6_link_local(lab: labmod.Lab, prefix: str) -> None:
    """Each namespace: lo and its veth end up, the address and default route, the port range, and no IPv6
    link-local address on either veth end (their DAD/MLD floods slow 1000 namespaces down)."""
    before = host_state(lab.host_ns, prefix)
    multiip("run", "--prefix", prefix, "--count", "5", "--dhcp", "none", "--address", "198.18.210.1/16", "--yes",
            netns=lab.host_ns)  # fmt: skip
    made = host_state(lab.host_ns, prefix)
    inside = made["namespaces"][f"{prefix}4"]
    assert inside["ipv6"] == [("lo", "::1")] and made["ports_ipv6"] == []
    assert inside["ports"] == ["1024", "65535"]
    assert inside["links"] == [("lo", "UNKNOWN"), (f"{prefix}-t4", "UP")]
    assert inside["addresses"] == [("lo", "127.0.0.1", 8), (f"{prefix}-t4", "198.18.210.5", 16)]
    assert [json.loads(r)["dst"] for r in inside["routes"]] == ["198.18.0.0/16", "default"]
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert_clean(lab, prefix, before)


def test_the_lans_multicast_stays_out_of_ipv4_namespaces_and_its_broadcasts_reach_them(
    lab: labmod.Lab, prefix: str
) -> None:
    """Each frame the bridge floods is copied into every namespace: an IPv4 setup's ports take the LAN's
    broadcasts (ARP, DHCP) and none of its multicast (mDNS here), which its namespaces have no use for."""
    multiip("run", "--prefix", prefix, "--count", "3", "--dhcp", "none", "--address", "198.18.212.1/16", "--yes",
            netns=lab.host_ns)  # fmt: skip

    def received() -> list[int]:
        return [
            ip_json("-s", "link", "show", "dev", f"{prefix}-t{i}", netns=f"{prefix}{i}")[0]["stats64"]["rx"]["packets"]
            for i in range(3)
        ]

    send = (
        "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); s.bind((sys.argv[1], 0)); "
        "[s.sendto(b'x', ('224.0.0.251', 5353)) for _ in range(100)]; "  # first: in order before the broadcasts
        "[s.sendto(b'x', ('255.255.255.255', 9)) for _ in range(100)]"
    )
    before = received()

    def since() -> list[int]:
        return [a - b for a, b in zip(received(), before, strict=True)]

    sh(sys.executable, "-c", send, str(lab.lan_ip), netns=lab.lan_ns)
    assert wait_for(lambda: min(since()) >= 100, 30), f"the broadcasts did not all arrive: {since()}"
    got = since()
    assert all(n < 110 for n in got), f"multicast reached the namespaces: {got} frames each for 100 broadcasts"
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)


def test_a_prefix_that_is_another_setups_prefix_plus_digits_touches_nothing_of_it(lab: labmod.Lab, prefix: str) -> None:
    """ns1 + 0 is ns10: a setup's namespaces are the ones it recorded, never a name pattern."""
    args = ["--dhcp", "none", "--address", "198.18.240.1/16", "--yes"]
    multiip("run", "--prefix", prefix, "--count", "12", *args, netns=lab.host_ns)
    made = host_state(lab.host_ns, prefix)
    other = prefix + "1"
    assert json.loads(multiip("status", "--prefix", other, "--json").stdout)["namespaces"] == []
    cp = multiip("hold", f"{lab.lan_ip}:{lab.port}", "--prefix", other, check=False)
    assert cp.returncode != 0 and f"no setup with prefix {other}" in cp.stderr
    multiip("down", "--prefix", other, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == made, "down of another prefix changed this setup"
    refused = multiip("run", "--prefix", other, "--count", "2", *args, netns=lab.host_ns, check=False)
    assert refused.returncode != 0
    assert f"namespace {other}0 exists and is not from a setup of prefix {other}" in refused.stderr
    assert host_state(lab.host_ns, prefix) == made
    status = json.loads(multiip("status", "--prefix", prefix, "--json").stdout)
    assert [r["name"] for r in status["namespaces"]] == [f"{prefix}{i}" for i in range(12)]
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)


def test_running_again_changes_nothing(lab: labmod.Lab, prefix: str) -> None:
    args = ["--prefix", prefix, "--count", "4", "--yes"]
    multiip("run", *args, netns=lab.host_ns)
    first = host_state(lab.host_ns, prefix)
    again = multiip("run", *args, netns=lab.host_ns)
    assert "started 0 DHCP clients (4 already running)" in again.stderr
    assert host_state(lab.host_ns, prefix) == first
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)


@pytest.mark.parametrize("client", ["dhclient", "dhcpcd", "udhcpc"])
def test_each_dhcp_client(lab: labmod.Lab, prefix: str, client: str) -> None:
    before = host_state(lab.host_ns, prefix)
    resolv_before = Path("/etc/resolv.conf").read_bytes()
    multiip("run", "--prefix", prefix, "--count", "3", "--dhcp", client, "--yes", netns=lab.host_ns)
    status = check_dhcp_setup(lab, prefix, 3)
    assert status["dhcp"] == client
    if client != "dhcpcd":
        assert all(r["lease_expires"] for r in status["namespaces"])  # type: ignore[union-attr]
    assert Path("/etc/resolv.conf").read_bytes() == resolv_before
    released = releases(lab)
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert releases(lab) - released == 3
    assert_clean(lab, prefix, before)


def test_host_dhcp_mode_the_seeds_way(lab: labmod.Lab, prefix: str) -> None:
    before = host_state(lab.host_ns, prefix)
    multiip("run", "--prefix", prefix, "--count", "2", "--host-dhcp", "--dhcp", "dhclient", "--yes", netns=lab.host_ns)
    br = next(iter(ip_json("-4", "address", "show", "dev", "br0", netns=lab.host_ns)))
    assert br["addr_info"][0]["local"] == str(lab.host_ip)  # what the LAN gives the host's MAC
    acks = re.findall(
        rf"DHCPACK\(lan0\) {re.escape(str(lab.host_ip))} {lab.host_mac}", (lab.state_dir / "dnsmasq.log").read_text()
    )
    assert acks, "the bridge asked DHCP"
    assert ip_json("-4", "route", "show", "default", netns=lab.host_ns)[0]["dev"] == "br0"
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert_clean(lab, prefix, before)


def test_down_works_without_the_state_directory(lab: labmod.Lab, prefix: str) -> None:
    before = host_state(lab.host_ns, prefix)
    multiip("run", "--prefix", prefix, "--count", "3", "--yes", netns=lab.host_ns)
    shutil.rmtree(f"/run/multiip/{prefix}")
    released = releases(lab)
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert releases(lab) - released == 3  # found the udhcpc clients by namespace; -R released on exit
    assert_clean(lab, prefix, before)


def test_namespaces_without_a_lease_are_named(prefix: str) -> None:
    """A DHCP server with 2 leases and 3 namespaces: run fails, names the one without, and down cleans up."""
    with running_lab(name=prefix + "s", leases=2, capacity=100) as small:
        before = host_state(small.host_ns, prefix)
        args = ["run", "--prefix", prefix, "--count", "3", "--lease-timeout", "20", "--yes"]
        cp = multiip(*args, netns=small.host_ns, check=False)
        assert cp.returncode != 0
        last = cp.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"multiip: error: no DHCP lease within 20s for 1 of 3 namespaces: {prefix}\d .*", last), (
            last
        )
        multiip("down", "--prefix", prefix, "--yes", netns=small.host_ns)
        assert_clean(small, prefix, before)


def test_a_missing_uplink_changes_nothing(lab: labmod.Lab, prefix: str) -> None:
    before = host_state(lab.host_ns, prefix)
    cp = multiip("run", "--prefix", prefix, "--uplink", "nosuch0", "--yes", netns=lab.host_ns, check=False)
    assert cp.returncode != 0
    assert cp.stderr.strip().splitlines()[-1] == "multiip: error: uplink nosuch0 does not exist"
    assert not ours(prefix) and host_state(lab.host_ns, prefix) == before


def test_lab_host_has_a_real_looking_uplink(lab: labmod.Lab) -> None:
    addrs = ip_json("-4", "address", "show", "dev", "eth0", netns=lab.host_ns)
    assert addrs[0]["addr_info"][0]["local"] == str(lab.host_ip)
    assert ip_json("-4", "route", "show", "default", netns=lab.host_ns)[0]["gateway"] == str(lab.lan_ip)
    assert labmod.sink_stats(lab)["workers"] == lab.workers


def test_host_limits_refuse_then_tune_host_raises_and_down_restores(
    lab: labmod.Lab, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ARP/backlog check, against a stand-in for /proc/sys (the real ones are host-wide)."""
    values = {
        "net/ipv4/neigh/default/gc_thresh1": "128",
        "net/ipv4/neigh/default/gc_thresh2": "512",
        "net/ipv4/neigh/default/gc_thresh3": "100",
        "net/core/netdev_max_backlog": "100",
    }
    fake = fake_sysctls(tmp_path / "sys", values)
    monkeypatch.setenv("MULTIIP_SYSCTL_DIR", str(fake))
    before = host_state(lab.host_ns, prefix)
    args = ["--prefix", prefix, "--count", "3", "--dhcp", "none", "--address", "198.18.210.1/16", "--yes"]
    cp = multiip("run", *args, netns=lab.host_ns, check=False)
    assert cp.returncode != 0
    last = cp.stderr.strip().splitlines()[-1]
    assert "outgrow host-wide limits: net.ipv4.neigh.default.gc_thresh3=100 (needs 262)" in last, last
    assert "net.core.netdev_max_backlog=100 (needs 134)" in last and "--tune-host" in last
    assert not ours(prefix) and host_state(lab.host_ns, prefix) == before
    multiip("run", *args, "--tune-host", netns=lab.host_ns)
    assert (fake / "net/ipv4/neigh/default/gc_thresh3").read_text().strip() == "262"
    assert (fake / "net/core/netdev_max_backlog").read_text().strip() == "134"
    assert (fake / "net/ipv4/neigh/default/gc_thresh2").read_text().strip() == "512"  # already enough
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert {k: (fake / k).read_text().strip() for k in values} == values
    assert_clean(lab, prefix, before)


def test_tune_host_needs_the_hosts_own_namespace(lab: labmod.Lab, prefix: str) -> None:
    cp = multiip("run", "--prefix", prefix, "--count", "2", "--tune-host", "--yes", netns=lab.host_ns, check=False)
    assert cp.returncode != 0 and "run it in the host's own" in cp.stderr
    assert not ours(prefix)


def test_interrupted_setup_says_so_and_down_cleans_up(
    lab: labmod.Lab, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setup killed half-way (Ctrl-C, a dropped session) reports where, and `down` removes the rest.
    600 namespaces are made in 6 chunks, two at a time: the first progress line comes once the third
    starts, so a SIGTERM then leaves some made and some not, whatever the timing."""
    # the host-wide limits 600 namespaces need (the lab's own are the defaults)
    fake = fake_sysctls(tmp_path / "sys", dict.fromkeys(HOST_LIMITS, "4096"))
    monkeypatch.setenv("MULTIIP_SYSCTL_DIR", str(fake))
    before = host_state(lab.host_ns, prefix)
    setup = render_to(tmp_path, "setup.sh", "--prefix", prefix, "--count", "600", "--dhcp", "none",
                      "--address", "198.18.220.1/16")  # fmt: skip
    proc = subprocess.Popen(
        [*within(lab.host_ns), "bash", str(setup)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        made = re.search(r"progress namespaces (\d+)/600", line)
        if made and int(made[1]) < 600:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    assert 'multiip: error: interrupted during step "600 namespaces' in rest, rest
    made = ours(prefix)
    assert 0 < len(made) < 600, f"the test meant to interrupt a half-done setup: {len(made)} made"
    time.sleep(1)
    assert ours(prefix) == made, "nothing the script started goes on after it exits"
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert_clean(lab, prefix, before)


def in_a_terminal(argv: list[str], answer: bool, limit: float = 120) -> str:
    """argv on a pseudo terminal of its own (its controlling terminal: what --confirm asks on). When it asks,
    Enter is pressed or not; returns all it wrote, once it has exited (bounded: ``limit`` seconds)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # fmt: skip
    os.close(slave)
    said, deadline = b"", time.monotonic() + limit
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    said += os.read(master, 65536)
                if answer and b"Press Enter" in said:
                    os.write(master, b"\n")
                    answer = False
        with contextlib.suppress(OSError):
            while select.select([master], [], [], 0.2)[0] and (chunk := os.read(master, 65536)):
                said += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return said.decode(errors="replace")


def test_confirm_puts_the_uplink_back_without_an_answer_and_keeps_it_with_one(
    lab: labmod.Lab, prefix: str, tmp_path: Path
) -> None:
    """--confirm, like netplan try: on a (pseudo) terminal, no Enter within the time reverts the move; Enter
    when it asks keeps it."""
    before = host_state(lab.host_ns, prefix)
    setup = render_to(tmp_path, "setup.sh", "--prefix", prefix, "--count", "2", "--dhcp", "none",
                      "--address", "198.18.230.1/16", "--confirm", "2")  # fmt: skip
    no_tty = sh("bash", str(setup), netns=lab.host_ns, check=False, stdin=subprocess.DEVNULL, start_new_session=True)
    assert no_tty.returncode != 0 and "there is none" in no_tty.stderr and not ours(prefix)

    silent = in_a_terminal([*within(lab.host_ns), "bash", str(setup)], answer=False)
    assert "not confirmed within 2 s: eth0 is back as it was" in silent, silent
    uplink = [(n, a, p) for n, a, p, *_ in host_state(lab.host_ns, prefix)["addresses"]]
    assert ("eth0", str(lab.host_ip), lab.prefixlen) in uplink and not any(n == "br0" for n, _, _ in uplink)
    assert ip_json("-4", "route", "show", "default", netns=lab.host_ns)[0]["dev"] == "eth0"

    answered = in_a_terminal([*within(lab.host_ns), "bash", str(setup)], answer=True)
    assert "ready: 2 namespaces" in answered, answered
    assert ip_json("-4", "route", "show", "default", netns=lab.host_ns)[0]["dev"] == "br0"
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert_clean(lab, prefix, before)


def test_two_setups_share_a_bridge_and_the_first_down_leaves_the_other_working(lab: labmod.Lab, prefix: str) -> None:
    other = prefix + "o"
    before = host_state(lab.host_ns, prefix)
    multiip("run", "--prefix", prefix, "--count", "2", "--yes", netns=lab.host_ns)
    multiip("run", "--prefix", other, "--count", "2", "--yes", netns=lab.host_ns)
    try:
        cp = multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
        assert "still has other setups' ports" in cp.stderr
        assert not ours(prefix)
        check_dhcp_setup(lab, other, 2)  # untouched: addresses, clients alive
        assert ip_json("-4", "route", "show", "default", netns=lab.host_ns)[0]["dev"] == "br0"
    finally:
        multiip("down", "--prefix", other, "--yes", netns=lab.host_ns)
    assert_clean(lab, other, before)


def test_the_server_sees_every_release_at_scale(lab: labmod.Lab, prefix: str, tmp_path: Path) -> None:
    """200 releases at once overflowed dnsmasq's socket buffer; down paces them (20 each 0.1 s) so none
    is lost, and says how far it is."""
    before = host_state(lab.host_ns, prefix)
    multiip("run", "--prefix", prefix, "--count", "200", "--lease-timeout", "120", "--yes", netns=lab.host_ns)
    released = releases(lab)
    teardown = sh("bash", str(render_to(tmp_path, "teardown.sh", "--teardown", "--prefix", prefix)), netns=lab.host_ns)
    waves = [str(n) for n in range(20, 201, 20)]
    assert re.findall(r"progress released (\d+)/200", teardown.stderr) == [*waves, "200"]
    assert releases(lab) - released == 200
    assert active_leases(lab) == 0
    assert_clean(lab, prefix, before)


def test_a_refused_client_asks_again_at_once(prefix: str) -> None:
    """A real NAK from the lab's dnsmasq: it is restarted with the namespace's address leased to another
    MAC, and the namespace's client told to renew. busybox's udhcpc sleeps 3 s after a NAK; the event
    script ends that sleep 0.1 s in (a NAK among many clients at once is mostly two offered one
    address), so the new lease comes well within the 3 s that udhcpc alone would wait before asking."""
    with running_lab(name=prefix + "n", leases=8, capacity=100) as small:
        before = host_state(small.host_ns, prefix)
        multiip("run", "--prefix", prefix, "--count", "1", "--dhcp", "udhcpc", "--yes", netns=small.host_ns)
        record = Path("/run/multiip", prefix)

        def leased() -> str:  # the namespace's address in its lease file (written in place: maybe empty)
            lease = (record / f"{prefix}0.lease").read_text() if (record / f"{prefix}0.lease").exists() else ""
            return lease.split("ipv4=")[1].split("/")[0] if "ipv4=" in lease else ""

        had = leased()
        assert had
        pid_file = small.state_dir / "dnsmasq.pid"
        server = int(pid_file.read_text())
        argv = Path(f"/proc/{server}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.kill(server, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        leases = small.state_dir / "dnsmasq.leases"
        lines = leases.read_text().splitlines()
        taken = [line.split() for line in lines if f" {had} " in line]
        assert len(taken) == 1
        taken[0][1], taken[0][4] = "02:00:5e:00:00:99", "*"  # the address is now another client's
        leases.write_text("\n".join([line for line in lines if f" {had} " not in line] + [" ".join(taken[0])]) + "\n")
        subprocess.run([*within(small.lan_ns), *[a.decode() for a in argv]], check=True)
        client = int((record / f"{prefix}0.pid").read_text())
        asked = time.monotonic()
        os.kill(client, signal.SIGUSR1)  # renew: dnsmasq refuses the address, now someone else's
        got = leased()
        while (not got or got == had) and time.monotonic() < asked + 30:
            time.sleep(0.05)
            got = leased()
        took = time.monotonic() - asked
        assert got and got != had, (record / f"{prefix}0.log").read_text()
        assert "received DHCP NAK" in (record / f"{prefix}0.log").read_text()
        assert (record / f"{prefix}0.lease.naks").read_text().strip() == "1"
        assert took < 2.5, f"{took:.2f}s from the renew to a new lease: the NAK's 3 s sleep was not cut"
        multiip("down", "--prefix", prefix, "--yes", netns=small.host_ns)
        assert_clean(small, prefix, before)
