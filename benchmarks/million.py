"""16 namespaces x 64,512 = 1,032,192 connections held from one host to one lab ip:port, and what one
refresh of `multiip top` costs while they are held; then all 18 namespaces' 1,161,216, to show the lab's
sink holds more than 1.1 million; and, in the same run, one IP's full range with plain connect() (the
kernel's port search) against explicit bind().

`two-million` (benchmarks/run.py two-million): 32 x 64,512 = 2,064,384 held, both ends on this machine;
memory per connection per end measured (kernel slab, the workers' and the sink's PSS) against what
hold's preflight predicts, MemAvailable at the peak. It stops the ramp (and says so) if MemAvailable
falls under 1 GiB, before the kernel's OOM killer would act."""

from __future__ import annotations

import random
import string
from typing import Any

from common import lab_up, meminfo, memory_of, save, show, sysctls

from multiip import execute, hold, lab, render, top, ui
from multiip.plan import make_plan

COUNT = 16
SINK_COUNT = 18  # 18 x 64,512 = 1,161,216 > 1.1 million
PER_IP = 64512
FLOOR = 2**30  # MemAvailable under this during the ramp: stop it


class Guarded(ui.HoldProgress):
    """hold's progress that ends the ramp (as Ctrl-C does) when memory runs short; the lowest seen kept."""

    lowest = 2**62
    stopped = False

    def __call__(self, established: int, target: int, rate: float, phase: str) -> None:
        avail = meminfo()["MemAvailable"]
        self.lowest = min(self.lowest, avail)
        if avail < FLOOR:
            self.stopped = True
            raise KeyboardInterrupt
        super().__call__(established, target, rate, phase)


def main() -> dict[str, Any]:
    return held(COUNT, SINK_COUNT, "million")


def two_million() -> dict[str, Any]:
    return held(32, 32, "two-million")


def held(count: int, sink_count: int, name: str) -> dict[str, Any]:
    """count x 64,512 held for 5 s, memory and top's refresh measured at the peak; with "million" also the
    sink test (sink_count namespaces at once) and one IP's range bound against plain connect()."""
    tag = "".join(random.choices(string.ascii_lowercase, k=4))
    total = count * PER_IP
    most = sink_count * PER_IP
    limits = {"fs.file-max": 4 * most, "net.netfilter.nf_conntrack_max": 2 * most}
    extra: dict[str, Any] = {}
    with sysctls(limits) as raised, lab_up(f"bm{tag}", leases=64, capacity=most + 50_000) as the_lab:
        plan = make_plan(prefix=f"b{tag}", count=sink_count)
        execute.run_script(render.setup_script(plan), show, within=lab.enter(the_lab, []))
        try:
            server = hold.Server(the_lab.lan_ip, the_lab.port)
            every = hold.plan_shares(plan.target, PER_IP)
            shares = every[:count]
            for note in hold.preflight(shares):
                ui.console.print(f"bench: {note}", markup=False)
            workers = sum(len(s.workers) for s in shares)
            per_connection = 2 * hold.KERNEL_BYTES_PER_SOCKET + hold.WORKER_BYTES_PER_SOCKET  # as preflight
            predicted = {
                "kernel_bytes_per_connection_per_end": hold.KERNEL_BYTES_PER_SOCKET,
                "worker_bytes_per_connection": hold.WORKER_BYTES_PER_SOCKET,
                "bytes_in_all": round(total * per_connection + workers * hold.WORKER_BASE_BYTES),
            }
            before = meminfo()
            at_hold: dict[str, Any] = {}

            def measure() -> None:
                at_hold["mem"] = meminfo()
                at_hold["workers"] = memory_of(b"multiip.holdworker")
                at_hold["sink"] = memory_of(b"multiip.sink")
                record = top.read_record(plan.target)
                assert record is not None
                at_hold["top"] = top.cost(record)  # top setns()-es into each namespace: from any

            progress = Guarded(total)
            with progress:
                million = hold.hold(shares, server, 5.0, 0.0, progress, on_hold=measure)
            established = million["established"]
            if "mem" not in at_hold:
                raise RuntimeError(f"ramp stopped at {established:,}: MemAvailable under {FLOOR / 2**30:.0f} GiB")
            slab = at_hold["mem"]["Slab"] - before["Slab"]
            used = before["MemAvailable"] - at_hold["mem"]["MemAvailable"]
            measured = slab + at_hold["workers"][1]
            if name == "million":
                with ui.HoldProgress(most) as sink_progress:
                    sink = hold.hold(every, server, 2.0, 0.0, sink_progress)
                one = shares[:1]
                with ui.HoldProgress(PER_IP) as bound_progress:
                    bound = hold.hold(one, server, 0.0, 0.0, bound_progress)
                with ui.HoldProgress(PER_IP) as plain_progress:
                    plain = hold.hold(one, server, 0.0, 0.0, plain_progress, bind=False)
                extra = {
                    "sink_test_target": most,
                    "sink_test_established": sink["established"],
                    "sink_test_ramp_seconds": sink["seconds"],
                    "one_ip_bind_seconds": bound["seconds"],
                    "one_ip_bind_established": bound["established"],
                    "one_ip_plain_connect_seconds": plain["seconds"],
                    "one_ip_plain_connect_established": plain["established"],
                    "plain_over_bind": round(plain["seconds"] / bound["seconds"], 1),
                }
        finally:
            execute.run_script(render.teardown_script(plan.target), show, within=lab.enter(the_lab, []))
    result = {
        "namespaces": count,
        "target": total,
        "established": established,
        "failed": million["failed"],
        "ramp_seconds": million["seconds"],
        "rate_per_second": million["rate"],
        "kernel_slab_bytes_per_connection_both_ends": round(slab / established),
        "mem_available_drop_bytes_per_connection_both_ends": round(used / established),
        "mem_total_bytes": before["MemTotal"],
        "mem_available_before_bytes": before["MemAvailable"],
        "mem_available_at_peak_bytes": at_hold["mem"]["MemAvailable"],
        "mem_available_lowest_in_ramp_bytes": progress.lowest,
        "holdworker_processes": at_hold["workers"][0],
        "holdworker_pss_bytes_per_connection": round(at_hold["workers"][1] / established),
        "sink_processes": at_hold["sink"][0],
        "sink_pss_bytes_per_connection": round(at_hold["sink"][1] / established),
        "preflight_predicted": predicted,
        "measured_slab_and_workers_bytes": measured,
        "predicted_over_measured": round(predicted["bytes_in_all"] / measured, 3),
        "top_at_peak": at_hold["top"],
        **extra,
        "limits_raised_for_the_run": raised,
    }
    save(name, result)
    return result


if __name__ == "__main__":
    main()
