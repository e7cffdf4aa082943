"""A setup as it is on the host now: its record (written by the setup script) and what the kernel says.

The record is the contract between the scripts and Python (templates/_target.sh.j2 writes it):
``setup.env`` (KEY=VALUE) and ``namespaces`` (NAME INSIDE PORT PIDFILE LEASEFILE per line, ``-`` for
none); with MODE=alias, ``addresses`` (one A/LEN per line, on the uplink) instead of namespaces. A
setup's namespaces (or addresses) are the ones its record names.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from multiip import execute
from multiip.errors import MultiipError
from multiip.plan import STATE_ROOT, Target

# One process per namespace reads its links/addresses, default route and port range.
# {dev}: empty in a namespace (all its links), 'dev "$0"' for one device (the uplink, with --mode alias).
_PROBE = (
    "ip -j address show {dev}; echo; ip -j -4 route show default; echo; ip -j -6 route show default; echo; "
    "cat /proc/sys/net/ipv4/ip_local_port_range"
)


@dataclass(frozen=True)
class Member:
    """One namespace of a setup, as its record names it."""

    name: str
    interface: str
    port: str
    pidfile: str | None
    leasefile: str | None


@dataclass(frozen=True)
class Record:
    env: dict[str, str]
    members: list[Member]
    addresses: list[str] = field(default_factory=list)  # MODE=alias: the setup's addresses on the uplink

    @property
    def client(self) -> str | None:
        return self.env.get("DHCP")

    @property
    def mode(self) -> str:
        return self.env.get("MODE", "bridge")


def _unreadable(path: Path) -> MultiipError:
    return MultiipError(
        f"the setups' records ({path.parent}) are readable by root only: run it as root (sudo multiip ...)"
    )


def read_record(target: Target) -> Record | None:
    """The setup's record, or None if there is none; an error (not None) if it cannot be read."""
    try:
        env_text = (target.state_dir / "setup.env").read_text()
        ns_text = (target.state_dir / "namespaces").read_text()
    except PermissionError:
        raise _unreadable(target.state_dir) from None
    except OSError:
        return None
    try:
        addresses_text = (target.state_dir / "addresses").read_text()
    except OSError:
        addresses_text = ""
    return parse_record(env_text, ns_text, addresses_text)


def owner(namespace: str) -> str:
    """The prefix of the setup whose record names this namespace."""
    if STATE_ROOT.exists() and not os.access(STATE_ROOT, os.R_OK | os.X_OK):
        raise _unreadable(STATE_ROOT / "namespaces")
    for path in sorted(STATE_ROOT.glob("*/namespaces")):
        try:
            names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        except PermissionError:
            raise _unreadable(path.parent) from None
        except OSError:
            continue
        if namespace in names:
            return path.parent.name
    raise MultiipError(
        f"exec: no setup on this host recorded a namespace {namespace}: see multiip status --prefix PREFIX, "
        "or use --all --prefix PREFIX"
    )


def parse_record(env_text: str, ns_text: str, addresses_text: str = "") -> Record:
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    members = []
    for line in ns_text.splitlines():
        fields = line.split()
        if len(fields) == 5:
            name, interface, port, pidfile, leasefile = fields
            members.append(Member(name, interface, port, None if pidfile == "-" else pidfile,
                                  None if leasefile == "-" else leasefile))  # fmt: skip
    return Record(env, members, addresses_text.split())


@dataclass
class NamespaceStatus:
    name: str
    interface: str
    mac: str | None = None
    ipv4: str | None = None  # "198.18.3.7/16"
    ipv6: str | None = None  # its first global IPv6 address that is ready (not tentative), "2001:db8::5/64"
    ipv6_pending: list[str] = field(default_factory=list)  # global IPv6 addresses in DAD ("tentative") or failed
    gateway: str | None = None
    gateway6: str | None = None  # its IPv6 default route's (a router's link-local address, from its advertisements)
    port_range: str | None = None  # "1024-65535"
    dhcp6_pid: int | None = None  # its DHCPv6 client's (dhclient -6), with --dhcp6
    dhcp6_alive: bool = False
    lease6_expires: str | None = None
    dhcp_client: str | None = None
    dhcp_pid: int | None = None
    dhcp_alive: bool = False
    lease_expires: str | None = None  # ISO 8601, UTC
    interfaces: list[dict[str, Any]] = field(default_factory=list)
    host: bool = False  # --mode alias: an address on the host's uplink, no namespace

    def source(self, family: int) -> str | None:
        """Its address of that family (4 or 6), "A/LEN", if it has one that is ready."""
        return self.ipv4 if family == 4 else self.ipv6


