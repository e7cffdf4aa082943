"""Scale and speed, each figure measured in this run, as the lab host:

- 300 namespaces with static addresses: `multiip run` against the seed-style loop (one `ip` per step,
  `ip netns exec` per namespace, the same devices and addresses), and the exported script against `run`;
- 1000 namespaces: `run` (static addresses) and `down`, and the CPU one broadcast and one multicast frame
  from the LAN cost this host with them and without;
- 200 namespaces all holding a DHCP lease (lab server with its ping check off), and DHCP client memory
  per namespace for udhcpc, dhclient and dhcpcd;
- 1000 namespaces with DHCP, with the host-wide ARP and backlog limits raised for the run.
Each DHCP run also counts what `down` left at the lab's server: leases it still holds, datagrams it dropped.
Each mode's run and down (and the host's connectivity gap) are in modes.py.
"""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import lab_up, memory_of, save, sysctls

from multiip import lab as labmod
from multiip import state
from multiip.plan import make_target
from multiip.top import parse_snmp

SEED_LOOP = r"""
set -e
P=$1 N=$2 BASE=$3
ip link add br0 type bridge stp_state 0
ip link set dev br0 up
for ((i = 0; i < N; i++)); do
  ip link add "$P-t$i" type veth peer name "$P-b$i"
  ip netns add "$P$i"
  ip link set "$P-t$i" netns "$P$i"
  ip link set "$P-b$i" master br0
  ip netns exec "$P$i" ip link set dev "$P-t$i" up
  ip link set dev "$P-b$i" up
  ip netns exec "$P$i" ip link set dev lo up
  ip netns exec "$P$i" ip address add "198.18.$((BASE + i / 250)).$((1 + i % 250))/15" dev "$P-t$i"
  ip netns exec "$P$i" sysctl -q -w net.ipv4.ip_local_port_range="1024 65535"
done
"""


def timed(argv: list[str], netns: str, env: dict[str, str] | None = None) -> float:
    t0 = time.monotonic()
    cp = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", *argv], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - t0
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed: {cp.stderr[-2000:]}")
    return round(elapsed, 3)


def multiip(*args: str) -> list[str]:
    return [sys.executable, "-m", "multiip", *args]


def tag() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=4))


def seed_down(prefix: str, n: int, netns: str) -> None:
    """Remove what the seed loop made (it keeps no record for multiip down), by exact name."""
    batch = "".join(f"link del dev {prefix}-b{i}\nnetns del {prefix}{i}\n" for i in range(n)) + "link del dev br0\n"
    subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "ip", "-batch", "-"], input=batch, text=True, check=True)


def down(prefix: str, netns: str) -> float:
    return timed(multiip("down", "--prefix", prefix, "--yes"), netns)


def seed_vs_run(host: str) -> dict[str, Any]:
    n, p = 300, f"s{tag()}"
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp, "seed.sh")
        seed.write_text(SEED_LOOP)
        seed_s = timed(["bash", str(seed), p, str(n), "100"], host)
        seed_down(p, n, host)
        args = ["--count", str(n), "--prefix", p, "--dhcp", "none", "--address", "198.18.100.1/16"]
        run_s = timed(multiip("run", *args, "--yes"), host)
        down(p, host)
        script = Path(tmp, "setup.sh")
        script.write_text(subprocess.run(multiip("render", *args), capture_output=True, text=True, check=True).stdout)
        script_s = timed(["bash", str(script)], host)
        down(p, host)
    return {
        "namespaces": n,
        "seed_loop_seconds": seed_s,
        "run_seconds": run_s,
        "seed_over_run": round(seed_s / run_s, 1),
        "exported_script_seconds": script_s,
        "script_over_run": round(script_s / run_s, 2),
    }


SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[3])):
    s.sendto(b"x" * 300, (sys.argv[2], 9))
    if i % 20 == 19:
        time.sleep(0.02)
"""


def busy_ticks() -> int:
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait, on every core


def flood_cpu_ms(the_lab: labmod.Lab, destination: str, count: int = 200) -> float:
    """CPU of the whole machine per datagram the LAN sends to DESTINATION (a broadcast or multicast the
    bridge floods), less the same time's idle load; after the sends, 1 s for the copies to drain."""
    t0, b0 = time.monotonic(), busy_ticks()
    time.sleep(2)
    idle_rate = (busy_ticks() - b0) / (time.monotonic() - t0)
    t0, b0 = time.monotonic(), busy_ticks()
    sender = [sys.executable, "-c", SEND, str(the_lab.lan_ip), destination, str(count)]
    subprocess.run(["nsenter", f"--net=/run/netns/{the_lab.lan_ns}", *sender], check=True)
    time.sleep(1)
    ticks = busy_ticks() - b0 - idle_rate * (time.monotonic() - t0)
    return round(max(ticks, 0) * 1000 / os.sysconf("SC_CLK_TCK") / count, 2)


