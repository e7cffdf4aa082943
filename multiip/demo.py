"""The README's main job in one command: a lab, a setup inside it, its status, then everything removed."""

from __future__ import annotations

import random
import string
from typing import Any

from multiip import execute, hold, lab, render, state, ui
from multiip.plan import make_plan

HOLD_SECONDS = 3.0


def run(count: int, mode: str = "bridge") -> dict[str, Any]:
    """Lab up, `run --count N` as the lab host, status table, hold N x 64,512 connections to the lab's
    sink, teardown: also on Ctrl-C or failure. Returns the hold's result."""
    tag = "".join(random.choices(string.ascii_lowercase, k=4))  # names no other run uses
    the_lab = lab.make_lab(name=f"demo{tag}", leases=max(64, count * 2), capacity=count * 64512 + 10_000)
    # --mode alias takes static addresses: the lab's, after its host's (198.18.0.2) and before its DHCP pool
    addresses = ",".join(str(the_lab.host_ip + 14 + i) for i in range(count)) if mode == "alias" else None
    plan = make_plan(prefix=f"d{tag}", count=count, mode=mode, addresses=addresses)
    target = plan.target
    with ui.ScriptProgress(f"multiip demo: lab {the_lab.name} (a host on a LAN, all in namespaces)") as show:
        execute.run_script(lab.up_script(the_lab), show)
    try:
        with ui.ScriptProgress(
            f"multiip run --mode {mode} --count {count} --prefix {target.prefix}, as the lab host"
        ) as show:
            execute.run_script(render.setup_script(plan), show, within=lab.enter(the_lab, []))
        with execute.entered_netns(the_lab.host_ns):  # as the lab host (--mode alias: its uplink has the addresses)
            ui.status_table(state.status(target))
            server = hold.Server(the_lab.lan_ip, the_lab.port)
            ui.console.print(f"[bold]multiip hold {server} --prefix {target.prefix} --duration {HOLD_SECONDS:g}[/bold]")
            shares = hold.plan_shares(target, None)
            result = ui.with_hold_progress(
                hold.preflight(shares),
                sum(s.count for s in shares),
                lambda p: hold.hold(shares, server, HOLD_SECONDS, 0.0, p),
            )
        ui.hold_table(result)
        return result
    finally:
        with ui.ScriptProgress("multiip down, then the lab") as show:
            try:
                execute.run_script(render.teardown_script(target), show, within=lab.enter(the_lab, []))
            finally:
                execute.run_script(lab.down_script(the_lab), show)
