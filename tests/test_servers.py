"""Real servers' uplinks, in the lab: a real systemd-networkd (netplan's dhcp4, with and without critical) and
a real NetworkManager with a DUID client id, each managing an eth0 that carries what servers' uplinks do (an
ECMP default route, a labelled secondary address, a route over a nexthop object, an IPv6 address and route with
lifetimes) over a 1400-byte path. The host keeps reaching beyond its LAN, its own lease is the one renewed, and
down gives everything back, to the manager too."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import unique
from helpers import multiip, ours, reaches, running_lab, sh, uplink_state, within

from multiip import lab as labmod

pytestmark = pytest.mark.root

LEASE = 120  # seconds: the lab's lease for its host (dnsmasq's shortest)
FAR_PORT, UDP_PORT = 9001, 9002
LISTEN = """
import os, socket, sys, time
kind, ip, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
open(out + ".ready", "w").close()
if kind == "tcp":
    s.listen(64)
    while True:
        s.accept()[0].close()
with open(out, "a") as f:
    while True:
        f.write(f"{len(s.recv(65535))}\\n")
        f.flush()
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER: IP_PMTUDISC_DO, never fragment
try:
    s.sendto(b"x" * (int(sys.argv[3]) - 28), (sys.argv[1], int(sys.argv[2])))  # 20 IPv4 + 8 UDP
    print("sent")
except OSError as e:
    print(e.errno)
"""


@contextlib.contextmanager
def listening(the_lab: labmod.Lab, tmp: Path) -> Iterator[Path]:
    """A TCP listener on the far address (beyond the LAN: reached through a router) and a UDP one on the LAN
    that writes each datagram's size to a file, both in the LAN's namespace, for the block's time."""
    procs = []
    try:
        for kind, ip, port in (("tcp", the_lab.far_ip, FAR_PORT), ("udp", the_lab.lan_ip, UDP_PORT)):
            out = tmp / f"{the_lab.name}-{kind}"
            procs.append(subprocess.Popen([*within(the_lab.lan_ns), sys.executable, "-c", LISTEN, kind, str(ip),
                                           str(port), str(out)], stdout=subprocess.DEVNULL))  # fmt: skip
            deadline = time.monotonic() + 60
            while not Path(f"{out}.ready").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        yield tmp / f"{the_lab.name}-udp"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def manager_state(the_lab: labmod.Lab) -> str:
    """What the lab host's manager says of eth0."""
    if the_lab.manager == "systemd-networkd":
        return sh("networkctl", "list", "--no-legend", "--no-pager", "eth0", netns=the_lab.host_ns).stdout.split()[4]
    out = sh("nmcli", "-g", "GENERAL.STATE,GENERAL.CONNECTION", "device", "show", "eth0", netns=the_lab.host_ns)
    return " ".join(out.stdout.split())


def settled(the_lab: labmod.Lab, before: str) -> str:
    """The manager's state once it is done configuring (bounded: a slow machine takes longer, not forever)."""
    deadline = time.monotonic() + 120
    while (now := manager_state(the_lab)) != before and time.monotonic() < deadline:
        time.sleep(0.5)
    return now


def host_leases(the_lab: labmod.Lab) -> list[list[str]]:
    """The DHCP server's leases of the host's own address: expiry, MAC, IP, name, client id."""
    lines = (the_lab.state_dir / "dnsmasq.leases").read_text().splitlines()
    return [line.split() for line in lines if f" {the_lab.host_ip} " in line or f" {the_lab.host_mac} " in line]


def client_id(the_lab: labmod.Lab) -> str:
    """The client id the lab host's manager sends for eth0, as dnsmasq writes it (colon-separated hex)."""
    leases = host_leases(the_lab)
    assert len(leases) == 1, leases
    return leases[0][4]


