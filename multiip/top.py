"""``multiip top``: every source IP of a setup, live: its TCP sockets by state and its local ports in use.

In a namespace (modes bridge, macvlan, ipvlan) one refresh reads, with this thread setns()-ed into the
namespace and back (one process visits every namespace in turn; nothing is held open between refreshes,
so a namespace ``down`` removes is never kept alive by this):

- counters the kernel keeps per network namespace, whatever the number of sockets: ``/proc/net/snmp``
  (``Tcp: CurrEstab``, which is ESTABLISHED + CLOSE-WAIT, and the segment counts), ``/proc/net/sockstat``
  and ``sockstat6`` (``TCP: inuse N ... tw N``: the sockets in the kernel's hash tables, and the
  TIME-WAIT buckets) and ``ip_local_port_range``; ``/proc/thread-self/net`` follows the thread's namespace;
- two small netlink dumps: the listening sockets (sock_diag asking for LISTEN only: the kernel walks
  its listening hash only) and the namespace's IPv4 address (rtnetlink);
- for the state split, one sock_diag dump (NETLINK_SOCK_DIAG, inet_diag_req_v2, TCP) of the
  rarely-populated states only, SYN-SENT and the closing ones: the kernel sends one message per such
  socket, so the established ones are never dumped. AF_INET6 too, when the namespace has IPv6 sockets
  besides listeners (a dual-stack client's v4-mapped ones).

The counters alone give, exactly and every refresh: TIME-WAIT buckets, ports in use, ESTABLISHED +
CLOSE-WAIT, and SYN-SENT + FIN-WAIT-1/2 + CLOSING + LAST-ACK (in use, less CurrEstab, less listeners).
Only the split of those sums needs the dump, and the dump is the one expensive part: to find a
namespace's sockets in those states the kernel walks its whole table of connections, which every
namespace shares (unless made with ``net.ipv4.tcp_child_ehash_entries``), so its cost grows with every
TCP socket on the host, not with what it finds. Measured on this 2-core machine: 35 ms a dump with
200,000 sockets on the host, 70-95 ms with 400,000; about 0.4 s per namespace, then, with a million
connections whose both ends are on the host (the lab). So the ``Sampler`` dumps a namespace only when
its split can have changed since its last dump: no socket changes state without a segment sent or
received, or a socket added, removed or turned into a TIME-WAIT bucket; while the namespace's segment
counts, sockets in use, TIME-WAIT buckets and listeners stay as they were, its last split is exact (idle
held connections cost no dump at all). Namespaces whose split moved are dumped oldest first within a
budget (``SPLIT_SHARE`` of the time); the others get the exact sums split as their last dump found, and
are marked ``estimated``. ``multiip top``'s first refresh may dump for ``FIRST_BUDGET`` seconds (every
namespace, unless the host holds hundreds of thousands of sockets): its table comes at once, the rest
split by the refreshes after it.

``ports_in_use`` counts the TCP sockets that hold a local port: those in the kernel's hash tables (any
state but TIME-WAIT, listeners included; v4 and v6) plus the TIME-WAIT buckets, ``inuse + tw``. A socket
only bound (not yet connecting) is not among them, and sockets that share a port (connect() without
bind() can use one port towards several servers) count once each. ``ports`` is the namespace's port range.

With ``--mode alias`` the addresses are on the host's uplink, in this namespace, and the kernel counts
nothing per address: one sock_diag dump of the setup's addresses' sockets (all states; an inet_diag
bytecode filter on the source address, INET_DIAG_BC_S_COND for each, ORed) counts them per address. That
one costs a dump of those addresses' sockets, every one, established included (plus the walk of the
table), so it is rationed by the same budget (rows from an earlier dump are ``estimated``). ``ports``
there is every port an address can bind, 1024-65535 and the host's range: ``hold`` binds the ports
outside the host's range, k6 & co. get the range.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from multiip import options
from multiip.errors import MultiipError
from multiip.plan import Target
from multiip.state import Member, Record, present, read_record

# TCP states, as the kernel numbers them (include/net/tcp_states.h)
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING = range(
    1, 12
)
CLOSING_STATES = (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK, CLOSE_WAIT)


def states_mask(*states: int) -> int:
    return sum(1 << s for s in set(states))


RARE = states_mask(SYN_SENT, *CLOSING_STATES)  # what a namespace's dump asks for
HOLDING = states_mask(ESTABLISHED, SYN_SENT, TIME_WAIT, LISTEN, *CLOSING_STATES)  # alias: all that hold a port
TW_TIMER = 3  # idiag_timer of a TIME-WAIT bucket; its idiag_state is its substate (TIME-WAIT or FIN-WAIT-2)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP, INET_DIAG_BC_S_COND = 1, 7
RTM_NEWADDR, RTM_GETADDR = 20, 22
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3
RT_SCOPE_HOST = 254

_HEADER = struct.Struct("=IH")  # nlmsghdr's length and type
_DIAG = struct.Struct("=16xBBB5x4s8x4s")  # inet_diag_msg: family, state, timer, source (IPv4 / last 4 of IPv6)
READ_SIZE = 1 << 16  # a netlink read's buffer: the kernel fills at most 32 KiB per read of a dump
MAX_SOURCES = 3000  # addresses per bytecode: 20 bytes each, within a netlink attribute's 64 KiB
SPLIT_SHARE = 0.2  # the share of the time the state-split dumps may take, after the first refresh
FIRST_BUDGET = 0.5  # seconds the first refresh of `multiip top` may dump for (a dump started runs to its end)
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


# -- the kernel's text -------------------------------------------------------------------------------


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/snmp``: each protocol's header line and value line, e.g. ``{"Tcp": {"CurrEstab": 12, ...}}``."""
    out: dict[str, dict[str, int]] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if header is not None and header[0] == fields[0]:
            out[fields[0].rstrip(":")] = {k: int(v) for k, v in zip(header[1:], fields[1:], strict=False)}
            header = None
        else:
            header = fields
    return out


