"""Every option a user types: its one definition (name, default, help) and its validation.

Each validating function returns a clean value or raises MultiipError naming the option, the bad
value and the fix. Nothing reaches a template unless it passed through here: names are limited to
letters, digits, ``-``, ``_`` and ``.``, so no value can carry shell syntax into a rendered script.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from multiip.errors import MultiipError

IFNAMSIZ = 15  # longest Linux interface name (IFNAMSIZ - 1)
BRIDGE_MAX_PORTS = 1023  # BR_MAX_PORTS - 1 in net/bridge/br_private.h
MAX_COUNT = BRIDGE_MAX_PORTS - 1  # one port is the uplink's
MAX_LINKED = 4096  # macvlan/ipvlan: no bridge; multiip's own bound (each namespace is a few processes at setup)


class Dhcp(StrEnum):
    auto = "auto"
    udhcpc = "udhcpc"
    dhclient = "dhclient"
    dhcpcd = "dhcpcd"
    none = "none"


class Mode(StrEnum):
    bridge = "bridge"  # the seed's: veths on a bridge that takes over the uplink
    macvlan = "macvlan"  # a macvlan on the uplink per namespace, each with its own MAC; the uplink untouched
    ipvlan = "ipvlan"  # an ipvlan (L2) on the uplink per namespace, all with the uplink's MAC (clouds, Wi-Fi)
    alias = "alias"  # no namespaces: the addresses go on the uplink itself, for tools that bind source IPs


class BridgeTool(StrEnum):
    ip = "ip"
    brctl = "brctl"


class AddressFormat(StrEnum):
    plain = "plain"  # one per line
    json = "json"  # a JSON list of {"namespace", "ip"}
    k6 = "k6"  # one comma-separated line, for k6 --local-ips
    args = "args"  # --source-ip A --source-ip B ..., for tcpkali


@dataclass(frozen=True)
class Spec:
    """One option: ``--name-with-dashes``, its default and help. The CLI and Plan.args() read these."""

    name: str
    kind: type
    default: Any
    help: str
    short: str = ""
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


PREFIX = Spec("prefix", str, "ns", "Namespaces are PREFIX0..PREFIX(N-1); ns gives the seed's names (tap$i, br-tap$i).")
BRIDGE = Spec("bridge", str, "br0", "The bridge that takes the uplink.")
UPLINK = Spec(
    "uplink", str, "", "The host's uplink. Default: the interface of the default route, found where the script runs."
)
TARGET = (PREFIX, BRIDGE, UPLINK)
SETUP = (
    Spec("count", int, 20, "How many namespaces (source IPs).", short="-n"),
    Spec(
        "mode",
        Mode,
        Mode.bridge,
        "bridge: the seed's (the uplink moves into a bridge); macvlan: one macvlan with its own MAC per namespace, "
        "the uplink untouched; ipvlan: one ipvlan sharing the uplink's MAC (clouds, Wi-Fi); alias: no namespaces, "
        "the addresses go on the uplink itself (for tools that bind source IPs: k6, Gatling, JMeter, tcpkali).",
    ),
    *TARGET,
    Spec(
        "dhcp",
        Dhcp,
        Dhcp.auto,
        "The namespaces' DHCP client; auto picks an installed one where the script runs (udhcpc, then "
        "dhclient, then dhcpcd); none: static addresses from --address.",
    ),
    Spec("address", str, None, "With --dhcp none: namespace i gets ADDRESS + i, e.g. 198.18.1.10/15."),
    Spec(
        "addresses",
        str,
        None,
        "With --dhcp none: exactly these addresses, one per namespace (or on the uplink with --mode alias), e.g. "
        "the secondary IPs a cloud assigned: A,B,C or @FILE (one per line). Without /LEN an address takes the "
        "prefix length of the uplink's subnet that holds it. Sets --count.",
        metavar="LIST|@FILE",
    ),
    Spec("gateway", str, None, "With --address: the namespaces' default route. Default: the uplink's gateway."),
    Spec(
        "port_range",
        str,
        None,
        "ip_local_port_range set inside every namespace (default 1024-65535). With --mode alias it is the host's "
        "own: changed only when given, and down restores it.",
        metavar="LO-HI",
    ),
    Spec("bridge_tool", BridgeTool, BridgeTool.ip, "ip: iproute2 only; brctl: the seed's brctl commands."),
    Spec(
        "host_dhcp",
        bool,
        False,
        "The seed's way for the host: the bridge asks DHCP for the host's address instead of taking over the "
        "uplink's addresses and routes.",
    ),
    Spec("lease_timeout", int, 30, "Seconds to wait for every namespace's DHCP lease.", metavar="SECONDS"),
    Spec(
        "tune_host",
        bool,
        False,
        "Raise the host-wide ARP table (gc_thresh1-3) and netdev_max_backlog limits that about 1000 namespaces "
        "outgrow; down restores them. Without it such counts are refused with what to change.",
    ),
    Spec(
        "confirm",
        int,
        0,
        "After moving the uplink, ask on the terminal to confirm the host is still reachable; without an answer "
        "within SECONDS the uplink goes back as it was (like netplan try). For setups over SSH.",
        metavar="SECONDS",
    ),
)
SETUP_DEFAULTS = {s.name: s.default for s in SETUP}


def text(value: Any) -> str:
    """An option's value as it is typed on the command line."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return "-".join(str(v) for v in value)
    return str(value)


