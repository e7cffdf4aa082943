"""What a setup is: validated options and the names every piece gets. Templates read it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from multiip import options
from multiip.errors import MultiipError

STATE_ROOT = Path("/run/multiip")  # each setup's record lives in STATE_ROOT/<prefix>; the scripts are told
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

    def args(self) -> list[str]:
        return options.args(options.TARGET, vars(self))


def make_target(prefix: str = SEED_PREFIX, bridge: str = "br0", uplink: str = "", count: int = 1) -> Target:
    t = Target(
        prefix=options.name(prefix, "--prefix"),
        bridge=options.name(bridge, "--bridge"),
        uplink=options.name(uplink, "--uplink") if uplink else "",
    )
    last = count - 1
    for what, value in (
        ("namespace", f"{t.prefix}{last}"),
        ("interface", f"{t.port_prefix}{last}"),
        ("interface", f"{t.inside_prefix}{last}"),
    ):
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
    """A whole setup: the target plus how namespaces get addresses and ports. Field names are the options'."""

    target: Target
    count: int
    mode: str
    dhcp: str
    address: ipaddress.IPv4Interface | None
    addresses: str | None  # --addresses as given, read from its file: "A,B/LEN,..."
    gateway: ipaddress.IPv4Address | None
    port_range: tuple[int, int] | None  # None: the default in namespaces; with --mode alias, leave the host's
    bridge_tool: str
    host_dhcp: bool
    lease_timeout: int
    tune_host: bool
    confirm: int  # seconds to confirm reachability after the uplink moved; 0: do not ask

    def values(self) -> dict[str, Any]:
        """Every option's value, by option name."""
        return {**vars(self.target), **{k: v for k, v in vars(self).items() if k != "target"}}

    def args(self) -> list[str]:
        """The options that reproduce this plan, for a script's header."""
        return options.args(options.SETUP, self.values())

    @property
    def ports(self) -> tuple[int, int]:
        """The port range set in each namespace."""
        return self.port_range or options.NAMESPACE_PORTS

    @property
    def static(self) -> list[str]:
        """The static addresses, one per namespace (or alias): "A/LEN", or "A" where the uplink's subnet gives LEN."""
        if self.address is not None:
            return [f"{self.address.ip + i}/{self.address.network.prefixlen}" for i in range(self.count)]
        return self.addresses.split(",") if self.addresses else []


def _read_text(path: str) -> str:
    return Path(path).read_text()


def make_plan(**given: Any) -> Plan:
    """A validated Plan from option values by name (options.SETUP); options not given take their default."""
    unknown = set(given) - {s.name for s in options.SETUP}
    if unknown:
        raise TypeError(f"unknown options: {sorted(unknown)}")
    v = {s.name: given.get(s.name, s.default) for s in options.SETUP}
    v = {k: x.value if isinstance(x, Enum) else x for k, x in v.items()}
    mode = options.choice(v["mode"], options.Mode, "--mode")
    n = options.count(int(v["count"]), mode)
    client = options.choice(v["dhcp"], options.Dhcp, "--dhcp")
    first = options.interface_address(v["address"]) if v["address"] else None
    listed = options.address_list(v["addresses"], _read_text) if v["addresses"] else None
    gw = options.ipv4(v["gateway"], "--gateway") if v["gateway"] else None
    if first is not None and listed is not None:
        raise MultiipError("--address and --addresses both give the static addresses: use one")
    if listed is not None:
        if n not in (len(listed), options.SETUP_DEFAULTS["count"]):
            raise MultiipError(f"--count {n} but --addresses lists {len(listed)}: one per namespace; drop --count")
        n = options.count(len(listed), mode)
    target = make_target(v["prefix"], v["bridge"], v["uplink"], n)
    static = first is not None or listed is not None
    if static and client not in ("auto", "none"):
        raise MultiipError(f"--dhcp {client} and static addresses (--address/--addresses): choose one")
    if static:
        client = "none"
    if mode == "alias":
        if not static:
            raise MultiipError(
                "--mode alias puts static addresses on the uplink: give them with --addresses LIST|@FILE or --address"
            )
        if gw is not None or v["tune_host"]:
            raise MultiipError("--mode alias has no namespaces: --gateway and --tune-host are for namespace modes")
    if gw is not None and not static:
        raise MultiipError("--gateway goes with --address or --addresses (DHCP gives the gateway otherwise)")
    if first is not None:
        options.address_block(first, n, gw)
    if v["host_dhcp"] and client == "none":
        raise MultiipError("--host-dhcp needs a DHCP client: pick one with --dhcp")
    if mode != "bridge" and (v["host_dhcp"] or options.text(v["bridge_tool"]) != "ip" or v["confirm"]):
        raise MultiipError(
            f"--mode {mode} leaves the uplink alone: --host-dhcp, --bridge-tool and --confirm are for --mode bridge"
        )
    if mode == "ipvlan" and client in ("dhclient", "dhcpcd"):
        raise MultiipError(
            "--mode ipvlan shares one MAC: its DHCP needs a client id and broadcast replies per namespace, which "
            "multiip gives udhcpc: use --dhcp udhcpc (or auto)"
        )
    options.seconds(v["lease_timeout"], "--lease-timeout")
    if not 0 <= v["confirm"] <= 600:
        raise MultiipError(f"--confirm {v['confirm']}: give 1..600 seconds (0: do not ask)")
    return Plan(
        target=target,
        count=n,
        mode=mode,
        dhcp=client,
        address=first,
        addresses=",".join(str(a) for a in listed) if listed else None,
        gateway=gw,
        port_range=options.port_range(v["port_range"]) if v["port_range"] else None,
        bridge_tool=options.choice(v["bridge_tool"], options.BridgeTool, "--bridge-tool"),
        host_dhcp=bool(v["host_dhcp"]),
        lease_timeout=int(v["lease_timeout"]),
        tune_host=bool(v["tune_host"]),
        confirm=int(v["confirm"]),
    )