def parse_sockstat(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/sockstat`` (or ``sockstat6``): ``{"TCP": {"inuse": 5, "orphan": 0, "tw": 2, ...}, ...}``."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        out[name.strip()] = {k: int(v) for k, v in zip(words[::2], words[1::2], strict=False)}
    return out


def port_range_size(text: str) -> int:
    """How many ports ``ip_local_port_range`` ("1024\\t65535") holds."""
    lo, hi = (int(x) for x in text.split()[:2])
    return max(hi - lo + 1, 0)


def alias_ports(text: str) -> int:
    """--mode alias: the ports an address can have, 1024-65535 and the host's range (which may start lower)."""
    lo, hi = (int(x) for x in text.split()[:2])
    first, last = options.NAMESPACE_PORTS
    if hi < first or lo > last:
        return last - first + 1 + port_range_size(text)
    return max(hi, last) - min(lo, first) + 1


# -- netlink -----------------------------------------------------------------------------------------


def _nlmsg(kind: int, payload: bytes, seq: int = 1) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload


def _nlattr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + bytes(-size % 4)


def diag_request(family: int, states: int, bytecode: bytes = b"") -> bytes:
    """A sock_diag dump request (SOCK_DIAG_BY_FAMILY, inet_diag_req_v2) for the TCP sockets of a family in
    these states (a mask of 1 << state), optionally filtered by an inet_diag bytecode."""
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, states) + bytes(48)  # 48: inet_diag_sockid
    if bytecode:
        req += _nlattr(INET_DIAG_REQ_BYTECODE, bytecode)
    return _nlmsg(SOCK_DIAG_BY_FAMILY, req)