def args(specs: tuple[Spec, ...], values: Mapping[str, Any]) -> list[str]:
    """The command-line arguments that give these values; defaults are left out."""
    out: list[str] = []
    for spec in specs:
        value = values[spec.name]
        if value is None or text(value) == text(spec.default):
            continue
        out += [spec.flag] if spec.kind is bool else [spec.flag, text(value)]
    return out


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def name(value: str, what: str, max_len: int = IFNAMSIZ) -> str:
    """A namespace or interface name: 1..max_len of [A-Za-z0-9_.-], not starting with '-' or '.'."""
    if not _NAME.fullmatch(value):
        raise MultiipError(f"{what} {value!r}: use only letters, digits, '-', '_' and '.'")
    if value[0] in "-.":
        raise MultiipError(f"{what} {value!r}: must not start with '-' or '.'")
    if len(value) > max_len:
        raise MultiipError(f"{what} {value!r} is {len(value)} characters; the limit is {max_len}")
    return value


def count(value: int, mode: str = "bridge") -> int:
    if value <= 0:
        raise MultiipError(f"--count {value}: must be at least 1")
    if mode != "bridge":
        if value > MAX_LINKED:
            raise MultiipError(f"--count {value}: at most {MAX_LINKED} namespaces per setup")
        return value
    if value > MAX_COUNT:
        raise MultiipError(
            f"--count {value}: one Linux bridge holds at most {BRIDGE_MAX_PORTS} ports "
            f"(the uplink takes one), so at most {MAX_COUNT} namespaces per bridge; --mode macvlan or ipvlan has "
            "no bridge"
        )
    return value


def choice(value: str | Enum, kind: type[Enum], option: str) -> str:
    allowed = [str(m.value) for m in kind]
    picked = text(value)
    if picked not in allowed:
        raise MultiipError(f"{option} {picked!r}: choose one of {', '.join(allowed)}")
    return picked


NAMESPACE_PORTS = (1024, 65535)  # every port a namespace's address can use (1024: see port_range)


def port_range(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value.strip())
    if not m:
        raise MultiipError(f"--port-range {value!r}: write it as LO-HI, e.g. 1024-65535")
    lo, hi = int(m[1]), int(m[2])
    if not lo <= hi <= 65535:
        raise MultiipError(f"--port-range {value!r}: need LO <= HI <= 65535")
    if lo < 1024:  # measured: a new namespace refuses "1023 65535" and accepts "1024 1024"
        raise MultiipError(
            f"--port-range {value!r}: the kernel refuses a range below 1024 (a new namespace's "
            "ip_unprivileged_port_start); start at 1024 or above"
        )
    return lo, hi