def flood_costs(the_lab: labmod.Lab) -> dict[str, float]:
    return {"broadcast": flood_cpu_ms(the_lab, "255.255.255.255"), "multicast": flood_cpu_ms(the_lab, "224.0.0.251")}


def thousand(the_lab: labmod.Lab) -> dict[str, Any]:
    n, p, host = 1000, f"k{tag()}", the_lab.host_ns
    args = ["--count", str(n), "--prefix", p, "--dhcp", "none", "--address", "198.18.100.1/16"]
    without = flood_costs(the_lab)
    run_s = timed(multiip("run", *args, "--yes"), host)
    with_setup = flood_costs(the_lab)
    down_s = down(p, host)
    return {
        "namespaces": n,
        "run_seconds": run_s,
        "down_seconds": down_s,
        # what one frame from the LAN that the bridge floods costs this host (the namespaces take broadcasts,
        # and an IPv4 setup none of the LAN's multicast)
        "lan_frame_cpu_ms_without_the_setup": without,
        "lan_frame_cpu_ms_with_the_setup": with_setup,
    }


def server_leases(the_lab: labmod.Lab) -> int:
    return len((the_lab.state_dir / "dnsmasq.leases").read_text().splitlines())


def server_receive_errors(the_lab: labmod.Lab) -> int:
    """UDP datagrams the lab's server namespace dropped for a full socket buffer (/proc/net/snmp)."""
    snmp = subprocess.run(["nsenter", f"--net=/run/netns/{the_lab.lan_ns}", "cat", "/proc/net/snmp"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    return parse_snmp(snmp)["Udp"]["RcvbufErrors"]


def dhcp(the_lab: labmod.Lab, n: int, client: str) -> dict[str, Any]:
    p = f"d{tag()}"
    leases_before = server_leases(the_lab)
    args = ["--count", str(n), "--prefix", p, "--dhcp", client, "--lease-timeout", "120", "--yes"]
    run_s = timed(multiip("run", *args), the_lab.host_ns)
    rows = state.status(make_target(p))["namespaces"]
    leased = sum(1 for r in rows if r["ipv4"])
    # dhcpcd forks privilege-separation helpers whose command lines do not name the interface
    processes, pss, rss = memory_of(b"dhcpcd" if client == "dhcpcd" else f"{p}-t".encode())
    dropped_before = server_receive_errors(the_lab)
    down_s = down(p, the_lab.host_ns)
    return {
        "namespaces": n,
        "client": client,
        "seconds_to_every_lease": run_s,
        "leased": leased,
        "client_processes": processes,
        "client_rss_mib_per_namespace": round(rss / n / 2**20, 2),
        "client_pss_mib_per_namespace": round(pss / n / 2**20, 2),
        "down_seconds": down_s,
        # every release seen: the server holds as many leases after `down` as before `run`
        "server_leases_left_after_down": server_leases(the_lab) - leases_before,
        "server_datagrams_dropped_during_down": server_receive_errors(the_lab) - dropped_before,
    }


def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with lab_up(f"sc{tag()}", leases=1200, capacity=1000) as the_lab:
        out["seed_vs_run_300"] = seed_vs_run(the_lab.host_ns)
        out["static_1000"] = thousand(the_lab)
        out["dhcp_200"] = dhcp(the_lab, 200, "auto")
        out["dhcp_client_memory"] = [dhcp(the_lab, 20, c) for c in ("udhcpc", "dhclient", "dhcpcd")]
        limits = {
            "net.ipv4.neigh.default.gc_thresh1": 2048,
            "net.ipv4.neigh.default.gc_thresh2": 4096,
            "net.ipv4.neigh.default.gc_thresh3": 8192,
            "net.core.netdev_max_backlog": 4096,
        }
        with sysctls(limits) as raised:
            out["dhcp_1000"] = dhcp(the_lab, 1000, "auto")
            out["dhcp_1000"]["limits_raised_for_the_run"] = raised
    save("scale", out)
    return out


if __name__ == "__main__":
    main()
