"""16 namespaces x 64,512 = 1,032,192 connections held from one host to one lab ip:port; then all 18
namespaces' 1,161,216, to show the lab's sink holds more than 1.1 million; and, in the same run, one
IP's full range with plain connect() (the kernel's port search) against explicit bind()."""

from __future__ import annotations

import random
import string
from typing import Any

from common import lab_up, meminfo, memory_of, save, show, sysctls

from multiip import execute, hold, lab, render, ui
from multiip.plan import make_plan

COUNT = 16
SINK_COUNT = 18  # 18 x 64,512 = 1,161,216 > 1.1 million
PER_IP = 64512


def main() -> dict[str, Any]:
    tag = "".join(random.choices(string.ascii_lowercase, k=4))
    total = COUNT * PER_IP
    most = SINK_COUNT * PER_IP
    limits = {"fs.file-max": 4 * most, "net.netfilter.nf_conntrack_max": 2 * most}
    with sysctls(limits) as raised, lab_up(f"bm{tag}", leases=64, capacity=most + 50_000) as the_lab:
        plan = make_plan(prefix=f"b{tag}", count=SINK_COUNT)
        execute.run_script(render.setup_script(plan), show, within=lab.enter(the_lab, []))
        try:
            server = hold.Server(the_lab.lan_ip, the_lab.port)
            every = hold.plan_shares(plan.target, PER_IP)
            shares = every[:COUNT]
            for note in hold.preflight(shares):
                ui.console.print(f"bench: {note}", markup=False)
            before = meminfo()
            at_hold: dict[str, Any] = {}

            def measure() -> None:
                at_hold["mem"] = meminfo()
                at_hold["workers"] = memory_of(b"multiip.holdworker")
                at_hold["sink"] = memory_of(b"multiip.sink")

            with ui.HoldProgress(total) as progress:
                million = hold.hold(shares, server, 5.0, 0.0, progress, on_hold=measure)
            established = million["established"]
            slab = at_hold["mem"]["Slab"] - before["Slab"]
            used = before["MemAvailable"] - at_hold["mem"]["MemAvailable"]
            with ui.HoldProgress(most) as progress:
                sink = hold.hold(every, server, 2.0, 0.0, progress)
            one = shares[:1]
            with ui.HoldProgress(PER_IP) as progress:
                bound = hold.hold(one, server, 0.0, 0.0, progress)
            with ui.HoldProgress(PER_IP) as progress:
                plain = hold.hold(one, server, 0.0, 0.0, progress, bind=False)
        finally:
            execute.run_script(render.teardown_script(plan.target), show, within=lab.enter(the_lab, []))
    result = {
        "namespaces": COUNT,
        "target": total,
        "established": established,
        "failed": million["failed"],
        "ramp_seconds": million["seconds"],
        "rate_per_second": million["rate"],
        "kernel_slab_bytes_per_connection_both_ends": round(slab / established),
        "mem_available_drop_bytes_per_connection_both_ends": round(used / established),
        "holdworker_processes": at_hold["workers"][0],
        "holdworker_pss_bytes_per_connection": round(at_hold["workers"][1] / established),
        "sink_processes": at_hold["sink"][0],
        "sink_pss_bytes_per_connection": round(at_hold["sink"][1] / established),
        "sink_test_target": most,
        "sink_test_established": sink["established"],
        "sink_test_ramp_seconds": sink["seconds"],
        "one_ip_bind_seconds": bound["seconds"],
        "one_ip_bind_established": bound["established"],
        "one_ip_plain_connect_seconds": plain["seconds"],
        "one_ip_plain_connect_established": plain["established"],
        "plain_over_bind": round(plain["seconds"] / bound["seconds"], 1),
        "limits_raised_for_the_run": raised,
    }
    save("million", result)
    return result


if __name__ == "__main__":
    main()