def source_bytecode(addresses: Sequence[str]) -> bytes:
    """inet_diag bytecode that accepts a socket whose source is one of these IPv4 addresses (an IPv6
    socket's v4-mapped one too), as ``ss`` compiles ``src A or src B``: for each, an S_COND that on a
    match goes on to a JMP to the end (accept) and otherwise skips it to the next S_COND; the last one's
    "no" jumps past the end (reject). At most MAX_SOURCES addresses: jumps are 16-bit."""
    if not 0 < len(addresses) <= MAX_SOURCES:
        raise ValueError(f"{len(addresses)} addresses: give 1..{MAX_SOURCES}")
    conds = [
        # inet_diag_bc_op {code, yes, no}, inet_diag_hostcond {family, prefix_len, port (-1: any)}, address
        struct.pack("=BBHBBxxi", INET_DIAG_BC_S_COND, 16, 20, socket.AF_INET, 32, -1) + socket.inet_aton(a)
        for a in addresses
    ]
    out = b""
    for i, cond in enumerate(conds):
        out += cond
        rest = 20 * (len(conds) - i - 1) - 4  # what follows this cond's JMP
        if rest > 0:
            out += struct.pack("=BBH", INET_DIAG_BC_JMP, 4, 4 + rest)
    return out


def _check(data: bytes | bytearray | memoryview, offset: int, length: int) -> None:
    """An NLMSG_ERROR or NLMSG_DONE carries an int: a negative errno is the dump's failure."""
    if length >= 20:
        (code,) = struct.unpack_from("=i", data, offset + 16)
        if code < 0:
            raise OSError(-code, os.strerror(-code))


def tally(data: bytes | bytearray | memoryview, counts: Counter[tuple[bytes, int, bool]]) -> bool:
    """Count one netlink read of sock_diag replies by (IPv4 source, state, is a TIME-WAIT bucket); True once
    the dump is done. A failed dump raises OSError."""
    offset, end = 0, len(data)
    while offset + 16 <= end:
        length, kind = _HEADER.unpack_from(data, offset)
        if length < 16:
            raise OSError(0, f"a netlink message of {length} bytes")
        if kind == NLMSG_DONE:
            _check(data, offset, length)
            return True
        if kind == NLMSG_ERROR:
            _check(data, offset, length)
        elif kind == SOCK_DIAG_BY_FAMILY and length >= _DIAG.size:
            family, state, timer, v4, mapped = _DIAG.unpack_from(data, offset)
            counts[(v4 if family == socket.AF_INET else mapped, state, timer == TW_TIMER)] += 1
        offset += (length + 3) & ~3
    return False


def parse_addresses(data: bytes | bytearray | memoryview, found: list[tuple[str, str]]) -> bool:
    """The IPv4 addresses of one netlink read of RTM_NEWADDR replies as (label, address), but for the
    scope-host ones (127.0.0.1); True once the dump is done."""
    offset, end = 0, len(data)
    while offset + 16 <= end:
        length, kind = _HEADER.unpack_from(data, offset)
        if length < 16:
            raise OSError(0, f"a netlink message of {length} bytes")
        if kind == NLMSG_DONE:
            _check(data, offset, length)
            return True
        if kind == NLMSG_ERROR:
            _check(data, offset, length)
        elif kind == RTM_NEWADDR and length >= 24:
            family, _, _, scope = struct.unpack_from("=BBBB", data, offset + 16)
            attrs: dict[int, bytes] = {}
            at = offset + 24
            while at + 4 <= offset + length:
                size, key = struct.unpack_from("=HH", data, at)
                if size < 4:
                    break
                attrs[key] = bytes(data[at + 4 : at + size])
                at += (size + 3) & ~3
            address = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if family == socket.AF_INET and scope != RT_SCOPE_HOST and address and len(address) == 4:
                label = attrs.get(IFA_LABEL, b"").split(b"\0")[0].decode(errors="replace")
                found.append((label, socket.inet_ntoa(address)))
        offset += (length + 3) & ~3
    return False


