"""What a setup is: validated options and the names every piece gets. Templates and discovery read it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from multiip import options
from multiip.errors import MultiipError

STATE_ROOT = Path("/run/multiip")
SEED_PREFIX = "ns"


@dataclass(frozen=True)
class Target:
    """Names a setup on a host: its namespaces ``prefix0..``, its bridge and (optionally) its uplink."""

    prefix: str = SEED_PREFIX
    bridge: str = "br0"
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

    def namespace(self, i: int) -> str:
        return f"{self.prefix}{i}"

    def inside(self, i: int) -> str:
        return f"{self.inside_prefix}{i}"

    def port(self, i: int) -> str:
        return f"{self.port_prefix}{i}"

    def index(self, namespace: str) -> int | None:
        """i for a namespace named ``prefix + i``, else None."""
        rest = namespace[len(self.prefix) :] if namespace.startswith(self.prefix) else ""
        return int(rest) if rest.isdigit() and str(int(rest)) == rest else None

    def args(self) -> list[str]:
        out = []
        if self.prefix != SEED_PREFIX:
            out += ["--prefix", self.prefix]
        if self.bridge != "br0":
            out += ["--bridge", self.bridge]
        if self.uplink:
            out += ["--uplink", self.uplink]
        return out


def make_target(prefix: str = SEED_PREFIX, bridge: str = "br0", uplink: str = "", count: int = 1) -> Target:
    t = Target(
        prefix=options.name(prefix, "--prefix"),
        bridge=options.name(bridge, "--bridge"),
        uplink=options.name(uplink, "--uplink") if uplink else "",
    )
    last = count - 1
    for what, value in (("namespace", t.namespace(last)), ("interface", t.port(last)), ("interface", t.inside(last))):
        if len(value) > options.IFNAMSIZ:
            raise MultiipError(
                f"--prefix {prefix!r} with --count {count} gives the {what} name {value!r}, "
                f"over {options.IFNAMSIZ} characters; use a shorter prefix"
            )
    if t.bridge == t.uplink:
        raise MultiipError(f"--bridge and --uplink are both {t.bridge!r}")
    return t


@dataclass(frozen=True)
class Plan:
    """A whole setup: the target plus how namespaces get addresses and ports."""

    target: Target
    count: int = 20
    dhcp: str = "auto"
    address: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    port_lo: int = 1024
    port_hi: int = 65535
    bridge_tool: str = "ip"
    host_mode: str = "move"
    lease_timeout: int = 30
    tune_host: bool = False
    confirm: int = 0  # seconds to confirm reachability after the uplink moved; 0: do not ask

    @property
    def namespaces(self) -> list[str]:
        return [self.target.namespace(i) for i in range(self.count)]

    def static_address(self, i: int) -> str:
        assert self.address is not None
        return f"{self.address.ip + i}/{self.address.network.prefixlen}"

    def args(self) -> list[str]:
        """The options that reproduce this plan, for a script's header."""
        out = ["--count", str(self.count), *self.target.args(), "--dhcp", self.dhcp]
        if self.address is not None:
            out += ["--address", str(self.address)]
        if self.gateway is not None:
            out += ["--gateway", str(self.gateway)]
        if (self.port_lo, self.port_hi) != (1024, 65535):
            out += ["--port-range", f"{self.port_lo}-{self.port_hi}"]
        if self.bridge_tool != "ip":
            out += ["--bridge-tool", self.bridge_tool]
        if self.host_mode != "move":
            out += ["--host-dhcp"]
        if self.lease_timeout != 30:
            out += ["--lease-timeout", str(self.lease_timeout)]
        if self.tune_host:
            out += ["--tune-host"]
        if self.confirm:
            out += ["--confirm", str(self.confirm)]
        return out


def make_plan(
    prefix: str = SEED_PREFIX,
    bridge: str = "br0",
    uplink: str = "",
    count: int = 20,
    dhcp: str = "auto",
    address: str | None = None,
    gateway: str | None = None,
    port_range: str = "1024-65535",
    bridge_tool: str = "ip",
    host_dhcp: bool = False,
    lease_timeout: int = 30,
    tune_host: bool = False,
    confirm: int = 0,
) -> Plan:
    n = options.count(count)
    target = make_target(prefix, bridge, uplink, n)
    client = options.choice(dhcp, options.DHCP_CLIENTS, "--dhcp")
    first = options.interface_address(address) if address else None
    gw = options.ipv4(gateway, "--gateway") if gateway else None
    if first is not None and client != "none":
        raise MultiipError("--address gives static addresses: use it with --dhcp none")
    if gw is not None and first is None:
        raise MultiipError("--gateway goes with --address (DHCP gives the gateway otherwise)")
    if first is not None:
        options.address_block(first, n, gw)
    lo, hi = options.port_range(port_range)
    if host_dhcp and client == "none":
        raise MultiipError("--host-dhcp needs a DHCP client: pick one with --dhcp")
    options.seconds(lease_timeout, "--lease-timeout")
    if not 0 <= confirm <= 600:
        raise MultiipError(f"--confirm {confirm}: give 1..600 seconds (0: do not ask)")
    return Plan(
        target=target,
        count=n,
        dhcp=client,
        address=first,
        gateway=gw,
        port_lo=lo,
        port_hi=hi,
        bridge_tool=options.choice(bridge_tool, options.BRIDGE_TOOLS, "--bridge-tool"),
        host_mode="dhcp" if host_dhcp else "move",
        lease_timeout=int(lease_timeout),
        tune_host=tune_host,
        confirm=confirm,
    )
