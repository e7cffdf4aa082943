"""One connection-holding worker, started inside a namespace by ``multiip hold``.

It binds each socket explicitly to (source IP, port) for every port of its slice, connects without
blocking to the server, and holds what got established until SIGTERM; then it closes them all with
RST (SO_LINGER 0: no TIME_WAIT left behind) and exits. Every 0.2 s it prints one JSON line on stdout:
``{"est": held now, "peak": most held, "fail": {errno name: n}, "done": ramp over, "lost": closed by peer}``.
If the first attempts all fail (refused, unreachable, timed out) it reports ``fatal`` and exits 3.
It dies with its parent (PR_SET_PDEATHSIG), so no worker outlives ``multiip hold``.

With ``--no-bind`` it makes as many plain connect() calls instead, letting the kernel search for free
ports (the slow way, kept for comparison). Run as
``python -m multiip.holdworker SRC LO-HI[,LO-HI...] HOST PORT [--rate R] [--parent PID] [--no-bind]``.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter
from types import FrameType

from multiip.limits import raise_fd_limit

PR_SET_PDEATHSIG = 1
LINGER_RST = struct.pack("ii", 1, 0)
FATAL_AFTER = 64  # attempts with not one established: the server refuses or cannot be reached
_stop = False


def _on_term(signum: int, frame: FrameType | None) -> None:
    global _stop
    _stop = True


def die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def errname(code: int) -> str:
    return errno.errorcode.get(code, f"errno{code}")


def port_list(text: str) -> list[tuple[int, int]]:
    """LO-HI[,LO-HI...] as inclusive ranges."""
    return [(int(lo), int(hi)) for lo, hi in (part.split("-") for part in text.split(","))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m multiip.holdworker")
    ap.add_argument("src")
    ap.add_argument("ports", type=port_list, help="the source ports to bind: LO-HI[,LO-HI...]")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--rate", type=float, default=0.0, help="connections per second; 0: as fast as possible")
    ap.add_argument("--inflight", type=int, default=512)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--parent", type=int, default=0)
    ap.add_argument("--no-bind", action="store_true", help="plain connect(): the kernel searches for a free port")
    args = ap.parse_args(argv)
    die_with_parent(args.parent)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    raise_fd_limit()

    family = socket.AF_INET6 if ":" in args.src else socket.AF_INET
    server = (args.host, args.port)
    ep = select.epoll()
    pending: dict[int, tuple[socket.socket, float]] = {}
    held: dict[int, socket.socket] = {}
    failed: Counter[str] = Counter()
    peak = lost = finished = 0
    ports = [p for lo, hi in args.ports for p in range(lo, hi + 1)]
    started = 0  # of ports: the next one to bind is ports[started]
    start = time.monotonic()
    next_report = next_timeout_scan = 0.0
    out = sys.stdout

    def report(**extra: object) -> None:
        done = started == len(ports) and not pending
        line = {"est": len(held), "peak": peak, "fail": dict(failed), "done": done, "lost": lost, **extra}
        out.write(json.dumps(line) + "\n")
        out.flush()

    def fail(sock: socket.socket, code: int) -> None:
        nonlocal finished
        failed[errname(code)] += 1
        finished += 1
        sock.close()

    while not _stop:
        now = time.monotonic()
        budget = args.inflight - len(pending)
        if args.rate > 0:
            allowed = int((now - start) * args.rate) - started
            budget = min(budget, allowed)
        while budget > 0 and started < len(ports):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            # SO_REUSEADDR: a service that binds the port on any address later (with SO_REUSEADDR, as servers
            # do) still can, while this connected socket holds it on one address
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            port = ports[started]
            started += 1
            if not args.no_bind:
                try:
                    sock.bind((args.src, port))
                except OSError as e:
                    fail(sock, e.errno or 0)
                    continue
            budget -= 1
            rc = sock.connect_ex(server)
            if rc == errno.EINPROGRESS:
                pending[sock.fileno()] = (sock, now)
                ep.register(sock.fileno(), select.EPOLLOUT)
            elif rc == 0:
                held[sock.fileno()] = sock
                ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
                finished += 1
            else:
                fail(sock, rc)
        for fd, ev in ep.poll(0.05 if started < len(ports) else 0.2, 4096):
            if fd in pending:
                sock, _ = pending.pop(fd)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code == 0 and not ev & (select.EPOLLERR | select.EPOLLHUP):
                    held[fd] = sock
                    ep.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
                    finished += 1
                    peak = max(peak, len(held))
                else:
                    ep.unregister(fd)
                    fail(sock, code or errno.ECONNRESET)
            elif fd in held:  # the server closed it, or sent something we do not expect
                ep.unregister(fd)
                held.pop(fd).close()
                lost += 1
        now = time.monotonic()
        if now >= next_timeout_scan:
            next_timeout_scan = now + 0.5
            for fd in [fd for fd, (_, t0) in pending.items() if now - t0 > args.timeout]:
                sock, _ = pending.pop(fd)
                ep.unregister(fd)
                fail(sock, errno.ETIMEDOUT)
        if peak == 0 and finished >= min(FATAL_AFTER, len(ports)) and failed:
            report(fatal=failed.most_common(1)[0][0])
            return 3
        if now >= next_report:
            next_report = now + 0.2
            report()
    for sock in held.values():
        sock.close()
    for sock, _ in pending.values():
        sock.close()
    held.clear()
    pending.clear()
    report(closed=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