class Netlink:
    """A netlink socket of one protocol, made in the namespace this thread is in (it stays that one's)."""

    def __init__(self, protocol: int, buf: bytearray | None = None) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.buf = buf if buf is not None else bytearray(READ_SIZE)

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def dump(self, request: bytes, read: Callable[[memoryview], bool]) -> None:
        self.sock.send(request)
        view = memoryview(self.buf)
        while True:
            n = self.sock.recv_into(self.buf, 0, socket.MSG_TRUNC)
            if n > len(self.buf):
                raise OSError(0, f"a netlink read of {n} bytes, more than {len(self.buf)}")
            if n == 0 or read(view[:n]):
                return

    def diag(self, family: int, states: int, bytecode: bytes = b"") -> Counter[tuple[bytes, int, bool]]:
        counts: Counter[tuple[bytes, int, bool]] = Counter()
        self.dump(diag_request(family, states, bytecode), lambda data: tally(data, counts))
        return counts


def by_state(counts: Counter[tuple[bytes, int, bool]]) -> Counter[tuple[int, bool]]:
    out: Counter[tuple[int, bool]] = Counter()
    for (_, state, bucket), n in counts.items():
        out[(state, bucket)] += n
    return out


def addresses_here(route: Netlink) -> list[tuple[str, str]]:
    """The IPv4 addresses of the namespace this thread is in, as (label, address)."""
    found: list[tuple[str, str]] = []
    request = _nlmsg(RTM_GETADDR, struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0))  # ifaddrmsg
    route.dump(request, lambda data: parse_addresses(data, found))
    return found


# -- one namespace ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    """A namespace's counters, read in it."""

    curr_estab: int  # ESTABLISHED + CLOSE-WAIT, v4 and v6 (/proc/net/snmp)
    segments: tuple[int, int]  # InSegs, OutSegs
    inuse: int  # TCP sockets in the hash tables, v4
    inuse6: int  # and v6 (sockstat6)
    tw: int  # TIME-WAIT buckets, v4 and v6
    listen: int  # listening sockets, v4
    listen6: int
    ports: int  # the port range's size
    ip: str | None = None

    @property
    def key(self) -> tuple[int, ...]:
        """What cannot stay the same when a socket changes state (see the module's docstring)."""
        return (self.curr_estab, *self.segments, self.inuse, self.inuse6, self.tw, self.listen, self.listen6)

    @property
    def others(self) -> int:
        """SYN-SENT + FIN-WAIT-1 + FIN-WAIT-2 + CLOSING + LAST-ACK (sockets, not TIME-WAIT buckets)."""
        return max(self.inuse + self.inuse6 - self.listen - self.listen6 - self.curr_estab, 0)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_counters(diag: Netlink, route: Netlink | None, interface: str = "") -> Counters:
    """The counters of the namespace this thread is in (``route``: also its IPv4 address, preferring
    the one on ``interface``)."""
    tcp = parse_snmp(_read("/proc/thread-self/net/snmp")).get("Tcp", {})
    v4 = parse_sockstat(_read("/proc/thread-self/net/sockstat")).get("TCP", {})
    try:
        v6 = parse_sockstat(_read("/proc/thread-self/net/sockstat6")).get("TCP6", {})
    except FileNotFoundError:  # no IPv6 in this kernel
        v6 = {}
    listening = by_state(diag.diag(socket.AF_INET, states_mask(LISTEN)))
    listening6 = by_state(diag.diag(socket.AF_INET6, states_mask(LISTEN))) if v6.get("inuse") else Counter()
    ip = None
    if route is not None:
        found = addresses_here(route)
        ip = next((a for label, a in found if label == interface), found[0][1] if found else None)
    return Counters(
        curr_estab=tcp.get("CurrEstab", 0),
        segments=(tcp.get("InSegs", 0), tcp.get("OutSegs", 0)),
        inuse=v4.get("inuse", 0),
        inuse6=v6.get("inuse", 0),
        tw=v4.get("tw", 0),
        listen=sum(listening.values()),
        listen6=sum(listening6.values()),
        ports=port_range_size(_read("/proc/sys/net/ipv4/ip_local_port_range")),
        ip=ip,
    )


