"""What people see: progress and tables on stderr (rich). Data for scripts goes to stdout elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from multiip import messages

console = Console(stderr=True, highlight=False)
if not console.is_terminal:  # logs and pipes: wide enough for a status row on one line
    console = Console(stderr=True, highlight=False, width=200)


class ScriptProgress:
    """Shows a rendered script's stderr: its steps as progress bars on a terminal, plain lines elsewhere.

    Error lines are not shown: the CLI prints the one-line reason once, when the script has failed.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> ScriptProgress:
        console.print(f"[bold]{self.title}[/bold]")
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self._finish_current()
        self.progress.__exit__(kind, value, tb)

    def _finish_current(self) -> None:
        if self.task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self.task, total=task.total or 1, completed=task.total or 1)

    def __call__(self, line: str) -> None:
        msg = messages.parse(line)
        if msg.kind == "error":
            return
        if msg.kind == "step":
            self._finish_current()
            description = f"[{msg.done}/{msg.total}] {msg.text}"
            short = description if len(description) <= 60 else description[:59] + "…"  # leave room for the bar
            self.task = self.progress.add_task(short, total=None)
            if not self.live:
                console.print(description)
            return
        if msg.kind == "progress":
            if self.task is not None:
                self.progress.update(self.task, completed=msg.done, total=msg.total)
            if not self.live and msg.done == msg.total:
                console.print(f"  {msg.text}: {msg.done}/{msg.total}")
            return
        if self.live:
            self.progress.console.print(f"  [dim]{escape(msg.text)}[/dim]", markup=True, soft_wrap=True)
        else:
            console.print(f"  {msg.text}", markup=False, soft_wrap=True)


def status_table(data: dict[str, Any]) -> None:
    rows = data["namespaces"]
    title = (
        f"prefix {data['prefix']} · {data['mode'] or '?'}{(' ' + data['bridge']) if data['bridge'] else ''}"
        f" · uplink {data['uplink'] or '?'}"
        f" (managed by {data['manager'] or '?'}) · DHCP {data['dhcp'] or '?'} · {len(rows)} "
        + ("addresses on the uplink" if data["mode"] == "alias" else "namespaces")
    )
    table = Table(title=title, title_justify="left")
    first = "label" if data["mode"] == "alias" else "namespace"
    for col in (first, "interface", "MAC", "IPv4", "gateway", "DHCP client", "lease expires", "ports"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        client = "-"
        if r["dhcp_client"]:
            state = "alive" if r["dhcp_alive"] else "[red]dead[/red]"
            client = f"{r['dhcp_client']} {r['dhcp_pid'] or ''} {state}"
        table.add_row(
            r["name"],
            r["interface"],
            r["mac"] or "-",
            r["ipv4"] or "[red]none[/red]",
            r["gateway"] or "-",
            client,
            (r["lease_expires"] or "-").replace("+00:00", "Z"),
            r["port_range"] or "-",
        )
    console.print(table)


def doctor_table(found: dict[str, str]) -> None:
    table = Table(title=f"multiip doctor · uplink {found.get('uplink', '?')}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("found")
    for key, value in found.items():
        if key.startswith("mode_") or key == "suggest":
            continue
        table.add_row(key.replace("_", " "), value)
    for key, value in found.items():
        if key.startswith("mode_"):
            table.add_row(
                f"--mode {key[5:]}", "[green]can work[/green]" if value == "yes" else f"[red]no[/red]: {value}"
            )
    console.print(table)
    console.print(f"suggested: --mode {found.get('suggest', '?')}", markup=False)


class HoldProgress:
    """established / target with the rate: a bar on a terminal, a line every 2 s elsewhere."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9,.0f} conn/s"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("ramp", total=total, rate=0.0)
        self.next_line = 0.0

    def __enter__(self) -> HoldProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(kind, value, tb)

    def __call__(self, established: int, total: int, rate: float, phase: str) -> None:
        self.progress.update(self.task, completed=established, rate=rate, description=phase)
        now = time.monotonic()
        if not self.live and now >= self.next_line:
            self.next_line = now + 2
            console.print(f"  {phase}: {established:,}/{total:,} established, {rate:,.0f} conn/s", markup=False)


def exec_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"multiip exec: {len(rows)} runs", title_justify="left")
    for col in ("namespace", "IP", "exit", "seconds"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("exit", "seconds") else "left")
    for r in rows:
        code = "-" if r["exit"] is None else str(r["exit"])
        table.add_row(r["namespace"], r["ip"], code if r["exit"] == 0 else f"[red]{code}[/red]", f"{r['seconds']:.2f}")
    console.print(table)


def hold_table(result: dict[str, Any]) -> None:
    table = Table(title=f"connections to {result['server']}", title_justify="left")
    for col in ("namespace", "IP", "connections", "failed"):
        table.add_column(col, no_wrap=True, justify="right" if col == "connections" else "left")
    for r in result["namespaces"]:
        failed = ", ".join(f"{k} {v:,}" for k, v in sorted(r["failed"].items())) or "-"
        table.add_row(r["name"], r["ip"], f"{r['established']:,}", failed)
    console.print(table)


T = TypeVar("T")


def with_hold_progress(notes: list[str], total: int, run: Callable[[HoldProgress], T]) -> T:
    """Say first what could stop a hold short, then show its progress while ``run`` holds."""
    for note in notes:
        console.print(f"multiip: {note}", markup=False)
    with HoldProgress(total) as progress:
        return run(progress)


def headline(result: dict[str, Any]) -> str:
    est = int(result["established"])
    secs = result["seconds"]
    ramp = f" in {secs:.1f} s" if isinstance(secs, float) else ""
    return (
        f"multiip: {est:,} connections held to {result['server']} from {len(result['namespaces'])} source IPs "
        f"on one host{ramp}: {est / 64512:.1f}x the 64,512 one IP can open"
    )
