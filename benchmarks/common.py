"""Shared by the benchmarks: a lab for the run, host-wide limits raised and restored, memory readings."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from multiip import execute, lab, ui

RESULTS = Path(__file__).parent / "results"


def show(line: str) -> None:
    if not line.startswith("multiip: progress"):
        ui.console.print(f"  {line}", markup=False)


@contextlib.contextmanager
def sysctls(wanted: dict[str, int]) -> Iterator[dict[str, int]]:
    """Raise each host-wide limit to at least the wanted value for the run; put every old value back."""
    old: dict[str, str] = {}
    try:
        for key, value in wanted.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            if not path.exists():
                continue
            current = path.read_text().strip()
            if int(current.split()[0]) < value:
                old[key] = current
                path.write_text(str(value))
                ui.console.print(f"bench: {key} {current} -> {value} for this run", markup=False)
        yield {k: int(v.split()[0]) for k, v in old.items()}
    finally:
        for key, value in old.items():
            (Path("/proc/sys") / key.replace(".", "/")).write_text(value)
            ui.console.print(f"bench: {key} restored to {value}", markup=False)


@contextlib.contextmanager
def lab_up(name: str, leases: int, capacity: int, **settings: Any) -> Iterator[lab.Lab]:
    the_lab = lab.make_lab(name=name, leases=leases, capacity=capacity, **settings)
    execute.run_script(lab.up_script(the_lab), show)
    try:
        yield the_lab
    finally:
        execute.run_script(lab.down_script(the_lab), show)


def until_none_held(held: Callable[[], int], seconds: float = 120) -> None:
    """Wait, bounded, until the server holds no connection of the last trial (``held`` counts them)."""
    deadline = time.monotonic() + seconds
    while held() and time.monotonic() < deadline:
        time.sleep(0.1)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024
    return out


def memory_of(match: bytes) -> tuple[int, int, int]:
    """(processes, summed PSS, summed RSS), in bytes, of the processes whose command line contains match."""
    n = pss = rss = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if match not in (proc / "cmdline").read_bytes():
                continue
            fields = dict(line.split(":", 1) for line in (proc / "smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue
        n += 1
        pss += int(fields["Pss"].split()[0]) * 1024
        rss += int(fields["Rss"].split()[0]) * 1024
    return n, pss, rss


def save(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    data = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    ui.console.print_json(json.dumps(data))
