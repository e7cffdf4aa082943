"""What a setup is called on a host: the names every piece gets, derived from validated options.

options.py validates; this module only derives (and refuses names the kernel would not take). The
templates read a ``Plan``: ``plan.o`` the options, ``plan.target`` the names.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from multiip import options
from multiip.errors import MultiipError

STATE_ROOT = Path("/run/multiip")  # each setup's record lives in STATE_ROOT/<prefix>; the scripts are told
SEED_PREFIX = options.DEFAULT.prefix


@dataclass(frozen=True)
class Target:
    """Names a setup on a host: its namespaces ``prefix0..``, its bridge and (optionally) its uplink."""

    prefix: str = SEED_PREFIX
    bridge: str = options.DEFAULT.bridge
    uplink: str = ""  # empty: found on the host when a script runs

    @property
    def inside_prefix(self) -> str:
        """Veth end inside namespace i is ``inside_prefix + i`` (the seed's ``tap$i`` for prefix ns)."""
        return "tap" if self.prefix == SEED_PREFIX else f"{self.prefix}-t"

    @property
    def port_prefix(self) -> str:
        """Veth end on the bridge is ``port_prefix + i`` (the seed's ``br-tap$i`` for prefix ns)."""
        return "br-tap" if self.prefix == SEED_PREFIX else f"{self.prefix}-b"

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.prefix

    def args(self) -> list[str]:
        """The options that name this target (defaults left out)."""
        named = options.Setup(prefix=self.prefix, bridge=self.bridge, uplink=self.uplink)
        return named.args()


def make_target(prefix: str = SEED_PREFIX, bridge: str = options.DEFAULT.bridge, uplink: str = "") -> Target:
    """A target from the names as typed (down, status, exec, hold: no other option)."""
    valid = options.setup(prefix=prefix, bridge=bridge, uplink=uplink, count=1)
    return Target(valid.prefix, valid.bridge, valid.uplink)


@dataclass(frozen=True)
class Plan:
    """A whole setup: the validated options and the names they give."""

    o: options.Setup
    target: Target

    @property
    def ports(self) -> tuple[int, int]:
        """The port range set in each namespace."""
        return self.o.port_range or options.NAMESPACE_PORTS

    @cached_property  # the templates read it many times: 1000 addresses are made once
    def static(self) -> list[str]:
        """The static addresses, one per namespace (or alias): "A/LEN", or "A" where the uplink's subnet (or,
        off it, the host's own length) gives LEN; a block's, each."""
        if self.o.address is not None:
            return [f"{self.o.address.ip + i}/{self.o.address.network.prefixlen}" for i in range(self.o.count)]
        if self.block is not None:
            return [str(a) for a in options.block_addresses(self.block, self.o.count)]
        return [str(a) for a in self.o.addresses]

    @property
    def static_family(self) -> int | None:
        """4 or 6: the static addresses' family (None: no static addresses)."""
        if self.o.address is not None:
            return self.o.address.version
        return options.listed_ip(self.o.addresses[0]).version if self.o.addresses else None

    @property
    def probe(self) -> bool:
        return options.arp_probed(self.static_family, self.o.local_route)

    @property
    def ipv6(self) -> bool:
        """The namespaces may get IPv6: static IPv6 addresses, --family 6 or dual, or auto (the script sees what
        the LAN offers)."""
        if self.o.mode == options.Mode.alias:
            return False
        return self.static_family == 6 if self.static_family else self.o.family != options.Family.v4

    @property
    def block(self) -> options.Block | None:
        """--addresses BLOCK: the delegated prefix the static addresses come from."""
        first = self.o.addresses[0] if self.o.addresses else None
        return first if isinstance(first, ipaddress.IPv4Network | ipaddress.IPv6Network) else None

    def args(self) -> list[str]:
        """The options that reproduce this plan, for a script's header."""
        return self.o.args()


def plan_of(setup: options.Setup) -> Plan:
    """The plan of a validated setup; refuses a prefix and count whose names the kernel would not take."""
    t = Target(setup.prefix, setup.bridge, setup.uplink)
    last = setup.count - 1
    for what, value in (
        ("namespace", f"{t.prefix}{last}"),
        ("interface", f"{t.port_prefix}{last}"),
        ("interface", f"{t.inside_prefix}{last}"),
    ):
        if len(value) > options.IFNAMSIZ:
            raise MultiipError(
                f"--prefix {setup.prefix!r} with --count {setup.count} gives the {what} name {value!r}, "
                f"over {options.IFNAMSIZ} characters; use a shorter prefix"
            )
    return Plan(setup, t)


def make_plan(**given: Any) -> Plan:
    """The plan from option values as typed (options.setup's arguments)."""
    return plan_of(options.setup(**given))
