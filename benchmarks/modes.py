"""Each mode, measured in this run as the lab host: `run` and `down` of 300 and 1000 static setups (2000
for macvlan, which has no bridge), and the host's own connectivity gap meanwhile: a prober in the lab host
connects to the lab's sink every 10 ms, and the longest time between two connections that succeeded is
the gap (the bridge moves the uplink; the other modes never touch it). ipvlan is measured where the
kernel makes ipvlan links; elsewhere the result says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from common import lab_up, save, sysctls
from helpers import ipvlan_works  # tests/helpers.py
from scale import multiip, tag, timed

from multiip import lab as labmod

# The prober: bounded in time (PROBE_LIMIT s) and in count; prints its figures on SIGTERM.
PROBE = r"""
import json, signal, socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
start = last = time.monotonic()
gap = 0.0
tries = ok = 0
while not stop and time.monotonic() - start < limit:
    tries += 1
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        now = time.monotonic()
        gap, last, ok = max(gap, now - last), now, ok + 1
    except OSError:
        pass
    time.sleep(0.01)
gap = max(gap, time.monotonic() - last)
print(json.dumps({"longest_gap_ms": round(gap * 1000, 1), "connects": ok, "tries": tries}))
"""
PROBE_LIMIT = 300.0


def gap_during(the_lab: labmod.Lab, argv: list[str]) -> tuple[float, dict[str, Any]]:
    """Seconds ``argv`` took as the lab host, and the host's longest connectivity gap meanwhile."""
    probe = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{the_lab.host_ns}", "--", sys.executable, "-c", PROBE,
         str(the_lab.lan_ip), str(the_lab.port), str(PROBE_LIMIT)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        subprocess.run(["sleep", "0.3"], check=True)  # the prober's first connections
        seconds = timed(argv, the_lab.host_ns)
        subprocess.run(["sleep", "0.3"], check=True)
    finally:
        probe.send_signal(signal.SIGTERM)
        out, _ = probe.communicate(timeout=10)
    return seconds, json.loads(out)


def one(the_lab: labmod.Lab, mode: str, n: int) -> dict[str, Any]:
    p = f"b{tag()}"
    if mode == "alias":
        args = ["--mode", "alias", "--count", str(n), "--prefix", p, "--address", "198.18.100.1/16"]
    else:
        args = ["--mode", mode, "--count", str(n), "--prefix", p, "--dhcp", "none", "--address", "198.18.100.1/16"]
    run_s, run_gap = gap_during(the_lab, multiip("run", *args, "--yes"))
    down_s, down_gap = gap_during(the_lab, multiip("down", "--prefix", p, "--yes"))
    return {
        "run_seconds": run_s,
        "down_seconds": down_s,
        "host_gap_during_run_ms": run_gap["longest_gap_ms"],
        "host_gap_during_down_ms": down_gap["longest_gap_ms"],
    }


def measure(only: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Every mode at 300 and 1000 (2000 for macvlan), or at ``only``; on this kernel."""
    out: dict[str, Any] = {"kernel": os.uname().release}
    # 2000 macvlans: one broadcast is copied to every one of them at once (the per-CPU backlog)
    with (
        lab_up(f"mo{tag()}", leases=64, capacity=1000) as the_lab,
        sysctls({"net.core.netdev_max_backlog": 8192}) as raised,
    ):
        for mode in ("bridge", "macvlan", "ipvlan", "alias"):
            if mode == "ipvlan" and not ipvlan_works(the_lab.host_ns):
                out[mode] = "not measured: this kernel makes no ipvlan links (CONFIG_IPVLAN unset)"
                continue
            counts = only or ((300, 1000, 2000) if mode == "macvlan" else (300, 1000))
            out[mode] = {str(n): one(the_lab, mode, n) for n in counts}
        out["limits_raised_for_the_run"] = raised
    return out


def main() -> dict[str, Any]:
    out = measure()
    save("modes", out)
    return out


if __name__ == "__main__":  # `modes.py 300`: those counts only, the results as JSON on stdout (the test kernel's run)
    print(json.dumps(measure(tuple(int(n) for n in sys.argv[1:]) or None)))
