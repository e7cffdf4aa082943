"""multiip next to its peers, each comparison within this run, on the same lab host:

- 300 namespaces with static addresses: `multiip run` (bridge), the seed's per-namespace loop
  (scale.SEED_LOOP: one `ip` per step, `ip netns exec` per namespace) and a container runtime's way, CNI's
  `bridge` plugin with `host-local` IPAM (Debian's containernetworking-plugins): `ip netns add` and one
  ADD per namespace, 2 at a time; each measured twice, in turns;
- `hold` from 4 namespaces (4 x 64,512 connections, wall time from start to every connection held and
  closed) next to a minimal C client doing the same job from the same namespaces (benchmarks/holdc.c: the
  same bind-per-port, 512 in flight, epoll; 4 processes per namespace, as hold's workers), on a quiet
  machine and with two busy loops sharing the cores; in turns, twice each; to the lab's sink (Python) and
  to nginx (C, 14 workers) on the LAN, a server of another make.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import lab_up, save, until_none_held
from scale import SEED_LOOP, down, multiip, seed_down, tag, timed
from test_exec import established, nginx_on_the_lan

from multiip import lab as labmod

N = 300
FULL = 64512
CNI_DIR = Path("/usr/lib/cni")
CNI_ONE = r"""
set -e
ip netns add "$1"
CNI_COMMAND=ADD CNI_CONTAINERID="$1" CNI_NETNS="/run/netns/$1" CNI_IFNAME=eth0 CNI_PATH={cni} \
  {cni}/bridge <"$2" >/dev/null
"""
CNI_DEL = r"""
for ((i = 0; i < $2; i++)); do
  CNI_COMMAND=DEL CNI_CONTAINERID="$1$i" CNI_NETNS="/run/netns/$1$i" CNI_IFNAME=eth0 CNI_PATH={cni} \
    {cni}/bridge <"$3" >/dev/null || true
  ip netns del "$1$i"
done
ip link del cnibench0 2>/dev/null || true
"""
NGINX_PORT = 8080
NGINX_WORKERS = 14  # 19,900 connections each: 278,600 >= 4 x 64,512
BUSY = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end: pass\n"


def in_host(the_lab: labmod.Lab, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{the_lab.host_ns}", "--", *argv]


def cni(the_lab: labmod.Lab, tmp: Path) -> float:
    """Seconds for N namespaces by CNI's bridge plugin, 2 at a time; then they go (not timed)."""
    p = f"c{tag()}"
    conf = tmp / "cni.json"
    conf.write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "multiip-bench", "type": "bridge", "bridge": "cnibench0",
        "isGateway": False, "ipMasq": False,
        "ipam": {"type": "host-local", "dataDir": str(tmp / "ipam"),
                 "ranges": [[{"subnet": "198.18.0.0/16", "rangeStart": "198.18.120.1", "rangeEnd": "198.18.127.254"}]]},
    }))  # fmt: skip
    one = tmp / "cni-one.sh"
    one.write_text(CNI_ONE.format(cni=CNI_DIR))
    names = "\n".join(f"{p}{i}" for i in range(N))
    t0 = time.monotonic()
    subprocess.run(in_host(the_lab, ["xargs", "-P", "2", "-I", "{}", "bash", str(one), "{}", str(conf)]),
                   input=names, text=True, check=True)  # fmt: skip
    seconds = time.monotonic() - t0
    delete = tmp / "cni-del.sh"
    delete.write_text(CNI_DEL.format(cni=CNI_DIR))
    subprocess.run(in_host(the_lab, ["bash", str(delete), p, str(N), str(conf)]), check=True)
    shutil.rmtree(tmp / "ipam", ignore_errors=True)
    return round(seconds, 3)


def seed(the_lab: labmod.Lab, tmp: Path) -> float:
    p = f"s{tag()}"
    script = tmp / "seed.sh"
    script.write_text(SEED_LOOP)
    seconds = timed(["bash", str(script), p, str(N), "100"], the_lab.host_ns)
    seed_down(p, N, the_lab.host_ns)
    return seconds


def run(the_lab: labmod.Lab, tmp: Path) -> float:
    p = f"r{tag()}"
    seconds = timed(multiip("run", "--count", str(N), "--prefix", p, "--dhcp", "none", "--address", "198.18.100.1/16",
                            "--yes"), the_lab.host_ns)  # fmt: skip
    down(p, the_lab.host_ns)
    return seconds


