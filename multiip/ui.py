"""What people see: progress and tables on stderr (rich). Data for scripts goes to stdout elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from rich.console import Console
from rich.live import Live
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


def alive(yes: bool) -> str:
    return "alive" if yes else "[red]dead[/red]"


def status_table(data: dict[str, Any]) -> None:
    rows = data["namespaces"]
    family = data.get("family") or "4"
    title = (
        f"prefix {data['prefix']} · {data['mode'] or '?'}{(' ' + data['bridge']) if data['bridge'] else ''}"
        f" · uplink {data['uplink'] or '?'}"
        f" (managed by {data['manager'] or '?'}) · DHCP {data['dhcp'] or '?'}"
        + (f" · IPv{family}" if family != "dual" else " · IPv4 and IPv6")
        + (f" (DHCPv6 {data['dhcp6']})" if data.get("dhcp6") not in (None, "-") else "")
        + f" · {len(rows)} "
        + ("addresses on the uplink" if data["mode"] == "alias" else "namespaces")
    )
    v4, v6 = family != "6", family != "4" or any(r["ipv6"] or r["ipv6_pending"] for r in rows)
    table = Table(title=title, title_justify="left")
    first = "label" if data["mode"] == "alias" else "namespace"
    columns = [first, "interface", "MAC", *(["IPv4"] if v4 else []), *(["IPv6"] if v6 else [])]
    for col in (*columns, "gateway", "DHCP client", "lease expires", "ports"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        clients = []
        if r["dhcp_client"]:
            clients.append(f"{r['dhcp_client']} {r['dhcp_pid'] or ''} {alive(r['dhcp_alive'])}")
        if data.get("dhcp6") not in (None, "-"):
            clients.append(f"{data['dhcp6']} -6 {r['dhcp6_pid'] or ''} {alive(r['dhcp6_alive'])}")
        pending = ", ".join(r["ipv6_pending"])
        addresses = [r["ipv4"] or "[red]none[/red]"] if v4 else []
        if v6:
            addresses.append(r["ipv6"] or (f"[yellow]{escape(pending)}[/yellow]" if pending else "[red]none[/red]"))
        table.add_row(
            r["name"],
            r["interface"],
            r["mac"] or "-",
            *addresses,
            (r["gateway"] if v4 else None) or r["gateway6"] or "-",
            ", ".join(clients) or "-",
            (r["lease_expires"] or r["lease6_expires"] or "-").replace("+00:00", "Z"),
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


PORTS_WARN = 90  # percent of a port range in use past which top shows it in red


def ports_used(in_use: int, ports: int) -> tuple[str, bool]:
    """ "61,200 / 64,512 (95%)" and whether it is past PORTS_WARN; 100% only when every port is in use."""
    pct = 100.0 * in_use / ports if ports else 0.0
    shown = pct if in_use >= ports else min(pct, 99.0)
    return f"{in_use:,} / {ports:,} ({shown:.0f}%)", pct > PORTS_WARN


def _top_cells(r: dict[str, Any]) -> list[str]:
    mark = "~" if r.get("estimated") else ""
    text, hot = ports_used(r["ports_in_use"], r["ports"])
    return [
        f"{mark}{r['established']:,}",
        f"{mark}{r['syn_sent']:,}",
        f"{mark}{r['time_wait']:,}",
        f"{mark}{r['closing']:,}",
        f"[bold red]{text}[/bold red]" if hot else text,
    ]


def top_table(snap: dict[str, Any], max_rows: int | None = None) -> Table:
    """multiip top's table: a row per source IP and the totals; past ``max_rows`` only the fullest rows."""
    rows = snap["namespaces"]
    shown = rows
    if max_rows is not None and len(rows) > max_rows:
        fullest = sorted(rows, key=lambda r: r["ports_in_use"] / (r["ports"] or 1), reverse=True)[: max(max_rows, 1)]
        chosen = {id(r) for r in fullest}
        shown = [r for r in rows if id(r) in chosen]
    title = (
        f"multiip top · prefix {snap['prefix']} · {snap['mode']} · {snap['time'][11:19]} UTC · "
        f"sampled in {snap['sample_seconds'] * 1000:,.0f} ms"
    )
    table = Table(title=title, title_justify="left", show_footer=True)
    first = "label" if snap["mode"] == "alias" else "namespace"
    total = snap["total"]
    estimated = any(r.get("estimated") for r in rows)
    footer = [f"total ({len(rows)})", "", *_top_cells({**total, "estimated": estimated})]
    columns = (first, "IP", "established", "connecting", "time-wait", "closing", "ports in use")
    for col, foot in zip(columns, footer, strict=True):
        table.add_column(col, footer=foot, no_wrap=True, justify="left" if col in (first, "IP") else "right")
    for r in shown:
        table.add_row(escape(r["name"]), r["ip"] or "[red]none[/red]", *_top_cells(r))
    if len(shown) < len(rows):
        table.add_row(f"… {len(rows) - len(shown)} more", "", "", "", "", "", "")
    if estimated:
        table.caption = "~: split by state from an earlier dump (dumps are rationed; the sums are exact)"
    return table


def top_line(snap: dict[str, Any]) -> str:
    """One compact line of a refresh, for logs and pipes."""
    t = snap["total"]
    text, _ = ports_used(t["ports_in_use"], t["ports"])
    line = (
        f"{snap['time']} {snap['prefix']}: {len(snap['namespaces'])} IPs, established {t['established']:,}, "
        f"connecting {t['syn_sent']:,}, time-wait {t['time_wait']:,}, closing {t['closing']:,}, ports {text}"
    )
    rows = snap["namespaces"]
    if rows:
        top = max(rows, key=lambda r: r["ports_in_use"] / (r["ports"] or 1))
        fullest, hot_one = ports_used(top["ports_in_use"], top["ports"])
        line += f"; fullest {top['name']} {top['ip'] or '-'} {fullest}" + (" PORTS NEARLY EXHAUSTED" if hot_one else "")
    else:
        line += "; no namespace (yet)"
    return line


class TopView:
    """Shows each refresh of multiip top: the table redrawn in place on a terminal, a line elsewhere."""

    def __init__(self) -> None:
        self.live = Live(console=console, auto_refresh=False) if console.is_terminal else None

    def __enter__(self) -> TopView:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self.live is not None:
            self.live.__exit__(kind, value, tb)

    def __call__(self, snap: dict[str, Any]) -> None:
        if self.live is None:
            console.print(top_line(snap), markup=False, soft_wrap=True)
        else:
            self.live.update(top_table(snap, max(console.height - 10, 1)), refresh=True)
