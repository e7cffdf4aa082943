"""``multiip exec``: one command in each namespace of a setup, in parallel, its output line by line.

Each run gets ``{ns}``, ``{ip}``, ``{ip6}`` and ``{index}`` replaced in its arguments and
``MULTIIP_NS``, ``MULTIIP_IP``, ``MULTIIP_IP6``, ``MULTIIP_INDEX`` in its environment, the open-file
soft limit raised to the hard one and the namespace's own resolver file. Runs start in their own sessions;
a run is over when its command exits (whether or not something of it still holds its output), and then
whatever it left in its session goes. ``exec`` is the subreaper of everything it starts, so a process that
left its session (setsid) is
stopped too when ``exec`` ends, by Ctrl-C, an error or the end: no process outlives the command.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from multiip import execute
from multiip.errors import MultiipError
from multiip.limits import raise_fd_limit


@dataclass
class Target:
    """One namespace to run in."""

    namespace: str
    ip: str
    index: int
    ip6: str = ""  # its IPv6 address, if it has one


@dataclass
class Run:
    target: Target
    proc: subprocess.Popen[bytes]
    started: float
    sink: IO[bytes] | None = None  # --output: the file its lines go to
    buf: bytes = b""
    ended: float | None = None
    code: int | None = None
    eof: bool = False  # its output closed


def argv_for(command: Sequence[str], target: Target) -> list[str]:
    """The command with {ns}, {ip}, {ip6} and {index} replaced in each argument."""
    values = {"{ns}": target.namespace, "{ip6}": target.ip6, "{ip}": target.ip, "{index}": str(target.index)}
    out = []
    for arg in command:
        for key, value in values.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def fan_out(
    targets: list[Target],
    command: Sequence[str],
    parallel: int,
    show: Callable[[str, str], None],
    output: Path | None = None,
) -> list[dict[str, Any]]:
    """Run ``command`` in every target, at most ``parallel`` at a time; ``show(namespace, line)`` gets each
    line (unless ``output`` is a directory that gets one file per namespace). Returns one summary row
    per target: namespace, ip, exit code (negative: killed by that signal), seconds."""
    raise_fd_limit()  # the runs inherit it: as many sockets as this host allows a process
    execute.become_subreaper()  # what a run leaves behind, in a session of its own too, is ours to stop
    waiting = list(targets)
    running: list[Run] = []
    done: list[Run] = []
    sel = selectors.DefaultSelector()
    cwd = os.getcwd()

    def finish(run: Run) -> None:  # its command has exited: what it wrote, then what it left behind goes
        assert run.proc.stdout is not None
        if not run.eof:
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(run.proc.stdout.fileno(), 65536):
                    run.buf += chunk
            sel.unregister(run.proc.stdout)
        run.code = run.proc.returncode
        run.ended = time.monotonic()
        _emit(run, run.buf, show, final=True)
        running.remove(run)
        done.append(run)
        execute.stop_session(run.proc, grace=0.5)

    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                target = waiting.pop(0)
                env = {"MULTIIP_NS": target.namespace, "MULTIIP_IP": target.ip, "MULTIIP_IP6": target.ip6,
                       "MULTIIP_INDEX": str(target.index)}  # fmt: skip
                sink = None
                if output is not None:  # before its command starts: a file that cannot be written stops all
                    try:
                        sink = (output / f"{target.namespace}.log").open("wb")
                    except OSError as e:
                        raise MultiipError(f"exec --output: cannot write {e.filename}: {e.strerror}") from None
                argv = execute.in_netns_with_resolver(target.namespace, argv_for(command, target))
                proc = execute.spawn(argv, cwd=cwd, env=env, stderr=subprocess.STDOUT)
                run = Run(target, proc, time.monotonic(), sink)
                assert proc.stdout is not None
                os.set_blocking(proc.stdout.fileno(), False)
                sel.register(proc.stdout, selectors.EVENT_READ, run)
                running.append(run)
            for key, _ in sel.select(0.2):
                run = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:  # the output closed; the command may still run (it is done when it exits)
                    sel.unregister(key.fileobj)
                    run.eof = True
                    continue
                run.buf += chunk
                *lines, run.buf = run.buf.split(b"\n")
                for line in lines:
                    _emit(run, line + b"\n", show)
            for run in [r for r in running if r.proc.poll() is not None]:
                finish(run)
    finally:
        for run in running:  # Ctrl-C or an error: every session still there goes
            execute.stop_session(run.proc)
            run.code = run.proc.returncode
            run.ended = time.monotonic()
            done.append(run)
        execute.stop_descendants()  # and whatever left its session (setsid), orphaned to us
        for run in done:
            if run.sink is not None:
                run.sink.close()
        sel.close()
    order = {t.namespace: i for i, t in enumerate(targets)}
    done.sort(key=lambda r: order[r.target.namespace])
    return [
        {
            "namespace": r.target.namespace,
            "ip": r.target.ip,
            "exit": r.code,
            "seconds": round((r.ended or time.monotonic()) - r.started, 3),
        }
        for r in done
    ]


def _emit(run: Run, data: bytes, show: Callable[[str, str], None], final: bool = False) -> None:
    if not data:
        return
    if run.sink is not None:
        run.sink.write(data)
        return
    text = data.decode(errors="replace")
    if final and not text.endswith("\n"):
        text += "\n"
    for line in text.splitlines():
        show(run.target.namespace, line)
