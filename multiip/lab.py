"""The lab: a stand-in for "a host on a LAN", made of network namespaces only.

``<name>-lan`` holds a DHCP server (dnsmasq) and a TCP sink on 198.18.0.1; ``<name>-host`` is the
"host", whose uplink is called eth0 and has a static address and a default route. With ``cloud`` the
LAN behaves like a cloud's: it drops every frame whose source MAC is not the host's, and every IPv4
packet from an address that was not assigned to it, and its DHCP server serves the host alone. A setup run as the
lab host (``nsenter --net``) moves that eth0 into a bridge, never the machine's real one.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multiip import execute, options, render
from multiip.errors import MultiipError
from multiip.limits import fd_limit

LAB_ROOT = Path("/run/multiip-lab")
NETWORK = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range


@dataclass(frozen=True)
class Lab:
    name: str = "mlab"
    port: int = 9000
    leases: int = 4096
    capacity: int = 150_000  # connections the sink can hold
    manager: str = "static"  # what gives the lab host's eth0 its address (MANAGERS)
    cloud: int = 0  # > 0: a cloud-like LAN, which takes frames from the host's MAC and this many assigned IPs only

    @property
    def lan_ns(self) -> str:
        return f"{self.name}-lan"

    @property
    def host_ns(self) -> str:
        return f"{self.name}-host"

    @property
    def state_dir(self) -> Path:
        return LAB_ROOT / self.name

    @property
    def lan_ip(self) -> ipaddress.IPv4Address:
        return NETWORK[1]

    @property
    def host_ip(self) -> ipaddress.IPv4Address:
        return NETWORK[2]

    @property
    def host_mac(self) -> str:
        return "02:00:c6:12:00:02"

    @property
    def lan_ip6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address("2001:db8:100::1")  # RFC 3849 documentation range

    @property
    def host_ip6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address("2001:db8:100::2")

    @property
    def prefixlen(self) -> int:
        return NETWORK.prefixlen

    @property
    def netmask(self) -> ipaddress.IPv4Address:
        return NETWORK.netmask

    @property
    def dhcp_first(self) -> ipaddress.IPv4Address:
        return NETWORK[256]

    @property
    def dhcp_last(self) -> ipaddress.IPv4Address:
        return NETWORK[-2]

    @property
    def assigned(self) -> list[ipaddress.IPv4Address]:
        """With ``cloud``: the host's secondary IPs, "assigned" as a cloud assigns them to an instance's NIC."""
        return [NETWORK[16 + i] for i in range(self.cloud)]

    @property
    def assigned_file(self) -> Path:
        """They are listed here, one per line, as a cloud's console or CLI lists them (for --addresses @FILE)."""
        return self.state_dir / "assigned"

    @property
    def workers(self) -> int:
        """Sink processes: each holds at most half its open-file limit, so SO_REUSEPORT's uneven
        spread never fills one."""
        return max(2, math.ceil(self.capacity / max(1000, fd_limit() // 2)))


MANAGERS = ("static", "dhclient", "udhcpc", "dhcpcd", "NetworkManager")


MAX_ASSIGNED = 200  # below the DHCP pool (from NETWORK[256]); clouds assign a few dozen per NIC at most


def make_lab(
    name: str = "mlab",
    port: int = 9000,
    leases: int = 4096,
    capacity: int = 150_000,
    manager: str = "static",
    cloud: int = 0,
) -> Lab:
    options.name(name, "--name", max_len=10)
    if manager not in MANAGERS:
        raise MultiipError(f"--manager {manager!r}: choose one of {', '.join(MANAGERS)}")
    if not 1 <= port <= 65535:
        raise MultiipError(f"--port {port}: need 1..65535")
    if not 1 <= leases <= NETWORK.num_addresses - 512:
        raise MultiipError(f"--leases {leases}: need 1..{NETWORK.num_addresses - 512}")
    if capacity < 1:
        raise MultiipError(f"--capacity {capacity}: must be at least 1")
    if not 0 <= cloud <= MAX_ASSIGNED:
        raise MultiipError(f"--cloud {cloud}: give 1..{MAX_ASSIGNED} assigned addresses (0: an ordinary LAN)")
    return Lab(name=name, port=port, leases=leases, capacity=capacity, manager=manager, cloud=cloud)


def up_script(lab: Lab) -> str:
    return render.render("lab_up.sh.j2", lab=lab, sink=execute.python_module("multiip.sink"))


def down_script(lab: Lab) -> str:
    return render.render("lab_down.sh.j2", lab=lab)


def is_up(lab: Lab) -> bool:
    return Path("/run/netns", lab.host_ns).exists()


def require_up(lab: Lab) -> None:
    if not is_up(lab):
        raise MultiipError(f"lab {lab.name} is not up: multiip lab up --name {lab.name}")


def sink_stats(lab: Lab) -> dict[str, Any]:
    """What the sink holds now: ``held``, ``accepted`` and ``peers`` (source IP -> connections)."""
    held = accepted = 0
    peers: dict[str, int] = {}
    workers = []
    for path in sorted(lab.state_dir.glob("sink-*.json")):
        try:
            w = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        workers.append(w)
        held += w["held"]
        accepted += w["accepted"]
        for ip, n in w["peers"].items():
            peers[ip] = peers.get(ip, 0) + n
    return {"held": held, "accepted": accepted, "peers": peers, "workers": len(workers)}
