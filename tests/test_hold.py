"""`multiip hold` and `multiip demo`, as root in the lab: connections to the lab's sink only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import multiip, netns_names, sh

from multiip import lab as labmod

pytestmark = pytest.mark.root


def tcp_sockets(namespace: str) -> int:
    """TCP sockets of any state in a namespace (listening ones included)."""
    return len(sh("ss", "-Htan", netns=namespace).stdout.splitlines())


def holdworkers() -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"multiip.holdworker" in cmd:
            found.append(proc.name)
    return found


@pytest.fixture(scope="module")
def two(lab: labmod.Lab) -> Iterator[str]:
    """A setup of 2 namespaces with DHCP addresses inside the lab, for the module."""
    p = f"h{lab.name[2:]}"
    multiip("run", "--prefix", p, "--count", "2", "--yes", netns=lab.host_ns)
    try:
        yield p
    finally:
        multiip("down", "--prefix", p, "--yes", netns=lab.host_ns)


def server(lab: labmod.Lab) -> str:
    return f"{lab.lan_ip}:{lab.port}"


def assert_nothing_held(lab: labmod.Lab, prefix: str) -> None:
    assert holdworkers() == []
    for ns in (f"{prefix}0", f"{prefix}1"):
        assert tcp_sockets(ns) == 0, sh("ss", "-tan", netns=ns).stdout[:500]
    deadline = time.monotonic() + 60
    while labmod.sink_stats(lab)["held"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert labmod.sink_stats(lab)["held"] == 0


def test_two_ips_hold_exactly_twice_what_one_can(lab: labmod.Lab, two: str) -> None:
    cp = multiip("hold", server(lab), "--prefix", two, "--duration", "1", "--json")
    result = json.loads(cp.stdout)
    assert result["target"] == result["established"] == 2 * 64512 == 129024
    assert result["failed"] == {}
    assert [r["established"] for r in result["namespaces"]] == [64512, 64512]
    assert result["seconds"] > 0
    assert "129,024 connections held" in cp.stderr and "2.0x the 64,512" in cp.stderr
    assert_nothing_held(lab, two)


def test_per_ip_is_honoured_and_the_sink_sees_each_ip(lab: labmod.Lab, two: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "multiip",
            "hold",
            server(lab),
            "--prefix",
            two,
            "--per-ip",
            "1500",
            "--duration",
            "3",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(seen.values()) < 3000:
        seen = labmod.sink_stats(lab)["peers"]
        time.sleep(0.1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["established"] == result["target"] == 3000
    ips = {r["ip"] for r in result["namespaces"]}
    assert {ip: n for ip, n in seen.items() if ip in ips} == dict.fromkeys(ips, 1500)
    assert_nothing_held(lab, two)


def test_ctrl_c_leaves_no_worker_and_no_socket(lab: labmod.Lab, two: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "multiip", "hold", server(lab), "--prefix", two, "--per-ip", "20000", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and labmod.sink_stats(lab)["held"] < 40000:
        time.sleep(0.1)
    assert holdworkers(), "no workers while holding"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads(out)["interrupted"] is True
    assert "Traceback" not in err
    assert_nothing_held(lab, two)


def test_a_dead_worker_stops_all(lab: labmod.Lab, two: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "multiip", "hold", server(lab), "--prefix", two, "--per-ip", "30000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not labmod.sink_stats(lab)["held"]:
        time.sleep(0.05)
    workers = holdworkers()
    assert workers
    subprocess.run(["kill", "-KILL", workers[0]], check=True)  # that worker's exact pid
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err.strip().splitlines()[-1].startswith("multiip: error: a worker in ")
    assert_nothing_held(lab, two)


def test_a_refusing_target_ends_quickly(lab: labmod.Lab, two: str) -> None:
    t0 = time.monotonic()
    cp = multiip("hold", f"{lab.lan_ip}:9", "--prefix", two, check=False)  # nothing listens on port 9
    assert cp.returncode != 0 and time.monotonic() - t0 < 20
    last = cp.stderr.strip().splitlines()[-1]
    assert last.startswith("multiip: error: ") and "ECONNREFUSED" in last, cp.stderr
    assert_nothing_held(lab, two)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nonsense"], "IPv4:PORT"),
        (["198.18.0.1:99999"], "1..65535"),
        (["198.18.0.1"], "IPv4:PORT"),
        (["198.18.0.1:9000", "--prefix", "nosuchsetup"], "no setup with prefix nosuchsetup"),
        (["198.18.0.1:9000", "--per-ip", "0"], "--per-ip"),
    ],
)
def test_bad_hold_input(args: list[str], message: str) -> None:
    cp = multiip("hold", *args, check=False)
    assert cp.returncode != 0
    assert len(cp.stderr.splitlines()) == 1 and message in cp.stderr, cp.stderr


def test_per_ip_larger_than_the_port_range(lab: labmod.Lab, two: str) -> None:
    cp = multiip("hold", server(lab), "--prefix", two, "--per-ip", "70000", check=False)
    assert cp.returncode != 0 and "has 64512 ports in its range" in cp.stderr


@pytest.mark.parametrize(
    ("mode", "held"),
    [
        ("bridge", "129,024 connections held"),  # 2 x 64,512
        ("macvlan", "129,024 connections held"),
        ("alias", "72,560 connections held"),  # 2 x 36,280: the ports outside the lab host's 32768-60999
    ],
)
def test_demo_end_to_end_leaves_nothing(mode: str, held: str) -> None:
    before = set(netns_names())
    cp = multiip("demo", "--count", "2", "--mode", mode)
    assert held in cp.stderr and "from 2 source IPs" in cp.stderr
    assert set(netns_names()) == before
    assert holdworkers() == []
    assert not [p for p in Path("/run/multiip-lab").glob("demo*")]
    assert not [p for p in Path("/run/multiip").glob("d*")]


def test_rate_caps_new_connections(lab: labmod.Lab, two: str) -> None:
    """--rate 2000 for 2 x 1000 connections: the ramp takes about a second, not a blink."""
    result = json.loads(
        multiip("hold", server(lab), "--prefix", two, "--per-ip", "1000", "--rate", "2000", "--duration", "0",
                "--json").stdout
    )  # fmt: skip
    assert result["established"] == 2000
    assert 0.8 <= result["seconds"] <= 3.0, result["seconds"]
    assert_nothing_held(lab, two)
