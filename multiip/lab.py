"""The lab: a stand-in for "a host on a LAN", made of network namespaces only.

``<name>-lan`` holds a DHCP server (dnsmasq), a TCP sink on 198.18.0.1 and the LAN's routers (198.18.0.1
and .3) to a "far" network beyond it (198.19.0.0/16); ``<name>-host`` is the "host", whose uplink is
called eth0 and gets its address from ``manager``. With ``cloud`` the LAN behaves like a cloud's: it
drops every frame whose source MAC is not the host's, and every IPv4 packet from an address that was
not assigned to it, and its DHCP server serves the host alone.

The lab host has a mount namespace of its own too, held by one process (``holder.pid``): there /run is
a tmpfs (with /run/netns, /run/multiip and /run/multiip-lab bound from the machine's) and /sys the lab
host's own sysfs, read-only, so its NetworkManager or systemd-networkd and their D-Bus can never reach
the machine's bus or write the machine's /run. Whatever runs as the lab host (``lab exec``, ``enter``)
runs in both namespaces; a setup run so moves the lab's eth0 into a bridge, never the machine's.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multiip import execute, options, render
from multiip.errors import MultiipError
from multiip.limits import fd_limit

LAB_ROOT = Path("/run/multiip-lab")
NETWORK = ipaddress.IPv4Network("198.18.0.0/16")  # the LAN (RFC 2544 benchmarking range: 198.18.0.0/15)
FAR = ipaddress.IPv4Network("198.19.0.0/16")  # beyond the LAN: reached only through the default route


@dataclass(frozen=True)
class Lab:
    name: str = "mlab"
    port: int = 9000
    leases: int = 4096
    capacity: int = 150_000  # connections the sink can hold
    manager: str = "static"  # what gives the lab host's eth0 its address (MANAGERS)
    cloud: int = 0  # > 0: a cloud-like LAN, which takes frames from the host's MAC and this many assigned IPs only
    mtu: int = 1500  # of the wire between the host and the LAN
    server: bool = False  # eth0 carries what real servers' uplinks do (ECMP, nexthop objects, labels, IPv6 lifetimes)
    critical: bool = False  # systemd-networkd: KeepConfiguration=yes (netplan's critical: true)
    client_id: str = ""  # NetworkManager: ipv4.dhcp-client-id (e.g. duid); empty: its default (01 and the MAC)
    host_by: str = "mac"  # how the DHCP server knows the host: its MAC, or its client id (ipvlan's share the MAC)
    ignore_client_ids: bool = False  # the DHCP server tells clients apart by MAC only (dnsmasq --dhcp-ignore-clid)
    ipv6: str = "none"  # the LAN's IPv6 for hosts (IPV6): router advertisements for SLAAC, or for DHCPv6
    hosts: int = 1  # load hosts on the LAN: the first as below, the others NAME-host2... with static addresses

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
    def lan_dev(self) -> str:
        """The LAN's interface: its end of the wire, or the bridge of its ends (``cloud``: where the filter is;
        more ``hosts``: one wire each)."""
        return "lanbr" if self.cloud or self.hosts > 1 else "lan0"

    def host_ns_of(self, i: int) -> str:
        """Host i's network namespace (1: the lab's host)."""
        return self.host_ns if i == 1 else f"{self.host_ns}{i}"

    def host_ip_of(self, i: int) -> ipaddress.IPv4Address:
        return self.host_ip if i == 1 else NETWORK[9 + i]  # 198.18.0.11 on: clear of .3 (router) and .9 (--server)

    def host_ip6_of(self, i: int) -> ipaddress.IPv6Address:
        return self.host_ip6 if i == 1 else self.lan_ip6 + 9 + i

    def host_mac_of(self, i: int) -> str:
        return self.host_mac if i == 1 else f"02:00:c6:12:00:{9 + i:02x}"

    @property
    def second_router(self) -> ipaddress.IPv4Address:
        """The LAN's other router (the server uplink's ECMP default route goes over both)."""
        return NETWORK[3]

    @property
    def far_ip(self) -> ipaddress.IPv4Address:
        """An address beyond the LAN, on the LAN namespace's loopback: reached through a router only."""
        return FAR[1]

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
    def lan_net6(self) -> ipaddress.IPv6Network:
        """The LAN's IPv6 subnet: advertised with --ipv6 slaac|dhcpv6."""
        return ipaddress.IPv6Network(f"{self.lan_ip6}/64", strict=False)

    @property
    def dhcp6_first(self) -> ipaddress.IPv6Address:
        return self.lan_net6[0x10000]

    @property
    def dhcp6_last(self) -> ipaddress.IPv6Address:
        return self.lan_net6[0x1FFFF]

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
    def holder_pid_file(self) -> Path:
        return self.state_dir / "holder.pid"

    @property
    def workers(self) -> int:
        """Sink processes: each holds at most half its open-file limit, so SO_REUSEPORT's uneven
        spread never fills one."""
        return max(2, math.ceil(self.capacity / max(1000, fd_limit() // 2)))


MANAGERS = ("static", "dhclient", "udhcpc", "dhcpcd", "NetworkManager", "systemd-networkd")
CLIENT_IDS = ("", "mac", "duid")  # NetworkManager's ipv4.dhcp-client-id values the lab takes
HOST_BY = ("mac", "client-id")  # how the lab's DHCP server knows its host (the address 198.18.0.2 is its)
IPV6 = ("none", "slaac", "dhcpv6")  # the LAN's router advertisements: none, a prefix for SLAAC, "ask DHCPv6"


MAX_HOSTS = 4  # load hosts on one lab LAN
MAX_ASSIGNED = 200  # below the DHCP pool (from NETWORK[256]); clouds assign a few dozen per NIC at most


def make_lab(
    name: str = "mlab",
    port: int = 9000,
    leases: int = 4096,
    capacity: int = 150_000,
    manager: str = "static",
    cloud: int = 0,
    mtu: int = 1500,
    server: bool = False,
    critical: bool = False,
    client_id: str = "",
    host_by: str = "mac",
    ignore_client_ids: bool = False,
    ipv6: str = "none",
    hosts: int = 1,
) -> Lab:
    options.name(name, "--name", max_len=10)
    if manager not in MANAGERS:
        raise MultiipError(f"--manager {manager!r}: choose one of {', '.join(MANAGERS)}")
    if critical and manager != "systemd-networkd":
        raise MultiipError("--critical is systemd-networkd's KeepConfiguration=yes: give --manager systemd-networkd")
    if client_id not in CLIENT_IDS or (client_id and manager != "NetworkManager"):
        raise MultiipError(f"--client-id {client_id!r}: mac or duid, with --manager NetworkManager")
    if host_by not in HOST_BY:
        raise MultiipError(f"--host-by {host_by!r}: choose one of {', '.join(HOST_BY)}")
    if not 1 <= hosts <= MAX_HOSTS:
        raise MultiipError(f"--hosts {hosts}: give 1..{MAX_HOSTS}")
    if hosts > 1 and cloud:
        raise MultiipError("--hosts puts more hosts on an ordinary LAN: not with --cloud (one instance's LAN)")
    if ipv6 not in IPV6:
        raise MultiipError(f"--ipv6 {ipv6!r}: choose one of {', '.join(IPV6)}")
    if ipv6 != "none" and cloud:
        raise MultiipError("--ipv6 is for an ordinary LAN's router: not with --cloud")
    if not 1280 <= mtu <= 9000:
        raise MultiipError(f"--mtu {mtu}: give 1280..9000")
    if not 1 <= port <= 65535:
        raise MultiipError(f"--port {port}: need 1..65535")
    if not 1 <= leases <= NETWORK.num_addresses - 512:
        raise MultiipError(f"--leases {leases}: need 1..{NETWORK.num_addresses - 512}")
    if capacity < 1:
        raise MultiipError(f"--capacity {capacity}: must be at least 1")
    if not 0 <= cloud <= MAX_ASSIGNED:
        raise MultiipError(f"--cloud {cloud}: give 1..{MAX_ASSIGNED} assigned addresses (0: an ordinary LAN)")
    return Lab(
        name=name, port=port, leases=leases, capacity=capacity, manager=manager, cloud=cloud, mtu=mtu, server=server,
        critical=critical, client_id=client_id, host_by=host_by, ignore_client_ids=ignore_client_ids, ipv6=ipv6,
        hosts=hosts,
    )  # fmt: skip


def up_script(lab: Lab) -> str:
    return render.render("lab_up.sh.j2", lab=lab, sink=execute.python_module("multiip.sink"))


def down_script(lab: Lab) -> str:
    return render.render("lab_down.sh.j2", lab=lab)


def enter(lab: Lab, argv: Sequence[str], host: int = 1) -> list[str]:
    """argv run as the lab host: in its network namespace and, while it is up, its mount namespace (the
    other hosts have no manager: their network namespace)."""
    if host != 1:
        return execute.in_netns(lab.host_ns_of(host), argv)
    try:
        pid = int(lab.holder_pid_file.read_text().split()[0])
        inode = Path(f"/proc/{pid}/ns/net").stat().st_ino
    except (OSError, ValueError, IndexError):
        return execute.in_netns(lab.host_ns, argv)
    if inode != Path("/run/netns", lab.host_ns).stat().st_ino:  # a reused pid: not the lab's holder
        return execute.in_netns(lab.host_ns, argv)
    # entering a mount namespace starts at its root: --wd keeps the caller's directory (the same files there)
    net, mnt = f"--net=/run/netns/{lab.host_ns}", f"--mount=/proc/{pid}/ns/mnt"
    return ["nsenter", net, mnt, f"--wd={os.getcwd()}", "--", *argv]


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
