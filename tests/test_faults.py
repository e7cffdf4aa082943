"""Faults and concurrency, in the lab: one setup at a time, a move killed half-way, pid files that lie,
a state directory that is not ours, workers that must not import from the current directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import fake_sysctls, host_state, leftovers, multiip, ours, running_lab, sh, within

from multiip import lab as labmod
from multiip import state
from multiip.plan import make_target

pytestmark = pytest.mark.root
STATIC = ["--dhcp", "none", "--address", "198.18.250.1/16"]


def multiip_bg(*args: str, netns: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*within(netns), sys.executable, "-m", "multiip", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_one_setup_or_teardown_at_a_time(prefix: str) -> None:
    """While one setup waits for leases that do not come, a second is refused naming the first; with
    --wait it queues and runs after."""
    with running_lab(name=prefix + "l", leases=2, capacity=100) as small:
        before = host_state(small.host_ns, prefix)
        first = multiip_bg("run", "--prefix", prefix, "--count", "3", "--lease-timeout", "20", "--yes",
                           netns=small.host_ns)  # fmt: skip
        deadline = time.monotonic() + 60
        while len(ours(prefix)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        other = prefix + "x"
        refused = multiip("run", "--prefix", other, "--count", "1", *STATIC, "--yes", netns=small.host_ns,
                          check=False)  # fmt: skip
        assert refused.returncode != 0
        assert "another multiip setup or teardown runs here (pid " in refused.stderr.splitlines()[-1]
        assert not ours(other)
        queued = multiip("run", "--prefix", other, "--count", "1", *STATIC, "--wait", "120", "--yes",
                         netns=small.host_ns)  # fmt: skip
        assert first.wait(timeout=120) != 0  # 2 leases for 3 namespaces
        assert len(ours(other)) == 1 and "ready: 1 namespaces" in queued.stderr
        multiip("down", "--prefix", other, "--yes", netns=small.host_ns)
        multiip("down", "--prefix", prefix, "--yes", netns=small.host_ns)
        assert host_state(small.host_ns, prefix) == before


def test_a_move_killed_half_way_is_finished_by_a_rerun(lab: labmod.Lab, prefix: str) -> None:
    """The state a SIGKILL right after `link set dev eth0 master br0` leaves (eth0 in the bridge with its
    addresses, no mark of a finished move): a re-run puts it back and moves it; down restores it."""
    before = host_state(lab.host_ns, prefix)
    args = ["run", "--prefix", prefix, "--count", "2", *STATIC, "--yes"]
    multiip(*args, netns=lab.host_ns)
    moved = host_state(lab.host_ns, prefix)
    bridge = state.read_record(make_target(prefix)).env["BRIDGE_STATE"]  # type: ignore[union-attr]
    Path(bridge, "moved").unlink()  # the bridge's record of the finished move
    half = ["address del 198.18.0.2/16 dev br0", "address add 198.18.0.2/16 dev eth0",
            "route replace default via 198.18.0.1 dev eth0"]  # fmt: skip
    sh("ip", "-batch", "-", input="\n".join(half) + "\n", netns=lab.host_ns)
    again = multiip(*args, netns=lab.host_ns)
    assert "eth0 is in br0 but its move did not finish: putting it back first" in again.stderr
    assert host_state(lab.host_ns, prefix) == moved
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == before


def test_a_pid_file_naming_someone_elses_process_is_not_trusted(lab: labmod.Lab, prefix: str, tmp_path: Path) -> None:
    """A client's pid reused by another process called udhcpc (here a sleep by that name, outside the
    namespace): down neither kills it nor counts it, and still releases the lease its dead client held."""
    multiip("run", "--prefix", prefix, "--count", "2", "--dhcp", "udhcpc", "--yes", netns=lab.host_ns)
    pidfile = Path(f"/run/multiip/{prefix}/{prefix}0.pid")
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    shutil.copy("/bin/sleep", tmp_path / "udhcpc")
    stranger = subprocess.Popen([tmp_path / "udhcpc", "30"])
    try:
        pidfile.write_text(f"{stranger.pid}\n")
        released = (lab.state_dir / "dnsmasq.log").read_text().count("DHCPRELEASE(lan0)")
        cp = multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
        assert stranger.poll() is None, "down killed a process its pid file named but that was not its client"
        assert "releasing 1 leases whose clients are gone" in cp.stderr
        assert (lab.state_dir / "dnsmasq.log").read_text().count("DHCPRELEASE(lan0)") - released == 2
    finally:
        stranger.kill()
        stranger.wait()


def test_a_state_directory_that_is_a_symlink_is_refused(lab: labmod.Lab, prefix: str, tmp_path: Path) -> None:
    state = Path(f"/run/multiip/{prefix}")
    state.parent.mkdir(exist_ok=True)
    state.symlink_to(tmp_path)
    try:
        before = host_state(lab.host_ns, prefix)
        cp = multiip("run", "--prefix", prefix, "--count", "1", *STATIC, "--yes", netns=lab.host_ns, check=False)
        assert cp.returncode != 0 and "is a symlink, not a directory or not owned by root" in cp.stderr
        assert host_state(lab.host_ns, prefix) == before and list(tmp_path.iterdir()) == []
    finally:
        state.unlink()


def test_workers_and_the_sink_never_import_from_the_current_directory(lab: labmod.Lab, tmp_path: Path) -> None:
    """A planted ./multiip package: hold (run as root, from that directory) starts its workers isolated."""
    prefix = "w" + lab.name[2:]
    planted = tmp_path / "multiip"
    planted.mkdir()
    marker = tmp_path / "pwned"
    for module in ("__init__.py", "holdworker.py", "sink.py", "limits.py"):
        (planted / module).write_text(f"open({str(marker)!r}, 'w').close()\n")
    multiip("run", "--prefix", prefix, "--count", "1", *STATIC, "--yes", netns=lab.host_ns)
    try:
        cp = subprocess.run(
            [sys.executable, "-I", "-m", "multiip", "hold", f"{lab.lan_ip}:{lab.port}", "--prefix", prefix,
             "--per-ip", "10", "--duration", "0"],
            cwd=tmp_path, capture_output=True, text=True,
        )  # fmt: skip
        assert cp.returncode == 0, cp.stderr
        assert not marker.exists(), "a worker imported the planted package"
    finally:
        multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)


def test_a_bridge_no_setup_made_is_never_taken_over_or_removed(lab: labmod.Lab, prefix: str) -> None:
    """The host's own bridge with eth0 in it and no multiip record: down leaves it alone. A bridge with a
    port or an address (docker0, virbr0) is refused; an empty one is used and left in place."""
    bridge = f"{prefix}br"
    own = [f"link add name {bridge} type bridge", f"link set dev eth0 master {bridge}", f"link set dev {bridge} up",
           "address del 198.18.0.2/16 dev eth0", f"address add 198.18.0.2/16 dev {bridge}",
           f"route replace default via 198.18.0.1 dev {bridge}"]  # fmt: skip
    undo = ["link set dev eth0 nomaster", f"link del dev {bridge}", "address add 198.18.0.2/16 dev eth0",
            "route replace default via 198.18.0.1 dev eth0"]  # fmt: skip
    sh("ip", "-batch", "-", input="\n".join(own) + "\n", netns=lab.host_ns)
    try:
        theirs = host_state(lab.host_ns, prefix)
        cp = multiip("down", "--prefix", prefix, "--bridge", bridge, "--yes", netns=lab.host_ns)
        assert "nothing to do" in cp.stderr and host_state(lab.host_ns, prefix) == theirs
        refused = multiip("run", "--prefix", prefix, "--bridge", bridge, "--uplink", "eth0", "--count", "1", *STATIC,
                          "--yes", netns=lab.host_ns, check=False)  # fmt: skip
        last = refused.stderr.strip().splitlines()[-1]
        assert f"bridge {bridge} exists and no multiip setup made it (ports: eth0; addresses: 198.18.0.2/16)" in last
        assert host_state(lab.host_ns, prefix) == theirs and not ours(prefix)
    finally:
        sh("ip", "-force", "-batch", "-", input="\n".join(undo) + "\n", netns=lab.host_ns)
    empty = f"{prefix}e"
    sh("ip", "link", "add", "name", empty, "type", "bridge", netns=lab.host_ns)
    try:
        multiip("run", "--prefix", prefix, "--bridge", empty, "--count", "1", *STATIC, "--yes", netns=lab.host_ns)
        cp = multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
        assert f"{empty} was there before the setup: left in place" in cp.stderr
        assert sh("ip", "link", "show", "dev", empty, netns=lab.host_ns, check=False).returncode == 0
    finally:
        sh("ip", "link", "del", "dev", empty, netns=lab.host_ns, check=False)


def test_down_keeps_the_record_while_a_stranger_holds_a_port(lab: labmod.Lab, prefix: str) -> None:
    before = host_state(lab.host_ns, prefix)
    multiip("run", "--prefix", prefix, "--count", "1", *STATIC, "--yes", netns=lab.host_ns)
    stranger = "link add zz0 type veth peer name zz1\nlink set dev zz0 master br0\n"
    sh("ip", "-batch", "-", input=stranger, netns=lab.host_ns)
    cp = multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns, check=False)
    assert cp.returncode != 0 and "br0 has ports that are not multiip's: zz0" in cp.stderr.splitlines()[-1]
    assert Path(f"/run/multiip/{prefix}/setup.env").exists() and not ours(prefix)
    sh("ip", "link", "del", "dev", "zz0", netns=lab.host_ns)
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == before


def test_tune_host_with_two_setups_restores_when_the_last_goes(
    lab: labmod.Lab, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"net/ipv4/neigh/default/gc_thresh1": "128", "net/ipv4/neigh/default/gc_thresh2": "512",
              "net/ipv4/neigh/default/gc_thresh3": "100", "net/core/netdev_max_backlog": "100"}  # fmt: skip
    fake = fake_sysctls(tmp_path / "sys", values)
    monkeypatch.setenv("MULTIIP_SYSCTL_DIR", str(fake))
    other = prefix + "o"
    multiip("run", "--prefix", prefix, "--count", "2", *STATIC, "--tune-host", "--yes", netns=lab.host_ns)
    multiip("run", "--prefix", other, "--count", "2", "--dhcp", "none", "--address", "198.18.251.1/16",
            "--tune-host", "--yes", netns=lab.host_ns)  # fmt: skip
    raised = {k: (fake / k).read_text().strip() for k in values}
    assert raised["net/ipv4/neigh/default/gc_thresh3"] == "260"
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert {k: (fake / k).read_text().strip() for k in values} == raised, "the first down lowered them under the other"
    multiip("down", "--prefix", other, "--yes", netns=lab.host_ns)
    assert {k: (fake / k).read_text().strip() for k in values} == values
    assert not Path("/run/multiip/host-limits").exists()


@pytest.mark.parametrize("who", ["terminal", "python"])
def test_ctrl_c_under_run_waits_for_the_script_and_says_where(lab: labmod.Lab, prefix: str, who: str) -> None:
    """Ctrl-C on a terminal reaches python and the script; a SIGINT to python alone is passed on to the
    script. Either way python waits for the script to stop (its rollback included) and says where."""
    before = host_state(lab.host_ns, prefix)
    probes = set(Path("/tmp").glob("multiip-probe.*"))  # the duplicate-address probe's, which runs meanwhile
    proc = subprocess.Popen(
        [*within(lab.host_ns), sys.executable, "-m", "multiip", "run", "--prefix", prefix,
         "--count", "300", *STATIC, "--yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "[4/6]" in line:
            if who == "terminal":
                os.killpg(proc.pid, signal.SIGINT)
            else:
                os.kill(proc.pid, signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith('multiip: error: interrupted during step "300 namespaces'), rest
    assert last.endswith(f"`multiip down --prefix {prefix}` removes what the setup made so far"), last
    assert "Traceback" not in rest
    deadline = time.monotonic() + 30  # the probe goes on to its end (a second), then leaves nothing
    while set(Path("/tmp").glob("multiip-probe.*")) - probes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(Path("/tmp").glob("multiip-probe.*")) - probes == set()
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == before


def test_a_docker_host_that_drops_bridged_frames_is_told_what_to_add(
    lab: labmod.Lab, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """br_netfilter loaded and FORWARD's policy DROP (a stand-in iptables says so): refused with the rule."""
    fake = fake_sysctls(tmp_path / "sys", {"net/bridge/bridge-nf-call-iptables": "1"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "iptables").write_text("#!/bin/sh\nprintf -- '-P FORWARD DROP\\n-A FORWARD -j DOCKER-USER\\n'\n")
    (bin_dir / "iptables").chmod(0o755)
    monkeypatch.setenv("MULTIIP_SYSCTL_DIR", str(fake))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    before = host_state(lab.host_ns, prefix)
    cp = multiip("run", "--prefix", prefix, "--count", "2", "--yes", netns=lab.host_ns, check=False)
    last = cp.stderr.strip().splitlines()[-1]
    assert cp.returncode != 0 and "iptables -I FORWARD -i br0 -o br0 -j ACCEPT" in last, last
    assert host_state(lab.host_ns, prefix) == before and not ours(prefix)
    (fake / "net/bridge/bridge-nf-call-iptables").write_text("0\n")  # not filtered: it goes ahead
    multiip("run", "--prefix", prefix, "--count", "2", *STATIC, "--yes", netns=lab.host_ns)
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == before


@pytest.mark.parametrize("point", ["[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]", "ready"])
def test_a_setup_killed_at_any_point_is_undone_by_down_and_finished_by_a_rerun(
    lab: labmod.Lab, prefix: str, tmp_path: Path, point: str
) -> None:
    """SIGKILL (no trap runs) as the script reaches each step: down leaves the host as it was; and a run
    again after such a kill finishes the setup."""
    before = host_state(lab.host_ns, prefix)
    args = ["--prefix", prefix, "--count", "4"]
    setup = tmp_path / "setup.sh"
    setup.write_text(multiip("render", *args).stdout)
    for then in ("down", "run"):
        proc = subprocess.Popen([*within(lab.host_ns), "bash", str(setup)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(f"multiip: {point}"):
                proc.kill()
                break
        proc.wait()
        if then == "run":
            cp = multiip("run", *args, "--wait", "120", "--yes", netns=lab.host_ns)
            assert "ready: 4 namespaces" in cp.stderr
            assert len(json.loads(multiip("status", "--prefix", prefix, "--json").stdout)["namespaces"]) == 4
        multiip("down", "--prefix", prefix, "--wait", "120", "--yes", netns=lab.host_ns)
        assert leftovers(prefix, lab.host_ns) == [] and host_state(lab.host_ns, prefix) == before, (point, then)
