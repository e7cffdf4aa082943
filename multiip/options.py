"""Every option a user types: its one definition (flag, default, help) and its validation.

``setup(**given)`` turns what was typed into a validated ``Setup`` or raises MultiipError naming the
option, the bad value and the fix; plan.py derives names from a ``Setup`` and never validates. Nothing
reaches a template unless it passed through here: names are limited to letters, digits, ``-``, ``_`` and
``.``, so no value can carry shell syntax into a rendered script.

The CLI's parameters are the ``Annotated`` aliases below (flag and help), with their defaults from
``DEFAULT``: a command names each option it takes, and passes them to ``setup()`` by name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from multiip.errors import MultiipError

IFNAMSIZ = 15  # longest Linux interface name (IFNAMSIZ - 1)
BRIDGE_MAX_PORTS = 1023  # BR_MAX_PORTS - 1 in net/bridge/br_private.h
MAX_COUNT = BRIDGE_MAX_PORTS - 1  # one port is the uplink's
MAX_LINKED = 4096  # macvlan/ipvlan: no bridge; multiip's own bound (each namespace is a few processes at setup)
NAMESPACE_PORTS = (1024, 65535)  # every port a namespace's address can use (1024: see port_range)


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


class ProbeTool(StrEnum):
    auto = "auto"  # arp-scan where the script runs has it (one process for every address), arping otherwise
    arp_scan = "arp-scan"
    arping = "arping"  # iputils' arping -D, one process per address


class AddressFormat(StrEnum):
    plain = "plain"  # one per line
    json = "json"  # a JSON list of {"namespace", "ip"}
    k6 = "k6"  # one comma-separated line, for k6 --local-ips
    args = "args"  # --source-ip A --source-ip B ..., for tcpkali


class Family(StrEnum):
    auto = "auto"  # what the LAN offers: IPv6 too where the uplink has it from router advertisements
    v4 = "4"
    v6 = "6"
    dual = "dual"


IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Iface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Block = ipaddress.IPv4Network | ipaddress.IPv6Network
Listed = Iface | IP | Block  # an --addresses entry: A, A/LEN, or a block (PREFIX/LEN, no host bits: its addresses)


@dataclass(frozen=True)
class Setup:
    """A validated setup: each option's clean value, by the option's name (--port-range: port_range).
    ``Setup()`` holds every default."""

    prefix: str = "ns"
    bridge: str = "br0"
    uplink: str = ""  # empty: the interface of the default route, found where the script runs
    count: int = 20
    mode: Mode = Mode.bridge
    dhcp: Dhcp = Dhcp.auto
    family: Family = Family.auto
    address: Iface | None = None
    addresses: tuple[Listed, ...] = ()
    gateway: IP | None = None
    port_range: tuple[int, int] | None = None  # None: 1024-65535 in namespaces; with --mode alias, the host's left
    off_subnet: bool = False
    local_route: bool = False  # --mode alias, a block: one local route for it instead of its addresses
    dhcp6: bool = False  # a DHCPv6 client per namespace too (where the LAN hands out addresses by DHCPv6)
    bridge_tool: BridgeTool = BridgeTool.ip
    probe_tool: ProbeTool = ProbeTool.auto
    probe_wait: int = 500  # milliseconds the duplicate-address probe waits for answers (arp-scan's own default)
    host_dhcp: bool = False
    lease_timeout: int = 30
    tune_host: bool = False
    confirm: int = 0  # seconds to confirm reachability after the uplink moved; 0: do not ask

    @property
    def static(self) -> bool:
        return self.address is not None or bool(self.addresses)

    def args(self) -> list[str]:
        """The command-line options that give this setup (defaults left out), for a script's header."""
        out: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            out += [flag] if value is True else [flag, text(value)]
        return out


DEFAULT = Setup()
PROBE_WAIT = (100, 10000)  # the milliseconds --probe-wait may give


