"""``multiip hold``: open and hold TCP connections to one server from every namespace of a setup.

Each namespace's share is split over worker processes (``multiip.holdworker``) started inside that
namespace, as many as the open-file limit needs. This module plans, checks, starts, watches and stops
them; a worker that dies or reports a fatal error stops the whole run.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from multiip import execute, options, state
from multiip.errors import MultiipError
from multiip.limits import fd_limit
from multiip.plan import Target

KERNEL_BYTES_PER_SOCKET = 3.6 * 1024  # measured here: one TCP socket with nothing queued
WORKER_BYTES_PER_SOCKET = 0.7 * 1024  # measured (make bench): the hold workers' own PSS per held connection
WORKER_BASE_BYTES = 11.6 * 2**20  # measured: a worker's RSS before its first socket
FD_MARGIN = 64  # files a worker keeps for itself (python, pipes, epoll)


@dataclass(frozen=True)
class Server:
    host: options.IP
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.host.version == 6 else f"{self.host}:{self.port}"


def parse_server(text: str) -> Server:
    return Server(*options.server(text))


@dataclass
class Share:
    """One namespace's part (or, with --mode alias, one address's on the host): the ports its workers bind."""

    namespace: str  # the namespace the workers run in; with host, the address's label
    ip: str
    ranges: list[tuple[int, int]]  # the ports to bind, inclusive ranges
    ports: int  # how many ports the address has here
    host: bool = False  # --mode alias: the workers run in this namespace, the host's
    workers: list[list[tuple[int, int]]] = field(default_factory=list)  # the ranges of each worker
    spared: list[int] = field(default_factory=list)  # --mode alias: ports left alone, the host listens on or reserves

    @property
    def count(self) -> int:
        return size(self.ranges)


def size(ranges: list[tuple[int, int]]) -> int:
    """How many ports inclusive ranges hold."""
    return sum(hi - lo + 1 for lo, hi in ranges)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def host_ports_in_use() -> list[int]:
    """The TCP ports this host listens on (any address) or reserves for services to come
    (net.ipv4.ip_local_reserved_ports, the kernel's way of saying so): hold leaves them alone."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        ports |= {int(r.split()[1].rsplit(":", 1)[1], 16) for r in rows if r.split()[3] == "0A"}  # 0A: LISTEN
    try:
        reserved = Path("/proc/sys/net/ipv4/ip_local_reserved_ports").read_text().strip()
    except OSError:
        reserved = ""
    for part in filter(None, reserved.split(",")):
        lo, _, hi = part.partition("-")
        ports |= set(range(int(lo), int(hi or lo) + 1))
    return sorted(ports)


def without(ranges: list[tuple[int, int]], ports: list[int]) -> list[tuple[int, int]]:
    """The ranges with these ports cut out."""
    out = []
    for lo, hi in ranges:
        for p in (p for p in ports if lo <= p <= hi):
            if lo < p:
                out.append((lo, p - 1))
            lo = p + 1
        if lo <= hi:
            out.append((lo, hi))
    return out


def usable_ports(row: state.NamespaceStatus, in_use: list[int]) -> list[tuple[int, int]]:
    """The ports hold binds for one address. In a namespace: its port range. On the host (--mode alias):
    every port outside the host's own range, because a port bound on any address is one the host's own
    connect() calls can no longer take (measured: all of the range bound on another address, and a plain
    connect() fails with EADDRNOTAVAIL), but for ``in_use``: the ports the host's services have."""
    lo, hi = (int(x) for x in (row.port_range or "32768-60999").split("-"))
    if not row.host:
        return [(lo, hi)]
    first, last = options.NAMESPACE_PORTS
    return without([(a, b) for a, b in ((first, lo - 1), (hi + 1, last)) if a <= b], in_use)


def split(ranges: list[tuple[int, int]], k: int) -> list[list[tuple[int, int]]]:
    """The ports of ranges in k parts of (nearly) equal size, in order, each as ranges."""
    each = math.ceil(size(ranges) / k)
    parts: list[list[tuple[int, int]]] = [[]]
    for lo, hi in ranges:
        while lo <= hi:
            room = each - size(parts[-1])
            if room == 0:
                parts.append([])
                continue
            parts[-1].append((lo, min(hi, lo + room - 1)))
            lo += room
    return parts


def _take(ranges: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The first n ports of ranges."""
    out = []
    for lo, hi in ranges:
        if n <= 0:
            break
        out.append((lo, min(hi, lo + n - 1)))
        n -= out[-1][1] - lo + 1
    return out


def plan_shares(target: Target, per_ip: int | None, family: int = 4) -> list[Share]:
    """Each address's share of the ports, of the family of the server (4 or 6)."""
    rows = state.addressed(target, family)
    per_worker = fd_limit() - FD_MARGIN
    in_use = host_ports_in_use() if rows and rows[0].host else []
    shares = []
    for r in rows:
        usable = usable_ports(r, in_use)
        have = size(usable)
        if have == 0:
            raise MultiipError(
                f"{r.source(family)}: the host's port range {r.port_range} covers every port, and hold binding any "
                "of them on an added address would leave the host none for its own connections; set the setup up "
                "again without --port-range, or narrow net.ipv4.ip_local_port_range"
            )
        n = have if per_ip is None else per_ip
        if n > have:
            where = "ports outside the host's own range" if r.host else "ports in its range"
            raise MultiipError(f"--per-ip {n}: {r.name}'s {r.source(family)} has {have} {where} ({r.port_range})")
        address = r.source(family)
        assert address is not None
        share = Share(r.name, address.split("/")[0], _take(usable, n), have, r.host, spared=in_use)
        share.workers = split(share.ranges, math.ceil(share.count / per_worker))
        shares.append(share)
    return shares


def preflight(shares: list[Share]) -> list[str]:
    """What could stop the run short, said before it starts."""
    total = sum(s.count for s in shares)
    workers = sum(len(s.workers) for s in shares)
    notes = [
        f"{total:,} connections from {len(shares)} addresses, {workers} worker processes "
        f"(open-file limit {fd_limit():,} each)"
    ]
    small = [s for s in shares if s.ports < 64512]
    if small and small[0].host:
        spared = small[0].spared
        notes.append(
            f"--mode alias: each address binds the {small[0].ports:,} ports outside the host's own range, which "
            "stays free for the host's connections"
            + (
                f", but for the {len(spared)} the host listens on or reserves (net.ipv4.ip_local_reserved_ports: "
                f"{', '.join(map(str, spared[:8]))}{', ...' if len(spared) > 8 else ''}), left to its services"
                if spared
                else ""
            )
        )
    elif small:
        notes.append(
            f"{small[0].namespace} has {small[0].ports:,} ports (from {small[0].ranges[0][0]}): fewer than the 64,512 "
            "one IP can have; run the setup with --port-range 1024-65535"
        )
    file_max = _read_int("/proc/sys/fs/file-max")
    if file_max is not None and file_max < total * 2:
        notes.append(f"warning: fs.file-max is {file_max:,}; {total:,} sockets (x2 if the server is here) may not fit")
    ct_max = _read_int("/proc/sys/net/netfilter/nf_conntrack_max")
    if ct_max is not None and ct_max < total:
        notes.append(
            f"warning: nf_conntrack_max is {ct_max:,} < {total:,}: if connection tracking sees these namespaces "
            "(NAT or stateful firewall rules there), new connections get dropped"
        )
    avail_kb = None
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            avail_kb = int(line.split()[1])
    kernel = total * KERNEL_BYTES_PER_SOCKET
    own = total * WORKER_BYTES_PER_SOCKET + workers * WORKER_BASE_BYTES
    if avail_kb is not None:
        need = kernel * 2 + own  # the kernel's twice when the server is on this host (the lab)
        verdict = "fits" if need < avail_kb * 1024 * 0.9 else "warning: may not fit"
        notes.append(
            f"memory: about {kernel / 2**30:.1f} GiB of kernel memory ({kernel * 2 / 2**30:.1f} GiB with the server "
            f"on this host) and {own / 2**30:.1f} GiB in the {workers} workers, against {avail_kb / 2**20:.1f} GiB "
            f"available: {verdict}"
        )
    return notes


@dataclass
class Worker:
    share: Share
    ports: list[tuple[int, int]]
    proc: subprocess.Popen[bytes]
    buf: bytes = b""
    last: dict[str, Any] = field(default_factory=dict)
    closed: bool = False


def _spawn(
    share: Share, ports: list[tuple[int, int]], server: Server, rate: float, bind: bool
) -> subprocess.Popen[bytes]:
    spec = ",".join(f"{lo}-{hi}" for lo, hi in ports)
    argv = execute.python_module("multiip.holdworker", share.ip, spec, str(server.host), str(server.port))
    argv += ["--rate", repr(rate), "--parent", str(os.getpid())]  # repr: exact, a low share never becomes 0
    if not bind:
        argv.append("--no-bind")
    return execute.spawn(argv if share.host else execute.in_netns(share.namespace, argv))


Progress = Callable[[int, int, float, str], None]  # established, target, connections/s, phase


def hold(
    shares: list[Share],
    server: Server,
    duration: float | None,
    rate: float,
    progress: Progress,
    bind: bool = True,
    on_hold: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Ramp up, hold for ``duration`` seconds (None: until Ctrl-C), close everything; the result as a dict.
    Ctrl-C or SIGTERM (a service manager's stop, ``timeout``) ends it early, with the result all the same.

    ``bind=False`` connects without bind (the kernel's port search); ``on_hold`` runs once the ramp is over
    (the benchmark measures memory there)."""
    total = sum(s.count for s in shares)
    n_workers = sum(len(s.workers) for s in shares)
    per_worker_rate = rate / n_workers if rate > 0 else 0.0
    workers: list[Worker] = []
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    ramp_seconds: float | None = None
    peak = 0
    hold_until: float | None = None
    interrupted = False
    on_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for share in shares:
            for ports in share.workers:
                w = Worker(share, ports, _spawn(share, ports, server, per_worker_rate, bind))
                workers.append(w)
                assert w.proc.stdout is not None
                os.set_blocking(w.proc.stdout.fileno(), False)
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        last_est, last_t = 0, start
        while True:
            try:
                _pump(sel)
                now = time.monotonic()
            except KeyboardInterrupt:
                interrupted = True
                break
            est = sum(w.last.get("est", 0) for w in workers)
            peak = max(peak, est)
            fatal = next((w for w in workers if "fatal" in w.last), None)
            if fatal:
                raise MultiipError(
                    f"{server} cannot be reached from {fatal.share.namespace} ({fatal.share.ip}): "
                    f"{fatal.last['fatal']} on every attempt"
                )
            dead = next((w for w in workers if w.closed), None)
            if dead:
                raise MultiipError(
                    f"a worker in {dead.share.namespace} died (exit {dead.proc.wait()}); stopped all workers"
                )
            if ramp_seconds is None and all(w.last.get("done") for w in workers):
                ramp_seconds = now - start
                if on_hold is not None:
                    on_hold()
                hold_until = None if duration is None else time.monotonic() + duration
            rate_now = (est - last_est) / (now - last_t) if now > last_t else 0.0
            if now - last_t >= 0.5:
                last_est, last_t = est, now
            try:
                progress(est, total, max(rate_now, 0.0), "ramp" if ramp_seconds is None else "hold")
            except KeyboardInterrupt:
                interrupted = True
                break
            if hold_until is not None and now >= hold_until:
                break
    finally:
        finals = _stop_all(workers, sel)
        signal.signal(signal.SIGTERM, on_term)
    failed: Counter[str] = Counter()
    per_ns: dict[str, dict[str, Any]] = {}  # by source IP: one per namespace, or per address with --mode alias
    for w in workers:
        info = finals.get(id(w)) or w.last
        row = per_ns.setdefault(
            w.share.ip,
            {"name": w.share.namespace, "ip": w.share.ip, "target": w.share.count, "established": 0, "failed": {}},
        )
        row["established"] += info.get("peak", 0)
        for k, v in info.get("fail", {}).items():
            row["failed"][k] = row["failed"].get(k, 0) + v
            failed[k] += v
    return {
        "server": str(server),
        "target": total,
        "established": peak,
        "failed": dict(failed),
        "seconds": round(ramp_seconds, 3) if ramp_seconds is not None else None,
        "rate": round(peak / ramp_seconds, 1) if ramp_seconds else None,
        "held_for": duration,
        "interrupted": interrupted,
        "namespaces": list(per_ns.values()),
    }


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends a hold as Ctrl-C does."""
    raise KeyboardInterrupt


def _pump(sel: selectors.BaseSelector, timeout: float = 0.2) -> None:
    """Read whatever workers said; mark a worker closed at end of file."""
    for key, _ in sel.select(timeout):
        w: Worker = key.data
        try:
            chunk = os.read(key.fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            sel.unregister(key.fileobj)
            w.closed = True
            continue
        w.buf += chunk
        *lines, w.buf = w.buf.split(b"\n")
        for line in lines:
            if line.strip():
                w.last = json.loads(line)


def _stop_all(workers: list[Worker], sel: selectors.BaseSelector) -> dict[int, dict[str, Any]]:
    """SIGTERM every worker, collect its last words, SIGKILL any still there after 10 s."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(not w.closed for w in workers) and time.monotonic() < deadline and sel.get_map():
        try:
            _pump(sel)
        except KeyboardInterrupt:
            break
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()
        if w.proc.stdout:
            w.proc.stdout.close()
    sel.close()
    return {id(w): w.last for w in workers if w.last.get("closed")}