def path_mtu(the_lab: labmod.Lab, netns: str, sizes: Path) -> dict[int, str]:
    """Send UDP datagrams of 1400 and 1401 bytes (IPv4, never fragmented) from netns to the LAN's listener:
    what each send said, and whether the LAN got the 1400-byte one."""
    said = {}
    for n in (1400, 1401):
        said[n] = sh(sys.executable, "-c", SEND, str(the_lab.lan_ip), str(UDP_PORT), str(n), netns=netns).stdout.strip()
    deadline = time.monotonic() + 30
    while "1372" not in sizes.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.1)
    said[0] = "received" if "1372" in sizes.read_text().split() else "lost"
    return said


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[labmod.Lab, Path]]]:
    """Three lab hosts at once (their lease times run out together), each with a server's uplink on a
    1400-byte path: networkd as netplan writes dhcp4 (defaults), the same with critical (KeepConfiguration=yes),
    NetworkManager with ipv4.dhcp-client-id duid."""
    tmp = tmp_path_factory.mktemp("servers")
    kinds = {
        "networkd": {"manager": "systemd-networkd"},
        "networkd-critical": {"manager": "systemd-networkd", "critical": True},
        "NetworkManager-duid": {"manager": "NetworkManager", "client_id": "duid"},
    }
    with contextlib.ExitStack() as up:
        labs = {}
        for kind, settings in kinds.items():
            the_lab = up.enter_context(running_lab(check_down=False, name=unique("ms"), leases=64, capacity=2000,
                                                   server=True, mtu=1400, **settings))  # fmt: skip
            labs[kind] = (the_lab, up.enter_context(listening(the_lab, tmp)))
        yield labs


def test_real_managers_hand_over_the_uplink_and_get_it_back_exactly(servers: dict[str, Any]) -> None:
    """Per manager: two setups share br0; run succeeds, the host and the namespaces reach beyond the LAN (only
    through the default route), a 1400-byte datagram passes and a 1401-byte one is refused; the first setup goes
    at once, and past two lease times the host still reaches out, its lease the same single one (the manager's
    client id), renewed; down gives eth0 back exactly (addresses, labels, routes of every table, nexthop
    objects, rules, MTU) and the manager has it configured again."""
    setups: dict[str, tuple[str, str]] = {}
    try:
        check_handover(servers, setups)
    finally:  # whatever failed, no setup outlives the test
        for kind, pair in setups.items():
            for prefix in pair:
                if ours(prefix):
                    multiip("down", "--prefix", prefix, "--yes", netns=servers[kind][0].host_ns, check=False)


def check_handover(servers: dict[str, Any], setups: dict[str, tuple[str, str]]) -> None:
    far = {kind: (str(the_lab.far_ip), FAR_PORT) for kind, (the_lab, _) in servers.items()}
    before: dict[str, Any] = {}
    for kind, (the_lab, sizes) in servers.items():
        manager = manager_state(the_lab)
        assert manager in ("configured", "100 (connected) lab-eth0"), (kind, manager)
        before[kind] = (uplink_state(the_lab.host_ns), manager, client_id(the_lab), host_leases(the_lab)[0][0])
        assert reaches(the_lab.host_ns, *far[kind]), f"{kind}: the lab host does not reach beyond its LAN"
        first, second = unique("s"), unique("s")
        setups[kind] = (first, second)
        cp = multiip("run", "--prefix", first, "--count", "2", "--yes", netns=the_lab.host_ns)
        assert f"uplink eth0: {the_lab.manager} manages it" in cp.stderr, cp.stderr
        multiip("run", "--prefix", second, "--count", "2", "--yes", netns=the_lab.host_ns)
        assert reaches(the_lab.host_ns, *far[kind]), f"{kind}: the host lost its way out with the move"
        for ns in ours(first) + ours(second):
            assert reaches(ns, *far[kind]), f"{kind}: {ns} does not reach beyond the LAN"
        links = {x["ifname"]: x["mtu"] for x in json.loads(sh("ip", "-j", "link", netns=f"{second}0").stdout)}
        assert links[f"{second}-t0"] == 1400, links
        assert path_mtu(the_lab, f"{second}0", sizes) == {1400: "sent", 1401: "90", 0: "received"}  # 90: EMSGSIZE
        multiip("down", "--prefix", first, "--yes", netns=the_lab.host_ns)  # the second keeps the bridge
    time.sleep(2 * LEASE + 15)
    for kind, (the_lab, _) in servers.items():
        first, second = setups[kind]
        state, manager, clid, expiry = before[kind]
        assert reaches(the_lab.host_ns, *far[kind]), f"{kind}: the host went offline past its lease time"
        assert reaches(f"{second}0", *far[kind]), f"{kind}: {second}0 went offline"
        leases = host_leases(the_lab)
        assert len(leases) == 1 and leases[0][4] == clid, f"{kind}: not the manager's one lease: {leases} ({clid})"
        assert int(leases[0][0]) > int(expiry), f"{kind}: the host's lease was not renewed"
        multiip("down", "--prefix", second, "--yes", netns=the_lab.host_ns)
        assert settled(the_lab, manager) == manager, f"{kind}: {the_lab.manager} does not have eth0 as it had"
        assert uplink_state(the_lab.host_ns) == state, f"{kind}: eth0 is not as it was"
        assert reaches(the_lab.host_ns, *far[kind]), f"{kind}: the host does not reach out after down"