def arp_probed(version: int | None, local_route: bool) -> bool:
    """Are the static addresses probed on the LAN first (ARP, RFC 5227)? IPv4 ones on a link are; IPv6's DAD is
    the kernel's, and a --local-route block is on no link."""
    return version == 4 and not local_route


def text(value: Any) -> str:
    """An option's value as it is typed on the command line."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "-".join(str(v) for v in value)  # a port range
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)  # an address list
    return str(value)


# --- the options as the CLI takes them (each command lists the ones it has)

Prefix = Annotated[
    str,
    typer.Option(help="Namespaces are PREFIX0..PREFIX(N-1); ns gives the seed's names (tap$i, br-tap$i)."),
]
Bridge = Annotated[str, typer.Option(help="The bridge that takes the uplink.")]
Uplink = Annotated[
    str,
    typer.Option(help="The host's uplink. Default: the interface of the default route, found where the script runs."),
]
Count = Annotated[int, typer.Option("--count", "-n", help="How many namespaces (source IPs).")]
ModeOption = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="bridge: the seed's (the uplink moves into a bridge); macvlan: one macvlan with its own MAC per "
        "namespace, the uplink untouched; ipvlan: one ipvlan sharing the uplink's MAC (clouds, Wi-Fi); alias: no "
        "namespaces, the addresses go on the uplink itself (for tools that bind source IPs: k6, Gatling, JMeter).",
    ),
]
DhcpOption = Annotated[
    Dhcp,
    typer.Option(
        "--dhcp",
        help="The namespaces' DHCP client; auto picks an installed one where the script runs (udhcpc, then "
        "dhclient, then dhcpcd); none: static addresses from --address.",
    ),
]
Address = Annotated[
    str | None,
    typer.Option(help="Static addresses: namespace i gets ADDRESS + i, e.g. 198.18.1.10/16 or 2001:db8::10/64."),
]
Addresses = Annotated[
    str | None,
    typer.Option(
        metavar="LIST|@FILE",
        help="Static addresses: exactly these, one per namespace (or on the uplink with --mode alias), e.g. the "
        "secondary IPs a cloud assigned: A,B,C or @FILE (one per line), IPv4 or IPv6. Without /LEN an address takes "
        "the prefix length of the uplink's subnet that holds it. A block (PREFIX/LEN, no host bits: a delegated "
        "prefix, an alias range) gives its addresses: all of an IPv4 one, --count of an IPv6 one. Sets --count.",
    ),
]
Gateway = Annotated[
    str | None, typer.Option(help="With static addresses: the namespaces' default route. Default: the uplink's.")
]
PortRange = Annotated[
    str | None,
    typer.Option(
        metavar="LO-HI",
        help="ip_local_port_range set inside every namespace (default 1024-65535). With --mode alias it is the "
        "host's own: changed only when given, and down restores it.",
    ),
]
FamilyOption = Annotated[
    Family,
    typer.Option(
        "--family",
        help="The namespaces' addresses: 4, 6 (SLAAC from the LAN's router advertisements; with --dhcp6, DHCPv6 "
        "too), dual, or auto: what the LAN offers (IPv6 too where the uplink has it from router advertisements). "
        "Static addresses give their own.",
    ),
]
LocalRoute = Annotated[
    bool,
    typer.Option(
        help="With --mode alias and --addresses BLOCK (a prefix routed to this host, e.g. AWS prefix delegation, "
        "GCP alias ranges): one local route for the whole block (ip route add local BLOCK dev lo), so a tool may "
        "bind any address of it, instead of an address each."
    ),
]
Dhcp6 = Annotated[
    bool, typer.Option(help="A DHCPv6 client per namespace too, with a stable DUID each (the LAN's DHCPv6 server).")
]
OffSubnet = Annotated[
    bool,
    typer.Option(
        help="Take static addresses outside the uplink's subnet, or with another prefix length (a routed or "
        "delegated block). Without it they are refused: they would add an on-link route for a subnet the LAN "
        "does not have."
    ),
]
BridgeToolOption = Annotated[
    BridgeTool, typer.Option("--bridge-tool", help="ip: iproute2 only; brctl: the seed's brctl commands.")
]
ProbeToolOption = Annotated[
    ProbeTool,
    typer.Option(
        "--probe-tool",
        help="What sends the duplicate-address probe (ARP from 0.0.0.0) of static IPv4 addresses: arp-scan (one "
        "process for all), arping (iputils, one per address), or auto: arp-scan where the script runs has it.",
    ),
]
ProbeWait = Annotated[
    int,
    typer.Option(
        "--probe-wait",
        metavar="MS",
        help="Milliseconds the duplicate-address probe of static IPv4 addresses waits for an answer after its "
        f"last ARP ({PROBE_WAIT[0]}..{PROBE_WAIT[1]}; arping: whole seconds, rounded up, a request a second). A host "
        "on a LAN answers within milliseconds; raise it for a slow or lossy one.",
    ),
]
HostDhcp = Annotated[
    bool,
    typer.Option(
        help="The seed's way for the host: the bridge asks DHCP for the host's address instead of taking over the "
        "uplink's addresses and routes."
    ),
]
LeaseTimeout = Annotated[int, typer.Option(metavar="SECONDS", help="Seconds to wait for every namespace's DHCP lease.")]
TuneHost = Annotated[
    bool,
    typer.Option(
        help="Raise the host-wide ARP table (gc_thresh1-3) and netdev_max_backlog limits that about 1000 namespaces "
        "outgrow; down restores them. Without it such counts are refused with what to change."
    ),
]
Confirm = Annotated[
    int,
    typer.Option(
        metavar="SECONDS",
        help="After moving the uplink, ask on the terminal to confirm the host is still reachable; without an "
        "answer within SECONDS the uplink goes back as it was (like netplan try). For setups over SSH.",
    ),
]


# --- validation of one value


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


_UNIT_PATH = re.compile(r"/[A-Za-z0-9_.@+/-]*")


def unit_directory(value: str) -> Path:
    """--systemd DIR, absolute: its path goes into the unit's ExecStart and ExecStop lines, where a space
    splits the command and '%', '$' or '\\' mean something to systemd; so only plain characters."""
    path = Path(value).resolve()
    if not _UNIT_PATH.fullmatch(str(path)):
        raise MultiipError(
            f"--systemd {value!r}: the service's command lines name {str(path)!r}; give a directory whose path "
            "has only letters, digits and '/', '-', '_', '.', '@', '+'"
        )
    return path


def count(value: int, mode: Mode = Mode.bridge) -> int:
    if value <= 0:
        raise MultiipError(f"--count {value}: must be at least 1")
    if mode != Mode.bridge:
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


E = TypeVar("E", bound=Enum)


def choice(value: str | Enum, kind: type[E], option: str) -> E:
    allowed = [str(m.value) for m in kind]
    picked = text(value)
    if picked not in allowed:
        raise MultiipError(f"{option} {picked!r}: choose one of {', '.join(allowed)}")
    return kind(picked)


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


def interface_address(value: str) -> Iface:
    """--address A/LEN: the first of the namespaces' addresses (IPv4 or IPv6)."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise MultiipError(
            f"--address {value!r}: write an address with its prefix length, e.g. 198.18.1.10/16 or 2001:db8::10/64"
        ) from None
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
    "::/128": "the unspecified (::)",
    "::1/128": "loopback (::1)",
    "fe80::/10": "link-local (fe80::/10)",
    "ff00::/8": "multicast (ff00::/8)",
}