def setups(the_lab: labmod.Lab) -> dict[str, Any]:
    got: dict[str, list[float]] = {"run": [], "seed_loop": [], "cni_bridge": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(2):
            got["run"].append(run(the_lab, Path(tmp)))
            got["seed_loop"].append(seed(the_lab, Path(tmp)))
            got["cni_bridge"].append(cni(the_lab, Path(tmp)))
    return {
        "namespaces": N,
        "seconds": got,
        "seed_over_run": [round(s / r, 1) for s, r in zip(got["seed_loop"], got["run"], strict=True)],
        "cni_over_run": [round(c / r, 1) for c, r in zip(got["cni_bridge"], got["run"], strict=True)],
    }


def c_client(the_lab: labmod.Lab, prefix: str, holdc: Path, port: int) -> dict[str, Any]:
    rows = json.loads(subprocess.run(multiip("status", "--prefix", prefix, "--json"), capture_output=True,
                                     text=True, check=True).stdout)["namespaces"]  # fmt: skip
    quarter = FULL // 4
    t0 = time.monotonic()
    argv = [
        ["nsenter", f"--net=/run/netns/{r['name']}", "--", str(holdc), r["ipv4"].split("/")[0],
         str(1024 + k * quarter), str(1023 + (k + 1) * quarter), str(the_lab.lan_ip), str(port)]
        for r in rows
        for k in range(4)
    ]  # fmt: skip
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, text=True) for a in argv]
    outs = [json.loads(p.communicate()[0]) for p in procs]
    seconds = time.monotonic() - t0
    return {"seconds": round(seconds, 2), "established": sum(o["est"] for o in outs),
            "failed": sum(o["fail"] for o in outs), "slowest_ramp": max(o["ramp"] for o in outs)}  # fmt: skip


def hold(the_lab: labmod.Lab, prefix: str, port: int) -> dict[str, Any]:
    t0 = time.monotonic()
    cp = subprocess.run(multiip("hold", f"{the_lab.lan_ip}:{port}", "--prefix", prefix, "--duration", "0",
                                "--json"), capture_output=True, text=True, check=True)  # fmt: skip
    seconds = time.monotonic() - t0
    held = json.loads(cp.stdout)
    return {"seconds": round(seconds, 2), "established": held["established"], "ramp": held["seconds"]}


def holds(the_lab: labmod.Lab, tmp: Path) -> dict[str, Any]:
    holdc = tmp / "holdc"
    subprocess.run(["gcc", "-O2", "-o", str(holdc), str(Path(__file__).parent / "holdc.c")], check=True)
    p = f"h{tag()}"
    subprocess.run(in_host(the_lab, multiip("run", "--mode", "macvlan", "--prefix", p, "--count", "4", "--dhcp",
                                            "none", "--address", "198.18.130.1/16", "--yes")),
                   check=True, capture_output=True)  # fmt: skip
    out: dict[str, Any] = {}
    servers = [
        ("lab_sink", the_lab.port, lambda: labmod.sink_stats(the_lab)["held"]),
        ("nginx", NGINX_PORT, lambda: established(the_lab.lan_ns, NGINX_PORT)),
    ]
    try:
        with nginx_on_the_lan(the_lab, tmp, workers=NGINX_WORKERS):
            for server, port, held in servers:
                for load in ("quiet", "busy"):
                    out[f"{server}_{load}"] = trials(the_lab, p, holdc, port, held, busy=2 if load == "busy" else 0)
    finally:
        subprocess.run(in_host(the_lab, multiip("down", "--prefix", p, "--yes")), check=False, capture_output=True)
    return out


def trials(the_lab: labmod.Lab, p: str, holdc: Path, port: int, held: Callable[[], int], busy: int) -> dict[str, Any]:
    """The C client and hold in turns, twice each, to one server (``held``: what it holds now), with ``busy``
    busy loops meanwhile."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    got: dict[str, list[dict[str, Any]]] = {"c": [], "hold": []}
    try:
        for _ in range(2):
            until_none_held(held)
            got["c"].append(c_client(the_lab, p, holdc, port))
            until_none_held(held)
            got["hold"].append(hold(the_lab, p, port))
    finally:
        for b in loops:
            b.kill()
            b.wait()
    ratios = [round(c["seconds"] / h["seconds"], 2) for c, h in zip(got["c"], got["hold"], strict=True)]
    return {**got, "c_over_hold": ratios}


def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with lab_up(f"pe{tag()}", leases=64, capacity=4 * FULL + 10_000) as the_lab:
        out["setup_300"] = setups(the_lab)
        with tempfile.TemporaryDirectory() as tmp:
            out["hold_258048"] = holds(the_lab, Path(tmp))
    save("peers", out)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
