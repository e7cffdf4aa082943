"""Execution: the only module that runs programs (through ``sh``) or replaces the process.

Rendered scripts run as ``bash FILE``; their stderr lines go to a callback as they come, so the CLI
can show progress. Failures become MultiipError with the script's own one-line reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import sh

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
        if line.startswith("multiip: error: "):
            if not self.error:  # the first error is the specific one
                self.error = line.removeprefix("multiip: error: ")
        elif not line.startswith("multiip: ") and line.strip():
            self.cause = line.strip()
        self.show(line)

    def message(self, exit_code: int) -> str:
        if not self.error:
            return f"script failed with exit {exit_code}" + (f": {self.cause}" if self.cause else "")
        if self.cause and "failed (exit" in self.error:
            return f"{self.error}: {self.cause}"
        return self.error


def run_script(script: str, show: Callable[[str], None], name: str = "multiip", netns: str | None = None) -> None:
    """Run a rendered bash script (in a named network namespace if given); its output lines go to ``show``."""
    log = ScriptLog(show)
    fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".sh")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(script)
        argv = in_netns(netns, ["bash", path]) if netns else ["bash", path]
        sh.Command(which(argv[0]) or argv[0])(*argv[1:], _err=log, _out=log, _env=environment(), _in=os.devnull)
    except sh.ErrorReturnCode as e:
        raise MultiipError(log.message(e.exit_code), exit_code=e.exit_code or 1) from None
    except sh.SignalException as e:
        raise MultiipError(f"script killed by signal {-e.exit_code}", exit_code=1) from None
    finally:
        Path(path).unlink(missing_ok=True)


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


def spawn(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a long-running helper whose stdout the caller reads; in its own session, so a Ctrl-C
    reaches only the caller, which stops it in order."""
    path = which(argv[0])
    if path is None:
        raise MultiipError(f"{argv[0]} not found")
    return subprocess.Popen(
        [path, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=environment(), start_new_session=True
    )


def in_netns(namespace: str, argv: Sequence[str]) -> list[str]:
    """argv run in a named network namespace only (the mount namespace stays the caller's)."""
    return ["nsenter", f"--net=/run/netns/{namespace}", "--", *argv]


def replace_process(argv: Sequence[str]) -> NoReturn:
    """exec argv in place of this process (for interactive commands)."""
    path = which(argv[0])
    if path is None:
        raise MultiipError(f"{argv[0]} not found")
    try:
        os.execve(path, list(argv), environment())
    except OSError as e:
        raise MultiipError(f"cannot run {argv[0]}: {e.strerror}") from None
