"""Real hosts, in the lab: an uplink whose address comes from a DHCP client or NetworkManager, every address,
route and rule it carries, stable DHCP identities, uplinks that cannot be bridge ports."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import unique
from helpers import host_state, ip_json, multiip, ours, processes, reaches, running_lab, sh, uplink_state, within

from multiip import lab as labmod

pytestmark = pytest.mark.root

LEASE = 120  # seconds: the lab's lease for its host (dnsmasq's shortest)


def managers() -> list[str]:
    # dhcpcd is not among them: Debian's hides its command line, and is refused (a test below)
    found = [m for m in ("dhclient", "udhcpc") if shutil.which(m, path=os.environ["PATH"] + ":/usr/sbin:/sbin")]
    if shutil.which("NetworkManager", path=os.environ["PATH"] + ":/usr/sbin:/sbin"):
        found.append("NetworkManager")
    return found


@pytest.fixture(scope="module")
def managed() -> Iterator[dict[str, labmod.Lab]]:
    """One lab per manager of the lab host's eth0, up at once (their leases run out together)."""
    with contextlib.ExitStack() as up:
        yield {
            m: up.enter_context(running_lab(check_down=False, name=unique("mh"), leases=64, capacity=2000, manager=m))
            for m in managers()
        }


def host_acks(the_lab: labmod.Lab) -> int:
    """DHCPACKs the lab's server sent to its host's MAC (each renewal is one)."""
    log = (the_lab.state_dir / "dnsmasq.log").read_text()
    return len(re.findall(rf"DHCPACK\(lan0\) {re.escape(str(the_lab.host_ip))} {the_lab.host_mac}", log))


def manages_again(the_lab: labmod.Lab, client_argv: list[list[str]]) -> bool:
    if the_lab.manager == "NetworkManager":
        state = sh("nmcli", "-g", "GENERAL.STATE", "device", "show", "eth0", netns=the_lab.host_ns).stdout
        return state.startswith("100")
    return processes(the_lab.host_ns, the_lab.manager) == client_argv


def test_managed_uplinks_keep_the_host_online_past_two_leases_and_come_back(managed: dict[str, labmod.Lab]) -> None:
    """For each manager: run, wait past two lease times, the host and every namespace reach the LAN; the
    manager holds no bridge port; down; the uplink carries exactly what it did and its manager has it again."""
    setups: dict[str, tuple[str, dict[str, object], list[list[str]], int]] = {}
    try:
        check_managed(managed, setups)
    finally:  # whatever failed, no setup outlives the test
        for manager, (prefix, *_) in setups.items():
            if ours(prefix):
                multiip("down", "--prefix", prefix, "--yes", netns=managed[manager].host_ns, check=False)


def check_managed(
    managed: dict[str, labmod.Lab], setups: dict[str, tuple[str, dict[str, object], list[list[str]], int]]
) -> None:
    for manager, the_lab in managed.items():
        before = uplink_state(the_lab.host_ns)
        argv = processes(the_lab.host_ns, manager) if manager != "NetworkManager" else []
        prefix = unique("m")
        cp = multiip("run", "--prefix", prefix, "--count", "3", "--yes", netns=the_lab.host_ns)
        assert f"uplink eth0: {manager}" in cp.stderr, cp.stderr
        status = json.loads(multiip("status", "--prefix", prefix, "--json").stdout)
        assert status["manager"] == manager and len(status["namespaces"]) == 3
        setups[manager] = (prefix, before, argv, host_acks(the_lab))
    time.sleep(2 * LEASE + 15)
    for manager, the_lab in managed.items():
        prefix, before, argv, acks = setups[manager]
        server = (str(the_lab.lan_ip), the_lab.port)
        assert reaches(the_lab.host_ns, *server), f"{manager}: the host lost the LAN"
        for ns in ours(prefix):
            assert reaches(ns, *server), f"{manager}: {ns} lost the LAN"
        assert host_acks(the_lab) - acks >= 2, f"{manager}: nothing renewed the host's lease on the bridge"
        br0 = ip_json("-4", "address", "show", "dev", "br0", netns=the_lab.host_ns)[0]["addr_info"]
        assert [a["local"] for a in br0] == [str(the_lab.host_ip)]
        if manager == "NetworkManager":
            devices = sh("nmcli", "-t", "-f", "DEVICE,STATE", "device", netns=the_lab.host_ns).stdout.splitlines()
            held = [d for d in devices if d.split(":")[0].startswith(("br0", f"{prefix}-b")) and "unmanaged" not in d]
            assert held == [], f"NetworkManager holds {held}"
        else:
            # but the bridge's udhcpc, renewing on br0 (its pid file in the bridge's record, /run/multiip/.bridge-*)
            running = [a for a in processes(the_lab.host_ns, manager) if not any("/.bridge-" in w for w in a)]
            assert running == [], f"{manager} still runs on the uplink or a port: {running}"
        multiip("down", "--prefix", prefix, "--yes", netns=the_lab.host_ns)
        assert uplink_state(the_lab.host_ns) == before, f"{manager}: the uplink is not as it was"
        deadline = time.monotonic() + 30
        while not manages_again(the_lab, argv) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert manages_again(the_lab, argv), f"{manager} does not manage eth0 again"