def _decode_all(text: str) -> tuple[list[Any], str]:
    """Consecutive JSON documents at the start of text, and what follows them."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text) or text[pos] not in "[{":
            return docs, text[pos:]
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)


def decode_probe(member: Member, out: str) -> NamespaceStatus:
    """A namespace's status from what _PROBE printed there."""
    st = NamespaceStatus(name=member.name, interface=member.interface)
    docs, rest = _decode_all(out)
    links = docs[0] if docs else []
    routes = docs[1] if len(docs) > 1 else []
    routes6 = docs[2] if len(docs) > 2 else []
    for link in links:
        if link.get("ifname") == "lo":
            continue
        infos = link.get("addr_info", [])
        v4 = [f"{a['local']}/{a['prefixlen']}" for a in infos if a.get("family") == "inet"]
        v6 = [a for a in infos if a.get("family") == "inet6" and a.get("scope") == "global" and not a.get("temporary")]
        ready = [f"{a['local']}/{a['prefixlen']}" for a in v6 if not (a.get("tentative") or a.get("dadfailed"))]
        pending = [f"{a['local']}/{a['prefixlen']}" + (" dadfailed" if a.get("dadfailed") else " tentative")
                   for a in v6 if a.get("tentative") or a.get("dadfailed")]  # fmt: skip
        st.interfaces.append({"name": link.get("ifname"), "mac": link.get("address"), "ipv4": v4, "ipv6": ready})
        if link.get("ifname") == st.interface:
            st.mac = link.get("address")
            st.ipv4 = v4[0] if v4 else None
            st.ipv6 = ready[0] if ready else None
            st.ipv6_pending = pending
    st.gateway = next((r.get("gateway") for r in routes if r.get("dst") == "default"), None)
    st.gateway6 = next((r.get("gateway") for r in routes6 if r.get("dst") == "default"), None)
    ports = rest.split()
    st.port_range = f"{ports[0]}-{ports[1]}" if len(ports) == 2 else None
    return st


def lease_expiry(client: str, text: str, written: float | None = None) -> str | None:
    """When a lease file's last lease expires (ISO 8601, UTC), for the clients whose files say so; written:
    when the file was (udhcpc's: our event script writes it as it gets the lease, its lease= seconds on)."""
    if client == "udhcpc":  # our event script's KEY=VALUE lines
        m = re.search(r"^lease=(\d+)$", text, re.M)
        return datetime.fromtimestamp(written + int(m[1]), UTC).isoformat() if m and written else None
    if client == "dhclient":
        found = re.findall(r"expire \d+ (\d+/\d+/\d+ \d+:\d+:\d+);", text)
        if found:
            return datetime.strptime(found[-1], "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC).isoformat()
    if client == "dhclient6":  # the last address's: its starts + max-life
        leases = re.findall(r"iaaddr [0-9a-f:]+ \{\s*starts (\d+);\s*preferred-life \d+;\s*max-life (\d+);", text)
        return datetime.fromtimestamp(int(leases[-1][0]) + int(leases[-1][1]), UTC).isoformat() if leases else None
    return None  # dhcpcd's lease file is the binary DHCP message


def _pid(path: str, client: str) -> tuple[int | None, bool]:
    try:
        pid = int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None, False
    try:
        alive = Path(f"/proc/{pid}/comm").read_text().strip() == client
    except OSError:
        alive = False
    return pid, alive


def namespace_status(member: Member, client: str | None, dhcp6: Path | None = None) -> NamespaceStatus:
    """What the kernel says of the namespace, and of its DHCP clients what their files say (dhcp6: the
    directory of its DHCPv6 client's, with --dhcp6)."""
    st = decode_probe(member, execute.capture(execute.in_netns(member.name, ["sh", "-c", _PROBE.format(dev="")])))
    if dhcp6 is not None:
        st.dhcp6_pid, st.dhcp6_alive = _pid(str(dhcp6 / f"{member.name}.pid6"), "dhclient")
        try:
            leases6 = (dhcp6 / f"{member.name}.leases6").read_text(errors="replace")
            st.lease6_expires = lease_expiry("dhclient6", leases6)
        except OSError:
            st.lease6_expires = None
    if client and client != "none":
        st.dhcp_client = client
        if member.pidfile:
            st.dhcp_pid, st.dhcp_alive = _pid(member.pidfile, client)
        if member.leasefile:
            lease = Path(member.leasefile)
            try:
                st.lease_expires = lease_expiry(client, lease.read_text(errors="replace"), lease.stat().st_mtime)
            except OSError:
                st.lease_expires = None
    return st


def present(record: Record) -> list[Member]:
    """The recorded namespaces that exist now."""
    return [m for m in record.members if Path("/run/netns", m.name).exists()]


def _probe_present(record: Record | None, client: str | None, state_dir: Path | None = None) -> list[NamespaceStatus]:
    """The status of each recorded namespace that exists, in the record's order, probed in parallel (with
    state_dir, its DHCPv6 client's files are read there)."""
    members = present(record) if record else []
    dhcp6 = state_dir if record and state_dir and record.env.get("DHCP6", "-") != "-" else None
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda m: namespace_status(m, client, dhcp6), members))