@dataclass(frozen=True)
class Split:
    """What one dump of a namespace's rare states found, with the counters it was made with."""

    key: tuple[int, ...]
    curr_estab: int
    syn_sent: int
    closing: int  # FIN-WAIT-1/2, CLOSING, LAST-ACK: sockets
    close_wait: int
    fin_wait2_buckets: int  # FIN-WAIT-2 held by TIME-WAIT buckets (sockstat counts them as tw)
    at: float


def split_of(c: Counters, counts: Counter[tuple[int, bool]], at: float) -> Split:
    return Split(
        key=c.key,
        curr_estab=c.curr_estab,
        syn_sent=counts[(SYN_SENT, False)],
        closing=sum(counts[(s, False)] for s in (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK)),
        close_wait=counts[(CLOSE_WAIT, False)],
        fin_wait2_buckets=counts[(FIN_WAIT2, True)],
        at=at,
    )


def dump_split(diag: Netlink, c: Counters, at: float) -> Split:
    counts = by_state(diag.diag(socket.AF_INET, RARE))
    if c.inuse6 > c.listen6:  # IPv6 sockets besides listeners: a second walk
        counts += by_state(diag.diag(socket.AF_INET6, RARE))
    return split_of(c, counts, at)


@dataclass(frozen=True)
class Row:
    name: str
    ip: str | None
    established: int
    syn_sent: int
    time_wait: int
    closing: int  # FIN-WAIT-1/2, CLOSING, LAST-ACK, CLOSE-WAIT
    ports_in_use: int
    ports: int
    estimated: bool = False  # the state split is from an earlier dump (the sums are exact)


def row_of(name: str, c: Counters, split: Split | None) -> Row:
    """A namespace's row from its counters and its last split: exact when the split was made with these
    counters; else the split of the exact sums estimated from it."""
    close_wait = min(split.close_wait if split else 0, c.curr_estab)
    buckets = min(split.fin_wait2_buckets if split else 0, c.tw)
    others = c.others
    if split is not None and split.key == c.key:
        syn_sent, closing = split.syn_sent, split.closing
    elif split is not None and split.syn_sent + split.closing:
        syn_sent = round(others * split.syn_sent / (split.syn_sent + split.closing))
        closing = others - syn_sent
    else:  # no history: more connections than before means connecting, fewer means closing
        growing = split is None or c.curr_estab >= split.curr_estab
        syn_sent, closing = (others, 0) if growing else (0, others)
    return Row(
        name=name,
        ip=c.ip,
        established=c.curr_estab - close_wait,
        syn_sent=syn_sent,
        time_wait=c.tw - buckets,
        closing=closing + close_wait + buckets,
        ports_in_use=c.inuse + c.inuse6 + c.tw,
        ports=c.ports,
        estimated=split is None or split.key != c.key,
    )


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        hint = ": run it as root (sudo multiip top ...)" if err == 1 else ""
        raise MultiipError(f"cannot enter a network namespace: {os.strerror(err)}{hint}")


def in_namespace(name: str, home: int, read: Callable[[], T]) -> T | None:
    """``read()`` run with this thread in the named network namespace, then back in ``home`` (a Ctrl-C
    waits until it is back); None if there is no such namespace (any more)."""
    try:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        _setns(fd)
        try:
            return read()
        finally:
            _setns(home)
    finally:
        os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


# -- the sampler -------------------------------------------------------------------------------------


def _sum(rows: Sequence[Row]) -> dict[str, int]:
    keys = ("established", "syn_sent", "time_wait", "closing", "ports_in_use", "ports")
    return {k: sum(getattr(r, k) for r in rows) for k in keys}