def test_a_small_pool_gives_the_same_leases_after_a_crash(prefix: str) -> None:
    """30 addresses; 20 namespaces killed without a release, then set up again: 20 of 20 leases, the same ones
    (each namespace's MAC, so its DHCP identity, is derived from the uplink's MAC, the prefix and its index)."""
    with running_lab(name=prefix + "p", leases=30, capacity=100) as small:
        args = ["run", "--prefix", prefix, "--count", "20", "--lease-timeout", "120", "--yes"]
        multiip(*args, netns=small.host_ns)
        first = json.loads(multiip("status", "--prefix", prefix, "--json").stdout)["namespaces"]
        for row in first:  # locally administered, unicast
            assert int(row["mac"].split(":")[0], 16) & 3 == 2, row["mac"]
        for row in first:  # the crash: clients killed (no DHCPRELEASE), namespaces gone
            os.kill(row["dhcp_pid"], signal.SIGKILL)
        sh("ip", "-batch", "-", input="".join(f"netns del {row['name']}\n" for row in first))
        assert ours(prefix) == []
        multiip(*args, netns=small.host_ns)
        again = json.loads(multiip("status", "--prefix", prefix, "--json").stdout)["namespaces"]
        assert [(r["mac"], r["ipv4"]) for r in again] == [(r["mac"], r["ipv4"]) for r in first]
        for row in again[:5]:  # five clients die; down still releases their leases
            os.kill(row["dhcp_pid"], signal.SIGKILL)
        log = small.state_dir / "dnsmasq.log"
        released = log.read_text().count("DHCPRELEASE(lan0)")
        cp = multiip("down", "--prefix", prefix, "--yes", netns=small.host_ns)
        assert "releasing 5 leases whose clients are gone" in cp.stderr
        assert log.read_text().count("DHCPRELEASE(lan0)") - released == 20
        assert (small.state_dir / "dnsmasq.leases").read_text() == ""


# Prints the target of every IPv6 duplicate-address probe (a neighbour solicitation from ::) seen on a link.
DAD_PROBES = """
import ipaddress, select, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
while not select.select([s, sys.stdin], [], [])[0].count(sys.stdin):
    ip6 = s.recv(65535)[14:]
    if len(ip6) >= 64 and ip6[6] == 58 and ip6[40] == 135 and ip6[8:24] == bytes(16):
        print(ipaddress.IPv6Address(ip6[48:64]), flush=True)
"""


def test_the_uplinks_ipv6_addresses_move_into_the_bridge_without_a_second_dad(lab: labmod.Lab, prefix: str) -> None:
    """They passed duplicate-address detection on this link: on the bridge (the uplink's MAC) they do not go
    through another (no probe reaches the LAN), so IPv6 to the host does not pause for one, and the bridge's
    accept_dad is as it was after. The LAN sees the probe of the address when it is added to eth0."""
    address = lab.host_ip6 + 0x1000
    capture = subprocess.Popen([*within(lab.lan_ns), sys.executable, "-c", DAD_PROBES, lab.lan_dev],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip

    def tentative(dev: str) -> bool:
        out = sh("ip", "-6", "-o", "address", "show", "dev", dev, "to", str(address), netns=lab.host_ns).stdout
        return not out or "tentative" in out

    def until_ready(dev: str) -> None:  # bounded: a slow machine takes longer, not forever
        deadline = time.monotonic() + 30
        while tentative(dev):
            assert time.monotonic() < deadline, f"{address} stays tentative on {dev}"
            time.sleep(0.05)

    try:
        assert capture.stdout is not None and capture.stdout.readline() == "ready\n"
        sh("ip", "address", "add", f"{address}/64", "dev", "eth0", netns=lab.host_ns)  # without nodad: DAD runs
        until_ready("eth0")
        multiip("run", "--prefix", prefix, "--count", "1", "--dhcp", "none", "--address", "198.18.100.1/16", "--yes",
                netns=lab.host_ns)  # fmt: skip
        until_ready("br0")  # a DAD's probe is sent before it ends
        assert sh("cat", "/proc/sys/net/ipv6/conf/br0/accept_dad", netns=lab.host_ns).stdout.strip() == "1"
        multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
        until_ready("eth0")  # back on the uplink (which does its own DAD: down does not skip it)
    finally:
        probes, _ = capture.communicate("", timeout=30)
        sh("ip", "address", "del", f"{address}/64", "dev", "eth0", netns=lab.host_ns, check=False)
    assert probes.split().count(str(address)) == 2, probes  # added to eth0, and back on eth0 after down


def test_a_wifi_uplink_is_refused_before_anything_changes(lab: labmod.Lab, prefix: str, tmp_path: Path) -> None:
    (tmp_path / "class/net/eth0/wireless").mkdir(parents=True)
    before = host_state(lab.host_ns, prefix)
    cp = multiip("run", "--prefix", prefix, "--count", "2", "--yes", netns=lab.host_ns, check=False,
                 env={**os.environ, "MULTIIP_SYSFS": str(tmp_path)})  # fmt: skip
    assert cp.returncode != 0
    assert "uplink eth0 is a Wi-Fi station, which cannot be a bridge port" in cp.stderr.splitlines()[-1]
    assert host_state(lab.host_ns, prefix) == before and not ours(prefix)


def test_a_dhcpcd_that_hides_its_command_line_is_refused_with_what_to_do(prefix: str) -> None:
    """Debian's dhcpcd rewrites its command line ("dhcpcd: eth0 [ip4]"): it could not be started again as
    it ran, so there is no safe handover; refused before anything changes."""
    with running_lab(name=prefix + "d", leases=64, capacity=100, manager="dhcpcd") as the_lab:
        before = host_state(the_lab.host_ns, prefix)
        cp = multiip("run", "--prefix", prefix, "--count", "2", "--yes", netns=the_lab.host_ns, check=False)
        last = cp.stderr.strip().splitlines()[-1]
        assert cp.returncode != 0 and "dhcpcd (pid " in last and "manages eth0 and hides the command line" in last
        assert host_state(the_lab.host_ns, prefix) == before and not ours(prefix)