@pytest.mark.parametrize(
    "point",
    ["[5/6]", "moving eth0 into br0", "eth0 is in br0", "systemd-networkd let go", "the host's lease is renewed"],
)
def test_a_move_killed_at_any_point_ends_with_the_host_as_before(servers: dict[str, Any], point: str) -> None:
    """SIGKILL (no trap runs) as the move reaches each of its points, on the networkd host: down leaves eth0
    as it was and networkd configuring it; and a run again after such a kill finishes the setup."""
    the_lab, _ = servers["networkd"]
    before, manager = uplink_state(the_lab.host_ns), manager_state(the_lab)
    prefix = unique("k")
    script = multiip("render", "--prefix", prefix, "--count", "2").stdout
    for then in ("down", "run"):
        proc = subprocess.Popen([*within(the_lab.host_ns), "bash", "-c", script], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(f"multiip: {point}"):
                proc.kill()
                break
        proc.wait()
        if then == "run":
            cp = multiip("run", "--prefix", prefix, "--count", "2", "--wait", "60", "--yes", netns=the_lab.host_ns)
            assert "ready: 2 namespaces" in cp.stderr
            assert reaches(the_lab.host_ns, str(the_lab.far_ip), FAR_PORT)
        multiip("down", "--prefix", prefix, "--wait", "60", "--yes", netns=the_lab.host_ns)
        assert settled(the_lab, manager) == manager, f"{then} after a kill at {point}"
        assert uplink_state(the_lab.host_ns) == before, f"{then} after a kill at {point}: eth0 is not as it was"


def test_the_lab_managers_never_reach_the_machines_bus(tmp_path: Path) -> None:
    """On a machine whose own system bus runs (one started for the test, in a mount namespace of its own that
    stands for the machine's), a lab with a real NetworkManager and multiip run as its host use the lab's own
    bus and /run only: the machine's bus never sees NetworkManager, its /run gets no NetworkManager file."""
    name = unique("mb")
    script = f"""
set -e
mkdir -p /run/dbus
mount -t tmpfs machine-run /run/dbus
dbus-daemon --system --fork --print-pid >{tmp_path}/machine-bus.pid
names() {{ dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.ListNames; }}
{sys.executable} -m multiip lab up --name {name} --manager NetworkManager --leases 8 --capacity 100
names >{tmp_path}/names-during
{sys.executable} -m multiip lab exec --name {name} -- {sys.executable} -m multiip run --prefix {name}x --count 1 --yes
ls /run/NetworkManager >{tmp_path}/machine-nm 2>&1 || true
{sys.executable} -m multiip lab exec --name {name} -- nmcli -t -f DEVICE,STATE device >{tmp_path}/lab-devices
{sys.executable} -m multiip lab exec --name {name} -- {sys.executable} -m multiip down --prefix {name}x --yes
{sys.executable} -m multiip lab down --name {name}
kill "$(cat {tmp_path}/machine-bus.pid)"
"""
    cp = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                        capture_output=True, text=True, cwd=Path(__file__).parent.parent)  # fmt: skip
    assert cp.returncode == 0, cp.stderr[-3000:]
    names = (tmp_path / "names-during").read_text()
    assert "org.freedesktop.DBus" in names and "NetworkManager" not in names, names
    assert "No such file" in (tmp_path / "machine-nm").read_text()  # the machine's /run has no NetworkManager
    devices = dict(line.split(":", 1) for line in (tmp_path / "lab-devices").read_text().splitlines())
    assert devices["eth0"] == "unmanaged" and devices["br0"] == "unmanaged", devices
    assert not re.search(rf"\b{name}x\d", sh("ip", "netns", "list").stdout)