def interface_address(value: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise MultiipError(f"--address {value!r}: write an IPv4 address with prefix, e.g. 198.18.1.10/15") from None
    if "/" not in value:
        raise MultiipError(f"--address {value!r}: give the prefix length too, e.g. {value}/24")
    if iface.network.prefixlen == 0:
        raise MultiipError(f"--address {value!r}: a /0 is no subnet; give the LAN's prefix length")
    unusable(iface.ip, "--address")
    return iface


_SPECIAL = {
    "0.0.0.0/8": "'this network' (0/8)",
    "127.0.0.0/8": "loopback (127/8)",
    "224.0.0.0/4": "multicast (224/4)",
    "240.0.0.0/4": "reserved (240/4)",
}


def unusable(ip: ipaddress.IPv4Address, option: str) -> None:
    """Refuse an address no host on a LAN can have."""
    for net, what in _SPECIAL.items():
        if ip in ipaddress.IPv4Network(net):
            raise MultiipError(f"{option} {ip}: {what} addresses cannot be a host's on a LAN")


def ipv4(value: str, option: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise MultiipError(f"{option} {value!r}: not an IPv4 address") from None


def address_list(value: str, read: Callable[[str], str]) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv4Address, ...]:
    """--addresses A,B,C or @FILE (one per line, # comments): each an IPv4 address, with or without /LEN."""
    source = "--addresses"
    if value.startswith("@"):
        source = f"--addresses {value}"
        try:
            value = read(value[1:])
        except OSError as e:
            raise MultiipError(f"{source}: cannot read it ({e.strerror})") from None
    words = [w for line in value.splitlines() for w in line.split("#", 1)[0].replace(",", " ").split()]
    if not words:
        raise MultiipError(f"{source}: no address in it")
    out: list[ipaddress.IPv4Interface | ipaddress.IPv4Address] = []
    for w in words:
        try:
            a: ipaddress.IPv4Interface | ipaddress.IPv4Address = (
                ipaddress.IPv4Interface(w) if "/" in w else ipaddress.IPv4Address(w)
            )
        except ValueError:
            raise MultiipError(f"{source}: {w!r} is not an IPv4 address (A.B.C.D or A.B.C.D/LEN)") from None
        ip = a.ip if isinstance(a, ipaddress.IPv4Interface) else a
        unusable(ip, source)
        out.append(a)
    seen: set[ipaddress.IPv4Address] = set()
    for a in out:
        ip = a.ip if isinstance(a, ipaddress.IPv4Interface) else a
        if ip in seen:
            raise MultiipError(f"{source}: {ip} is given twice")
        seen.add(ip)
    return tuple(out)


def seconds(value: float, option: str) -> float:
    if value <= 0:
        raise MultiipError(f"{option} {value}: must be positive")
    return value


def address_block(first: ipaddress.IPv4Interface, n: int, gateway: ipaddress.IPv4Address | None) -> None:
    """Refuse a static block that leaves its subnet, takes the network/broadcast address or the gateway."""
    net = first.network
    last = first.ip + (n - 1) if int(first.ip) + n - 1 <= 0xFFFFFFFF else None
    usable_lo, usable_hi = (net[0], net[-1]) if net.prefixlen >= 31 else (net[1], net[-2])
    if last is None or first.ip < usable_lo or last > usable_hi:
        raise MultiipError(
            f"--address {first}: {n} addresses from {first.ip} leave the subnet {net} "
            f"(usable {usable_lo} - {usable_hi})"
        )
    if gateway is not None:
        unusable(gateway, "--gateway")
        if gateway not in net:
            raise MultiipError(f"--gateway {gateway} is outside the subnet {net}")
        if net.prefixlen < 31 and gateway in (net.network_address, net.broadcast_address):
            which = "network" if gateway == net.network_address else "broadcast"
            raise MultiipError(f"--gateway {gateway} is the {which} address of {net}, not a host's")
        if first.ip <= gateway <= last:
            raise MultiipError(f"--gateway {gateway} falls inside the namespace addresses {first.ip} - {last}")


# --- multiip hold


def server(value: str) -> tuple[ipaddress.IPv4Address, int]:
    """HOST:PORT of the server to hold connections to."""
    host, sep, port = value.rpartition(":")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise MultiipError(f"target {value!r}: write it as IPv4:PORT, e.g. 198.18.0.1:9000") from None
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise MultiipError(f"target {value!r}: the port must be 1..65535")
    return ip, int(port)


def hold_limits(per_ip: int | None, duration: float | None, rate: float) -> None:
    if per_ip is not None and per_ip < 1:
        raise MultiipError(f"--per-ip {per_ip}: must be at least 1")
    if duration is not None and duration < 0:
        raise MultiipError(f"--duration {duration}: must be 0 or more")
    if rate < 0:
        raise MultiipError(f"--rate {rate}: must be 0 or more")


# --- multiip exec


def parallel(value: int) -> int:
    if value < 1:
        raise MultiipError(f"--parallel {value}: must be at least 1")
    return value
