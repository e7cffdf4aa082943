"""The lab's TCP sink: accepts connections on its ip:ports (IPv4 and IPv6) and holds them until the peer closes.

One process may hold only as many sockets as its open-file limit allows (20000 here), so the sink is
a parent with several worker processes sharing the port through SO_REUSEPORT. A worker that nears its
limit closes its listeners, and the kernel sends new connections to the others. Each worker writes
``sink-K.json`` (held, accepted, per-peer counts) into the state directory; the parent writes
``sink.pid`` and, once every worker listens, ``sink.ready``. SIGTERM stops the parent and its workers.

Run as ``python -m multiip.sink --listen IP:PORT [--listen [IPv6]:PORT] --workers N --state DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from multiip.limits import raise_fd_limit

_stop = False


def _on_term(signum: int, frame: FrameType | None) -> None:
    global _stop
    _stop = True


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def listen_on(host: str, port: int) -> socket.socket:
    """A listener on host:port (an IPv6 host: IPv6 only), sharing the port with the other workers."""
    v6 = ":" in host
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if v6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(65535)
    sock.setblocking(False)
    return sock


def worker(index: int, addresses: list[tuple[str, int]], state: Path) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit = raise_fd_limit() - 32
    listeners = {s.fileno(): s for s in (listen_on(host, port) for host, port in addresses)}
    ep = select.epoll()
    for lfd in listeners:
        ep.register(lfd, select.EPOLLIN)
    conns: dict[int, str] = {}
    peers: Counter[str] = Counter()
    accepted = 0
    stats = state / f"sink-{index}.json"
    last_written: tuple[int, int] = (-1, -1)
    next_write = 0.0

    def stop_listening() -> None:
        for lfd, listener in listeners.items():
            ep.unregister(lfd)
            listener.close()
        listeners.clear()

    while not _stop:
        try:
            events = ep.poll(0.25, 4096)
        except InterruptedError:
            continue
        for fd, ev in events:
            listener = listeners.get(fd)
            if listener is not None:
                for _ in range(1024):
                    try:
                        conn, addr = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            stop_listening()
                            break
                        if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                            continue
                        raise
                    cfd = conn.detach()
                    ep.register(cfd, select.EPOLLIN | select.EPOLLRDHUP)
                    conns[cfd] = addr[0]
                    peers[addr[0]] += 1
                    accepted += 1
                    if len(conns) >= limit:
                        stop_listening()
                        break
            elif fd in conns:
                data = b""
                if not ev & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
                    with contextlib.suppress(OSError):
                        data = os.read(fd, 65536)
                if not data:
                    ep.unregister(fd)
                    os.close(fd)
                    peer = conns.pop(fd)
                    peers[peer] -= 1
                    if not peers[peer]:
                        del peers[peer]
        now = time.monotonic()
        if ((len(conns), accepted) != last_written and now >= next_write) or last_written == (-1, -1):
            last_written = (len(conns), accepted)
            next_write = now + 0.2
            _write_json(
                stats,
                {
                    "pid": os.getpid(),
                    "held": len(conns),
                    "accepted": accepted,
                    "listening": bool(listeners),
                    "peers": dict(peers),
                },
            )
    for cfd in conns:
        os.close(cfd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m multiip.sink", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, action="append", help="IP:PORT or [IPv6]:PORT (repeatable)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--state", required=True, type=Path)
    args = ap.parse_args(argv)
    addresses = [(host.strip("[]"), int(port)) for host, _, port in (a.rpartition(":") for a in args.listen)]
    state: Path = args.state
    state.mkdir(parents=True, exist_ok=True)
    for old in state.glob("sink-*.json"):
        old.unlink()
    children: list[int] = []
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    for index in range(args.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                worker(index, addresses, state)
            except BaseException as e:  # a worker reports and exits; the parent notices
                print(f"sink worker {index}: {e}", file=sys.stderr)
                code = 1
            os._exit(code)
        children.append(pid)
    (state / "sink.pid").write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + 10
    while len(list(state.glob("sink-*.json"))) < args.workers and time.monotonic() < deadline and not _stop:
        time.sleep(0.02)
    (state / "sink.ready").write_text(f"{args.workers}\n")
    alive = set(children)
    while alive and not _stop:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            alive.discard(pid)
            print(f"sink worker pid {pid} exited with status {status}", file=sys.stderr)
        else:
            time.sleep(0.2)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in alive:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