def alias_status(record: Record) -> list[NamespaceStatus]:
    """--mode alias: each recorded address as a row, present or not on the uplink (one probe, here: in the
    network namespace the setup was made in)."""
    made_in = record.env.get("NETNS")
    if made_in and made_in != str(Path("/proc/self/ns/net").stat().st_ino):
        raise MultiipError(
            f"setup {record.env.get('PREFIX')} (--mode alias) put its addresses on an uplink of another network "
            "namespace: run this there (e.g. multiip lab exec -- multiip ..., or nsenter --net=...)"
        )
    uplink = record.env.get("UPLINK", "")
    probe = ["sh", "-c", _PROBE.format(dev='dev "$0"'), uplink]
    st = decode_probe(Member(uplink, uplink, "-", None, None), execute.capture(probe))
    on_uplink = {a for link in st.interfaces for a in link["ipv4"] + link["ipv6"]}
    block = record.env.get("LOCAL_ROUTE")
    if block:  # --local-route: every address of the block is the host's while its local route is there
        family = "-6" if ":" in block else "-4"
        local = ["ip", "-j", family, "route", "show", "table", "local", "type", "local", block]
        routed = json.loads(execute.capture(local) or "[]")
        on_uplink = set(record.addresses) if routed else set()
    return [
        NamespaceStatus(
            name=record.env.get("LABEL") or uplink,
            interface=uplink,
            mac=st.mac,
            ipv4=a if a in on_uplink and ":" not in a else None,
            ipv6=a if a in on_uplink and ":" in a else None,
            gateway=st.gateway,
            gateway6=st.gateway6,
            port_range=st.port_range,
            host=True,
        )
        for a in record.addresses
    ]


def status(target: Target) -> dict[str, Any]:
    record = read_record(target)
    client = record.client if record else None
    if record and record.mode == "alias":
        rows = alias_status(record)
    else:
        rows = _probe_present(record, client, target.state_dir)
    env = record.env if record else {}
    return {
        "prefix": target.prefix,
        "mode": env.get("MODE", "bridge") if record else None,
        "bridge": env.get("BRIDGE", target.bridge) if env.get("MODE", "bridge") == "bridge" else None,
        "uplink": env.get("UPLINK", target.uplink) or None,
        "dhcp": client,
        "family": env.get("FAMILY", "4") if record else None,  # 4, 6 or dual: the namespaces' addresses
        "dhcp6": env.get("DHCP6", "-") if record else None,  # their DHCPv6 client (-: none)
        "manager": env.get("MANAGER"),  # what manages the uplink: none, NetworkManager, systemd-networkd, a client
        "state": str(target.state_dir) if record else None,
        "namespaces": [asdict(r) for r in rows],
    }


def addressed(target: Target, family: int | None = None) -> list[NamespaceStatus]:
    """Each recorded namespace that exists, in the record's order; an error if there is none, or if one has
    no address of the family (4 or 6; None: the setup's, IPv4 where it has both) ready (yet)."""
    record = read_record(target)
    rows = alias_status(record) if record and record.mode == "alias" else _probe_present(record, None)
    if not rows:
        raise MultiipError(
            f"no setup with prefix {target.prefix} on this host: multiip status --prefix {target.prefix}"
        )
    if family is None:
        family = 4 if any(r.ipv4 for r in rows) or not any(r.ipv6 for r in rows) else 6
    missing = [r.name for r in rows if not r.source(family)]
    if missing and rows[0].host:
        raise MultiipError(
            f"{len(missing)} of the setup's IPv{family} addresses are not on {rows[0].interface}: see multiip status "
            f"--prefix {target.prefix}; multiip run again puts them back"
        )
    if missing:
        pending = [p for r in rows for p in r.ipv6_pending] if family == 6 else []
        raise MultiipError(
            f"no IPv{family} address ready in {', '.join(missing)}"
            + (f" ({', '.join(pending[:3])})" if pending else "")
            + f": see multiip status --prefix {target.prefix}"
        )
    return rows