class Sampler:
    """Samples a setup again and again, keeping each namespace's last state split (see the module's
    docstring): the first sample dumps for ``first`` seconds (every namespace's split by default), later
    ones ration the dumps to ``share`` of the time (a dump past the budget is paid back by the next)."""

    def __init__(self, share: float = SPLIT_SHARE, first: float = math.inf) -> None:
        self.share = share
        self.splits: dict[str, Split] = {}
        self.alias: tuple[tuple[int, ...], dict[bytes, Counter[tuple[int, bool]]]] | None = None
        self.credit = first  # seconds of dumps allowed now: the first refresh's, then earned
        self.last: float | None = None
        self.buf = bytearray(READ_SIZE)  # shared by the netlink sockets, one at a time

    def _refill(self, now: float) -> None:
        if self.last is not None:
            self.credit = min(self.credit, 0.0) + self.share * (now - self.last)
        self.last = now

    def _may_dump(self) -> bool:
        return self.credit > 0

    def _spent(self, since: float) -> None:
        self.credit -= time.monotonic() - since

    def sample(self, record: Record) -> dict[str, Any]:
        """One refresh: ``{"time", "prefix", "mode", "sample_seconds", "split_dumps", "namespaces": [rows],
        "total"}``."""
        t0 = time.monotonic()
        self._refill(t0)
        rows, dumps = self._alias(record) if record.mode == "alias" else self._namespaces(record)
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "prefix": record.env.get("PREFIX"),
            "mode": record.mode,
            "sample_seconds": round(time.monotonic() - t0, 6),
            "split_dumps": dumps,
            "namespaces": [asdict(r) for r in rows],
            "total": _sum(rows),
        }

    def _namespaces(self, record: Record) -> tuple[list[Row], int]:
        members = present(record)
        by_age = sorted(members, key=lambda m: self.splits[m.name].at if m.name in self.splits else -math.inf)
        rows: dict[str, Row] = {}
        dumps = 0
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for m in by_age:
                seen = in_namespace(m.name, home, functools.partial(self._visit, m))
                if seen is None:
                    continue
                counters, fresh = seen
                if fresh is not None:
                    self.splits[m.name] = fresh
                    dumps += 1
                rows[m.name] = row_of(m.name, counters, self.splits.get(m.name))
        finally:
            os.close(home)
        for gone in set(self.splits) - set(rows):
            del self.splits[gone]
        return [rows[m.name] for m in members if m.name in rows], dumps

    def _visit(self, member: Member) -> tuple[Counters, Split | None]:
        """In a namespace: its counters, and a new split if its last one is out of date and the budget allows."""
        with Netlink(NETLINK_SOCK_DIAG, self.buf) as diag, Netlink(socket.NETLINK_ROUTE, self.buf) as route:
            c = read_counters(diag, route, member.interface)
            old = self.splits.get(member.name)
            if (old is None or old.key != c.key) and self._may_dump():
                t = time.monotonic()
                new = dump_split(diag, c, t)
                self._spent(t)
                return c, new
            return c, None

    def _alias(self, record: Record) -> tuple[list[Row], int]:
        check_alias_here(record)
        ips = [a.split("/")[0] for a in record.addresses]
        name = record.env.get("LABEL") or record.env.get("UPLINK", "")
        ports = alias_ports(_read("/proc/sys/net/ipv4/ip_local_port_range"))
        with Netlink(NETLINK_SOCK_DIAG, self.buf) as diag:
            c = read_counters(diag, None)
            dumps = 0
            if self.alias is None or (self.alias[0] != c.key and self._may_dump()):
                t = time.monotonic()
                self.alias = (c.key, count_sources(diag, ips, c.inuse6 > c.listen6))
                self._spent(t)
                dumps = 1
        key, found = self.alias
        rows = []
        for ip in ips:
            n = found.get(socket.inet_aton(ip), Counter())
            rows.append(
                Row(
                    name=name,
                    ip=ip,
                    established=n[(ESTABLISHED, False)],
                    syn_sent=n[(SYN_SENT, False)],
                    time_wait=n[(TIME_WAIT, True)],
                    closing=sum(v for (s, _), v in n.items() if s in CLOSING_STATES),
                    ports_in_use=sum(n.values()),
                    ports=ports,
                    estimated=key != c.key,
                )
            )
        return rows, dumps


