"""IPv6, measured in this run as the lab host: how long until every one of 20 and 200 namespaces has a
usable IPv6 address (DAD done), by SLAAC and by DHCPv6 (--mode bridge, --family 6), as the whole `run` and
as its last step alone (addresses, from the moment the namespaces exist); and `hold`'s ramp to one ip:port
over IPv6 against IPv4 from the same dual-stack setup of 4 namespaces (4 x 64,512 each way).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from common import lab_up, save, until_none_held
from scale import multiip, tag

from multiip import lab as labmod

FULL = 64512


def run_timed(the_lab: labmod.Lab, args: list[str]) -> dict[str, float]:
    """`run` as the lab host: its seconds in all, and those of its last step (the addresses)."""
    argv = ["nsenter", f"--net=/run/netns/{the_lab.host_ns}", "--", *multiip("run", *args, "--yes")]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    last_step = None
    tail: list[str] = []
    for line in proc.stderr:
        tail = [*tail[-20:], line]
        if line.removeprefix("multiip: ").startswith(("[4/4]", "[6/6]")):
            last_step = time.monotonic()
    if proc.wait() != 0 or last_step is None:
        raise RuntimeError(f"run {' '.join(args)} failed: {''.join(tail)}")
    end = time.monotonic()
    return {"run_seconds": round(end - t0, 2), "address_seconds": round(end - last_step, 2)}


def time_to_ipv6(the_lab: labmod.Lab, n: int, how: str) -> dict[str, Any]:
    p = f"s{tag()}"
    args = ["--mode", "bridge", "--prefix", p, "--count", str(n), "--family", "6", "--lease-timeout", "120"]
    got = run_timed(the_lab, args + (["--dhcp6"] if how == "dhcpv6" else []))
    st = json.loads(subprocess.run(multiip("status", "--prefix", p, "--json"), capture_output=True, text=True,
                                   check=True).stdout)  # fmt: skip
    ready = sum(1 for r in st["namespaces"] if r["ipv6"])
    subprocess.run(["nsenter", f"--net=/run/netns/{the_lab.host_ns}", "--", *multiip("down", "--prefix", p, "--yes")],
                   check=True, capture_output=True)  # fmt: skip
    return {"namespaces": n, "by": how, "ready": ready, **got}


def ramp(the_lab: labmod.Lab) -> dict[str, Any]:
    p = f"h{tag()}"
    subprocess.run(["nsenter", f"--net=/run/netns/{the_lab.host_ns}", "--",
                    *multiip("run", "--mode", "macvlan", "--prefix", p, "--count", "4", "--family", "dual", "--yes")],
                   check=True, capture_output=True)  # fmt: skip
    out: dict[str, Any] = {}
    try:
        for family, server in (("ipv4", f"{the_lab.lan_ip}:{the_lab.port}"),
                               ("ipv6", f"[{the_lab.lan_ip6}]:{the_lab.port}")):  # fmt: skip
            cp = subprocess.run(multiip("hold", server, "--prefix", p, "--duration", "0", "--json"),
                                capture_output=True, text=True, check=True)  # fmt: skip
            held = json.loads(cp.stdout)
            out[family] = {k: held[k] for k in ("target", "established", "seconds", "rate")}
            until_none_held(lambda: labmod.sink_stats(the_lab)["held"], 60)  # before the next family's ramp
    finally:
        subprocess.run(["nsenter", f"--net=/run/netns/{the_lab.host_ns}", "--",
                        *multiip("down", "--prefix", p, "--yes")], check=False, capture_output=True)  # fmt: skip
    return out


def main() -> dict[str, Any]:
    out: dict[str, Any] = {"time_to_ipv6": []}
    with lab_up(f"6s{tag()}", leases=500, capacity=4 * FULL + 10_000, ipv6="slaac") as the_lab:
        out["time_to_ipv6"] += [time_to_ipv6(the_lab, n, "slaac") for n in (20, 200)]
        out["hold_ramp_same_setup"] = ramp(the_lab)
    with lab_up(f"6d{tag()}", leases=500, capacity=1000, ipv6="dhcpv6") as the_lab:
        out["time_to_ipv6"] += [time_to_ipv6(the_lab, n, "dhcpv6") for n in (20, 200)]
    save("ipv6", out)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
