"""Execution: the only module that runs programs (through ``sh``) or replaces the process.

Rendered scripts run as ``bash FILE``; their stderr lines go to a callback as they come, so the CLI
can show progress. Failures become MultiipError with the script's own one-line reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import sh

from multiip import messages
from multiip.errors import MultiipError

SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}:{SBIN}"
    env["LC_ALL"] = "C"
    return env


def which(tool: str) -> str | None:
    return shutil.which(tool, path=environment()["PATH"])


class ScriptLog:
    """Keeps what a script said on stderr that explains a failure: its error line and the line before."""

    def __init__(self, show: Callable[[str], None]) -> None:
        self.show = show
        self.error = ""
        self.cause = ""

    def __call__(self, line: str) -> None:
        line = line.rstrip("\n")
        msg = messages.parse(line)
        if msg.kind == "error" and not self.error:  # the first error is the specific one
            self.error = msg.text
        elif msg.kind == "other" and line.strip():
            self.cause = line.strip()
        self.show(line)

    def message(self, exit_code: int) -> str:
        if not self.error:
            return f"script failed with exit {exit_code}" + (f": {self.cause}" if self.cause else "")
        if self.cause and "failed (exit" in self.error:
            return f"{self.error}: {self.cause}"
        return self.error


def run_script(
    script: str,
    show: Callable[[str], None],
    name: str = "multiip",
    within: Sequence[str] = (),
    undo: str = "",
    env: dict[str, str] | None = None,
) -> None:
    """Run a rendered bash script (through ``within`` if given: e.g. lab.enter, as the lab host); its output
    lines go to ``show``.

    On Ctrl-C the script is told too (it may not share our terminal) and waited for: it rolls back what
    it was doing before it exits. The error then says where it stopped, and ``undo`` says what removes the rest.
    """
    log = ScriptLog(show)
    fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".sh")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(script)
        argv = [*within, "bash", path]
        proc = sh.Command(which(argv[0]) or argv[0])(
            *argv[1:],
            _err=log,
            _out=log,
            _env={**environment(), **(env or {})},
            _in=os.devnull,
            _bg=True,
            _bg_exc=False,
        )
        _wait(proc)
    except sh.CommandNotFound:
        raise MultiipError(f"{argv[0]} not found (PATH {environment()['PATH']}): install it") from None
    except sh.ErrorReturnCode as e:
        raise _failed(log, e.exit_code, undo) from None
    except ChildProcessError:  # reaped inside a wait that a Ctrl-C broke off (_wait): interrupted
        raise _failed(log, 130, undo) from None
    except sh.SignalException as e:
        raise MultiipError(f"script killed by signal {-e.exit_code}", exit_code=1) from None
    finally:
        Path(path).unlink(missing_ok=True)


def _failed(log: ScriptLog, code: int, undo: str) -> MultiipError:
    message = log.message(code)
    if code == 130 and undo:
        message += f"; {undo}"
    return MultiipError(message, exit_code=code or 1)


def _wait(proc: Any) -> None:
    """Wait for a script; a Ctrl-C is passed on to it once, and it is waited for while it rolls back. A
    Ctrl-C can break off a wait that had reaped the script: its status is lost, and the next wait finds
    no child (ChildProcessError), which only an interrupted wait may raise."""
    told = interrupted = False
    while True:
        try:
            proc.wait()
            return
        except ChildProcessError:
            if not interrupted:
                raise RuntimeError("the script's exit status was lost") from None
            raise
        except KeyboardInterrupt:
            interrupted = True
            if not told and proc.is_alive():
                told = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)


def capture(argv: Sequence[str], ok: Sequence[int] = (0,)) -> str:
    """Run a command and return its stdout; failures become MultiipError with its stderr's last line."""
    try:
        cmd = sh.Command(which(argv[0]) or argv[0])
        result: str = cmd(*argv[1:], _env=environment(), _ok_code=list(ok), _in=os.devnull)
        return result
    except sh.CommandNotFound:
        raise MultiipError(f"{argv[0]} not found") from None
    except sh.ErrorReturnCode as e:
        err = e.stderr.decode(errors="replace").strip().splitlines()
        raise MultiipError(f"{' '.join(argv[:3])}: {err[-1] if err else f'exit {e.exit_code}'}") from None


def spawn(
    argv: Sequence[str], cwd: str = "/", env: dict[str, str] | None = None, stderr: int | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running program whose stdout the caller reads; in its own session, so a Ctrl-C
    reaches only the caller, which stops it in order (the whole session: what it started too). In / by
    default, so nothing resolves against the caller's directory."""
    path = which(argv[0])
    if path is None:
        raise MultiipError(f"{argv[0]} not found")
    return subprocess.Popen(
        [path, *argv[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**environment(), **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )


def stop_session(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM a spawned program's whole session, SIGKILL it after ``grace`` seconds, reap it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what the program left in its session goes with it


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants (a daemon that left its session) become this process's children, not init's."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise MultiipError(f"cannot become a subreaper: {os.strerror(ctypes.get_errno())}")


def _descendants() -> list[int]:
    """Every living process below this one (children of children, and the orphans it adopted)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state != "Z":
            parents.setdefault(int(ppid), []).append(int(stat.parent.name))
    found, todo = [], [os.getpid()]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_descendants(grace: float = 1.0) -> None:
    """SIGTERM every descendant, SIGKILL those still there after ``grace`` seconds, and reap them."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        deadline = time.monotonic() + wait
        while (pids := _descendants()) and time.monotonic() < deadline:
            for pid in pids:  # again each round: one may have forked meanwhile
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.05)
            _reap()
    _reap()


def _reap() -> None:
    """Collect the exit status of every child that has ended (the adopted orphans)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


def in_netns_with_resolver(namespace: str, argv: Sequence[str]) -> list[str]:
    """argv run in a named network namespace with its own /etc/netns/<ns> files (resolv.conf) bound over
    /etc: `ip netns exec`, for commands users run there."""
    return ["ip", "netns", "exec", namespace, *argv]


def python_module(module: str, *args: str) -> list[str]:
    """argv to run one of multiip's modules with this Python, isolated (-I): as root, no import from the
    current directory, PYTHONPATH or the user's site-packages."""
    return [sys.executable, "-I", "-m", module, *args]


def in_netns(namespace: str, argv: Sequence[str]) -> list[str]:
    """argv run in a named network namespace only (the mount namespace stays the caller's)."""
    return ["nsenter", f"--net=/run/netns/{namespace}", "--", *argv]


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def entered_netns(namespace: str) -> Iterator[None]:
    """This thread (and the threads and processes it starts meanwhile) in a named network namespace,
    then back where it was. The demo runs status and hold so, as the lab host."""
    libc = ctypes.CDLL(None, use_errno=True)

    def enter(fd: int) -> None:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise MultiipError(f"cannot enter a network namespace: {os.strerror(ctypes.get_errno())}")

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        there = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            enter(there)
        finally:
            os.close(there)
        try:
            yield
        finally:
            enter(home)
    finally:
        os.close(home)


def replace_process(argv: Sequence[str]) -> NoReturn:
    """exec argv in place of this process (for interactive commands)."""
    path = which(argv[0])
    if path is None:
        raise MultiipError(f"{argv[0]} not found")
    try:
        os.execve(path, list(argv), environment())
    except OSError as e:
        raise MultiipError(f"cannot run {argv[0]}: {e.strerror}") from None