def count_sources(diag: Netlink, ips: Sequence[str], ipv6: bool) -> dict[bytes, Counter[tuple[int, bool]]]:
    """--mode alias: the sockets of these source addresses by (state, is a TIME-WAIT bucket), from dumps in
    this namespace (a dump per MAX_SOURCES addresses and family)."""
    out: dict[bytes, Counter[tuple[int, bool]]] = {}
    for first in range(0, len(ips), MAX_SOURCES):
        code = source_bytecode(ips[first : first + MAX_SOURCES])
        for family in (socket.AF_INET, socket.AF_INET6) if ipv6 else (socket.AF_INET,):
            for (src, state, bucket), n in diag.diag(family, HOLDING, code).items():
                out.setdefault(src, Counter())[(state, bucket)] += n
    return out


def check_alias_here(record: Record) -> None:
    made_in = record.env.get("NETNS")
    if made_in and made_in != str(Path("/proc/thread-self/ns/net").stat().st_ino):
        raise MultiipError(
            f"setup {record.env.get('PREFIX')} (--mode alias) put its addresses on an uplink of another network "
            "namespace: run this there (e.g. multiip lab exec -- multiip top ..., or nsenter --net=...)"
        )


def sample(record: Record, sampler: Sampler | None = None) -> dict[str, Any]:
    """One refresh of a setup (see ``Sampler.sample``). Without a sampler: a first refresh, which dumps
    every namespace's state split (the exact, most costly one); with one, what ``multiip top`` refreshes."""
    return (sampler or Sampler()).sample(record)


def cost(record: Record, refreshes: int = 5, interval: float = 1.0) -> dict[str, Any]:
    """What refreshes cost, for the benchmark: ``multiip top``'s first, a first that dumps every split,
    and ``refreshes`` more, ``interval`` apart as in ``multiip top``, each with its seconds and dumps."""
    top_first = Sampler(first=FIRST_BUDGET).sample(record)
    sampler = Sampler()
    first = sampler.sample(record)
    later = []
    for _ in range(refreshes):
        time.sleep(interval)
        later.append(sampler.sample(record))
    return {
        "namespaces": len(first["namespaces"]),
        "ports_in_use": first["total"]["ports_in_use"],
        "established": first["total"]["established"],
        "top_first_seconds": top_first["sample_seconds"],
        "top_first_split_dumps": top_first["split_dumps"],
        "first_seconds": first["sample_seconds"],
        "first_split_dumps": first["split_dumps"],
        "refresh_seconds": [s["sample_seconds"] for s in later],
        "refresh_split_dumps": [s["split_dumps"] for s in later],
    }


def watch(target: Target, interval: float, count: int | None, show: Callable[[dict[str, Any]], None]) -> None:
    """Sample the setup every ``interval`` seconds (``count`` times, or until interrupted), each sample to
    ``show``. The record is read again each time: a setup made again or taken down shows as it is."""
    sampler = Sampler(first=FIRST_BUDGET)
    done = 0
    due = time.monotonic()
    while True:
        record = read_record(target)
        if record is None and done:
            raise MultiipError(f"setup {target.prefix} is no longer on this host (taken down?)")
        if record is None:
            raise MultiipError(
                f"no setup with prefix {target.prefix} on this host: multiip status --prefix {target.prefix}"
            )
        try:
            sampled = sampler.sample(record)
        except OSError as e:  # a socket dump the kernel failed (or refused)
            raise MultiipError(f"reading the sockets of {target.prefix} failed: {e.strerror or e}; try again") from None
        show(sampled)
        done += 1
        if count is not None and done >= count:
            return
        due = max(due + interval, time.monotonic())  # after a refresh longer than the interval: the next at once
        time.sleep(max(due - time.monotonic(), 0.0))
