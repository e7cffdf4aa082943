"""Validation of everything a user types. Each function returns a clean value or raises MultiipError.

Nothing reaches a template unless it passed through here: names are limited to letters, digits,
``-``, ``_`` and ``.``, so no value can carry shell syntax into a rendered script.
"""

from __future__ import annotations

import ipaddress
import re

from multiip.errors import MultiipError

IFNAMSIZ = 15  # longest Linux interface name (IFNAMSIZ - 1)
BRIDGE_MAX_PORTS = 1023  # BR_MAX_PORTS - 1 in net/bridge/br_private.h
MAX_COUNT = BRIDGE_MAX_PORTS - 1  # one port is the uplink's
DHCP_CLIENTS = ("auto", "udhcpc", "dhclient", "dhcpcd", "none")
BRIDGE_TOOLS = ("ip", "brctl")
HOST_MODES = ("move", "dhcp")

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


def count(value: int) -> int:
    if value <= 0:
        raise MultiipError(f"--count {value}: must be at least 1")
    if value > MAX_COUNT:
        raise MultiipError(
            f"--count {value}: one Linux bridge holds at most {BRIDGE_MAX_PORTS} ports "
            f"(the uplink takes one), so at most {MAX_COUNT} namespaces per bridge"
        )
    return value


def choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise MultiipError(f"{option} {value!r}: choose one of {', '.join(allowed)}")
    return value


def port_range(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value.strip())
    if not m:
        raise MultiipError(f"--port-range {value!r}: write it as LO-HI, e.g. 1024-65535")
    lo, hi = int(m[1]), int(m[2])
    if not 1 <= lo < hi <= 65535:
        raise MultiipError(f"--port-range {value!r}: need 1 <= LO < HI <= 65535")
    return lo, hi


def interface_address(value: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise MultiipError(f"--address {value!r}: write an IPv4 address with prefix, e.g. 198.18.1.10/15") from None
    if "/" not in value:
        raise MultiipError(f"--address {value!r}: give the prefix length too, e.g. {value}/24")
    return iface


def ipv4(value: str, option: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise MultiipError(f"{option} {value!r}: not an IPv4 address") from None


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
        if gateway not in net:
            raise MultiipError(f"--gateway {gateway} is outside the subnet {net}")
        if first.ip <= gateway <= last:
            raise MultiipError(f"--gateway {gateway} falls inside the namespace addresses {first.ip} - {last}")