def unusable(ip: IP, option: str) -> None:
    """Refuse an address no host on a LAN can have (as its source address beyond the link)."""
    for net, what in _SPECIAL.items():
        block = ipaddress.ip_network(net)
        if block.version == ip.version and ip in block:
            raise MultiipError(f"{option} {ip}: {what} addresses cannot be a host's on a LAN")


def ip_address(value: str, option: str) -> IP:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise MultiipError(f"{option} {value!r}: not an IP address") from None


def listed_ip(a: Listed) -> IP:
    """An --addresses entry's (first) address."""
    if isinstance(a, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return a.network_address
    return a.ip if isinstance(a, ipaddress.IPv4Interface | ipaddress.IPv6Interface) else a


def address_list(value: str, read: Callable[[str], str]) -> tuple[Listed, ...]:
    """--addresses A,B,C or @FILE (one per line, # comments): addresses with or without /LEN, and blocks
    (PREFIX/LEN with no host bits set: the addresses a cloud delegates or aliases to a NIC), one family."""
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
    out: list[Listed] = []
    seen: set[IP] = set()
    for w in words:
        try:
            a: Listed = ipaddress.ip_interface(w) if "/" in w else ipaddress.ip_address(w)
        except ValueError:
            raise MultiipError(f"{source}: {w!r} is not an IP address (A, A/LEN or a block PREFIX/LEN)") from None
        if isinstance(a, ipaddress.IPv4Interface | ipaddress.IPv6Interface) and a.ip == a.network.network_address:
            a = a.network  # no host bits: a block
        ip = listed_ip(a)
        if not isinstance(a, ipaddress.IPv4Network | ipaddress.IPv6Network):
            unusable(ip, source)
        if out and ip.version != listed_ip(out[0]).version:
            raise MultiipError(
                f"{source}: {w!r} is IPv{ip.version} and {listed_ip(out[0])} IPv{listed_ip(out[0]).version}: a "
                "setup's static addresses are of one family (give the other family's to a setup of its own)"
            )
        if ip in seen:
            raise MultiipError(f"{source}: {ip} is given twice")
        seen.add(ip)
        out.append(a)
    blocks = [a for a in out if isinstance(a, ipaddress.IPv4Network | ipaddress.IPv6Network)]
    if blocks and len(out) > 1:
        raise MultiipError(f"{source}: a block ({blocks[0]}) comes alone: give it, or the addresses, not both")
    return tuple(out)


def block_addresses(block: Block, n: int) -> list[IP]:
    """The first n addresses of a delegated block: from its first (IPv4: all of a /28 are the host's), from
    the one after its zero address (IPv6: ::0 is the subnet's anycast)."""
    start = 1 if block.version == 6 else 0
    if block.num_addresses - start < n:
        raise MultiipError(
            f"--addresses {block}: the block holds {block.num_addresses - start} addresses, not the {n} asked for: "
            "a shorter prefix, or a smaller --count"
        )
    return [block.network_address + start + i for i in range(n)]


def seconds(value: float, option: str) -> float:
    if value <= 0:
        raise MultiipError(f"{option} {value}: must be positive")
    return value


def address_block(first: Iface, n: int, gateway: IP | None) -> None:
    """Refuse a static block that leaves its subnet, takes the network/broadcast address or the gateway."""
    net = first.network
    lo, hi = int(first.ip), int(first.ip) + n - 1  # the block, as numbers (either family)
    ends = net.version == 4 and net.prefixlen < 31  # IPv4's network and broadcast addresses are no host's
    usable_lo, usable_hi = net[1 if ends or net.version == 6 else 0], net[-2 if ends else -1]  # IPv6 ::0: anycast
    if lo < int(usable_lo) or hi > int(usable_hi):
        raise MultiipError(
            f"--address {first}: {n} addresses from {first.ip} leave the subnet {net} "
            f"(usable {usable_lo} - {usable_hi})"
        )
    last = ipaddress.ip_address(hi)
    if gateway is not None:
        unusable(gateway, "--gateway")
        if gateway.version != net.version:
            raise MultiipError(f"--gateway {gateway} is IPv{gateway.version}; the addresses are IPv{net.version}")
        if gateway not in net:
            raise MultiipError(f"--gateway {gateway} is outside the subnet {net}")
        if net.version == 4 and net.prefixlen < 31 and gateway in (net.network_address, net.broadcast_address):
            which = "network" if gateway == net.network_address else "broadcast"
            raise MultiipError(f"--gateway {gateway} is the {which} address of {net}, not a host's")
        if lo <= int(gateway) <= hi:
            raise MultiipError(f"--gateway {gateway} falls inside the namespace addresses {first.ip} - {last}")


# --- a whole setup: each value, then the rules between them


def _read_text(path: str) -> str:
    return Path(path).read_text()


def setup(**given: Any) -> Setup:
    """A validated Setup from option values by name, as typed (strings, numbers, enums); options not given
    take their default."""
    names = {f.name for f in dataclasses.fields(Setup)}
    unknown = set(given) - names
    if unknown:
        raise TypeError(f"unknown options: {sorted(unknown)}")
    v = {k: given.get(k, getattr(DEFAULT, k)) for k in names}
    mode = choice(v["mode"], Mode, "--mode")
    n = count(int(v["count"]), mode)
    client = choice(v["dhcp"], Dhcp, "--dhcp")
    first = interface_address(v["address"]) if v["address"] else None
    listed = address_list(v["addresses"], _read_text) if v["addresses"] else ()
    gw = ip_address(str(v["gateway"]), "--gateway") if v["gateway"] else None
    family = choice(v["family"], Family, "--family")
    if first is not None and listed:
        raise MultiipError("--address and --addresses both give the static addresses: use one")
    block = listed[0] if listed and isinstance(listed[0], ipaddress.IPv4Network | ipaddress.IPv6Network) else None
    if block is not None:  # its addresses: all of an IPv4 block's, --count of an IPv6 one's (or of either, given)
        n = count(block.num_addresses if n == DEFAULT.count and block.version == 4 else n, mode)
        block_addresses(block, n)
    elif listed:
        if n not in (len(listed), DEFAULT.count):
            raise MultiipError(f"--count {n} but --addresses lists {len(listed)}: one per namespace; drop --count")
        n = count(len(listed), mode)
    static = first is not None or bool(listed)
    version = (first.ip if first is not None else listed_ip(listed[0])).version if static else None
    if version is not None:
        if family not in (Family.auto, Family(str(version))):
            raise MultiipError(f"--family {family} and IPv{version} static addresses: the addresses give the family")
        if gw is not None and gw.version != version:
            raise MultiipError(f"--gateway {gw} is IPv{gw.version}; the addresses are IPv{version}")
    if v["local_route"] and (mode != Mode.alias or block is None):
        raise MultiipError(
            "--local-route routes a whole block to this host (ip route add local BLOCK dev lo): give --mode alias "
            "and --addresses BLOCK (e.g. a delegated prefix 10.0.0.16/28)"
        )
    if v["dhcp6"] and (static or family == Family.v4):
        raise MultiipError("--dhcp6 asks DHCPv6 for the namespaces' IPv6 addresses: not with static ones or --family 4")
    if static and client not in (Dhcp.auto, Dhcp.none):
        raise MultiipError(f"--dhcp {client} and static addresses (--address/--addresses): choose one")
    if family == Family.v6 and not static and client not in (Dhcp.auto, Dhcp.none):
        raise MultiipError(
            f"--dhcp {client} is a DHCPv4 client and --family 6 gives no IPv4: the namespaces take IPv6 by SLAAC "
            "(add --dhcp6 where the LAN hands out DHCPv6 addresses), or use --family dual"
        )
    if static or family == Family.v6:
        client = Dhcp.none
    if v["off_subnet"] and not static:
        raise MultiipError("--off-subnet is about static addresses: give them with --address or --addresses")
    if mode == Mode.alias:
        if not static:
            raise MultiipError(
                "--mode alias puts static addresses on the uplink: give them with --addresses LIST|@FILE or --address"
            )
        if gw is not None or v["tune_host"]:
            raise MultiipError("--mode alias has no namespaces: --gateway and --tune-host are for namespace modes")
    if gw is not None and not static:
        raise MultiipError("--gateway goes with --address or --addresses (DHCP gives the gateway otherwise)")
    if first is not None:
        address_block(first, n, gw)
    probed = arp_probed(version, bool(v["local_route"]))
    unprobed = (
        "give them with --address or --addresses (a --local-route block and IPv6 addresses are not probed by ARP)"
    )
    probe_tool = choice(v["probe_tool"], ProbeTool, "--probe-tool")
    if probe_tool != ProbeTool.auto and not probed:
        raise MultiipError(f"--probe-tool picks what probes static IPv4 addresses on the LAN: {unprobed}")
    probe_wait = int(v["probe_wait"])
    if not PROBE_WAIT[0] <= probe_wait <= PROBE_WAIT[1]:
        raise MultiipError(f"--probe-wait {probe_wait}: give {PROBE_WAIT[0]}..{PROBE_WAIT[1]} milliseconds")
    if probe_wait != DEFAULT.probe_wait and not probed:
        raise MultiipError(f"--probe-wait is how long the probe of static IPv4 addresses on the LAN waits: {unprobed}")
    if v["host_dhcp"] and client == Dhcp.none:
        raise MultiipError("--host-dhcp needs a DHCP client: pick one with --dhcp")
    tool = choice(v["bridge_tool"], BridgeTool, "--bridge-tool")
    if mode != Mode.bridge and (v["host_dhcp"] or tool != BridgeTool.ip or int(v["confirm"])):
        raise MultiipError(
            f"--mode {mode} leaves the uplink alone: --host-dhcp, --bridge-tool and --confirm are for --mode bridge"
        )
    if mode == Mode.ipvlan and client in (Dhcp.dhclient, Dhcp.dhcpcd):
        raise MultiipError(
            "--mode ipvlan shares one MAC: its DHCP needs a client id and broadcast replies per namespace, which "
            "multiip gives udhcpc: use --dhcp udhcpc (or auto)"
        )
    lease_timeout, confirm = int(v["lease_timeout"]), int(v["confirm"])
    seconds(lease_timeout, "--lease-timeout")
    if not 0 <= confirm <= 600:
        raise MultiipError(f"--confirm {confirm}: give 1..600 seconds (0: do not ask)")
    uplink = name(v["uplink"], "--uplink") if v["uplink"] else ""
    bridge = name(v["bridge"], "--bridge")
    if bridge == uplink:
        raise MultiipError(f"--bridge and --uplink are both {bridge!r}")
    return Setup(
        prefix=name(v["prefix"], "--prefix"),
        bridge=bridge,
        uplink=uplink,
        count=n,
        mode=mode,
        dhcp=client,
        family=family,
        address=first,
        addresses=listed,
        gateway=gw,
        port_range=port_range(v["port_range"]) if v["port_range"] else None,
        off_subnet=bool(v["off_subnet"]),
        local_route=bool(v["local_route"]),
        dhcp6=bool(v["dhcp6"]),
        bridge_tool=tool,
        probe_tool=probe_tool,
        probe_wait=probe_wait,
        host_dhcp=bool(v["host_dhcp"]),
        lease_timeout=lease_timeout,
        tune_host=bool(v["tune_host"]),
        confirm=confirm,
    )


# --- multiip hold


def server(value: str) -> tuple[IP, int]:
    """HOST:PORT of the server to hold connections to: IPv4:PORT or [IPv6]:PORT."""
    host, sep, port = value.rpartition(":")
    try:
        ip: IP = (
            ipaddress.IPv6Address(host[1:-1])
            if host.startswith("[") and host.endswith("]")
            else ipaddress.IPv4Address(host)
        )
    except ValueError:
        raise MultiipError(
            f"target {value!r}: write it as IPv4:PORT or [IPv6]:PORT, e.g. 198.18.0.1:9000 or [2001:db8::1]:9000"
        ) from None
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
