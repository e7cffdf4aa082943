"""`multiip exec` and `multiip addrs`, as root in the lab: commands in every namespace of a setup."""

from __future__ import annotations

import contextlib
import csv as csvmod
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import unique
from helpers import leftovers, multiip, ours, processes, running_lab, within

from multiip import lab as labmod

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def three(lab: labmod.Lab) -> Iterator[str]:
    p = f"e{lab.name[2:]}"
    multiip("run", "--prefix", p, "--count", "3", "--yes", netns=lab.host_ns)
    try:
        yield p
    finally:
        multiip("down", "--prefix", p, "--yes", netns=lab.host_ns)


def test_addrs_in_every_format(three: str) -> None:
    status = json.loads(multiip("status", "--prefix", three, "--json").stdout)["namespaces"]
    ips = [r["ipv4"].split("/")[0] for r in status]
    assert multiip("addrs", "--prefix", three).stdout.split() == ips
    assert json.loads(multiip("addrs", "--prefix", three, "--format", "json").stdout) == [
        {"namespace": r["name"], "ip": ip} for r, ip in zip(status, ips, strict=True)
    ]
    assert multiip("addrs", "--prefix", three, "--format", "k6").stdout == ",".join(ips) + "\n"
    assert multiip("addrs", "--prefix", three, "--format", "args").stdout.split() == [
        w for ip in ips for w in ("--source-ip", ip)
    ]


def test_exec_all_replaces_placeholders_raises_the_fd_limit_and_binds_the_resolver(lab: labmod.Lab, three: str) -> None:
    script = (
        'echo "{ns} {ip} {index} $MULTIIP_NS $MULTIIP_IP $MULTIIP_INDEX $(ulimit -n) $(ulimit -Hn)"; '
        "cat /etc/resolv.conf"
    )
    cp = multiip("exec", "--prefix", three, "--all", "--json", "--", "sh", "-c", script)
    ips = multiip("addrs", "--prefix", three).stdout.split()
    lines = [line for line in cp.stderr.splitlines() if " | " in line]  # with --json, stdout is the JSON alone
    for i, ip in enumerate(ips):
        ns = f"{three}{i}"
        mine = [line.split(" | ", 1)[1] for line in lines if line.startswith(f"{ns} ")]
        soft, hard = mine[0].split()[-2:]
        assert mine[0].split()[:6] == [ns, ip, str(i), ns, ip, str(i)] and soft == hard, mine
        assert f"nameserver {lab.lan_ip}" in mine, mine  # the namespace's own resolver file
    summary = json.loads(cp.stdout)
    assert [(r["namespace"], r["exit"]) for r in summary] == [(f"{three}{i}", 0) for i in range(3)]


def test_exec_one_namespace_and_the_exit_status(three: str, tmp_path: Path) -> None:
    one = multiip("exec", "--prefix", three, f"{three}1", "--", "echo", "hello from {ns}")
    assert [line for line in one.stdout.splitlines() if " | " in line] == [f"{three}1 | hello from {three}1"]
    failed = multiip("exec", "--prefix", three, "--all", "--output", str(tmp_path), "--", "sh", "-c",
                     "echo out {index}; exit {index}", check=False)  # fmt: skip
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == "multiip: error: exec: 2 of 3 runs failed (" + three + "1: exit 1)"
    assert (tmp_path / f"{three}2.log").read_text() == "out 2\n" and " | " not in failed.stdout
    (tmp_path / "taken" / f"{three}0.log").mkdir(parents=True)  # a file that cannot be written: nothing runs
    refused = multiip("exec", "--prefix", three, "--all", "--output", str(tmp_path / "taken"), "--", "touch",
                      str(tmp_path / "ran-{ns}"), check=False)  # fmt: skip
    assert refused.returncode != 0 and refused.stderr.splitlines()[-1].startswith("multiip: error: exec --output")
    assert "Traceback" not in refused.stderr and not list(tmp_path.glob("ran-*"))


def test_ctrl_c_stops_every_run(three: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "multiip", "exec", "--prefix", three, "--all", "--", "sleep", "37"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60  # bounded generously: a slow machine starts them later, never not at all
    while time.monotonic() < deadline and sum(len(processes(ns, "sleep")) for ns in ours(three)) < 3:
        time.sleep(0.1)
    assert sum(len(processes(ns, "sleep")) for ns in ours(three)) == 3
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "Traceback" not in err
    assert sum(len(processes(ns, "sleep")) for ns in ours(three)) == 0, "a run outlived multiip exec"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefix", "nosetup", "--all", "--", "true"], "no setup with prefix nosetup"),
        (["--all"], "no command"),
        (["--all", "--"], "no command"),
        (["--", "true"], "name a namespace of the setup, or pass --all"),
        (["--all", "--parallel", "0", "--", "true"], "--parallel 0"),
    ],
)
def test_bad_exec_input_is_one_line(args: list[str], message: str) -> None:
    cp = multiip("exec", *args, check=False)
    assert cp.returncode != 0 and len(cp.stderr.splitlines()) == 1 and message in cp.stderr, cp.stderr


def test_exec_a_namespace_not_of_the_setup(three: str) -> None:
    cp = multiip("exec", "--prefix", three, "nosuch0", "--", "true", check=False)
    assert cp.returncode != 0 and f"nosuch0 is not a namespace of setup {three}" in cp.stderr


def test_exec_a_namespace_by_its_name_alone(three: str) -> None:
    """A namespace belongs to the setup that recorded it: no --prefix needed."""
    one = multiip("exec", f"{three}2", "--", "echo", "{ns} {index}")
    assert [line for line in one.stdout.splitlines() if " | " in line] == [f"{three}2 | {three}2 2"]
    cp = multiip("exec", "nosuch7", "--", "true", check=False)
    assert cp.returncode != 0 and "no setup on this host recorded a namespace nosuch7" in cp.stderr


def test_a_run_that_keeps_going_without_its_output_stalls_no_other_and_nothing_outlives_exec(three: str) -> None:
    """One run closes its output and goes on (4 s); the others are done and reported at once, not after it.
    A daemon that left its session (setsid) and one that kept the output open are stopped when exec ends."""
    script = (
        'if [ "$MULTIIP_INDEX" = 0 ]; then exec >&- 2>&-; sleep 4; exit 0; fi; '
        'if [ "$MULTIIP_INDEX" = 1 ]; then setsid sleep 301 </dev/null >/dev/null 2>&1 & fi; '
        'if [ "$MULTIIP_INDEX" = 2 ]; then sleep 302 & fi; echo done {ns}'
    )
    cp = multiip("exec", "--prefix", three, "--all", "--json", "--", "sh", "-c", script)
    summary = {r["namespace"]: r for r in json.loads(cp.stdout)}
    assert summary[f"{three}0"]["exit"] == 0 and summary[f"{three}0"]["seconds"] >= 4
    for ns in (f"{three}1", f"{three}2"):  # done as soon as their own command ended, not after the other's
        assert summary[ns]["exit"] == 0 and summary[ns]["seconds"] < 3, summary
    assert f"{three}1 | done {three}1" in cp.stderr and f"{three}2 | done {three}2" in cp.stderr
    left = [argv for ns in ours(three) for argv in processes(ns, "sleep")]
    assert left == [], f"processes outlived multiip exec: {left}"


NGINX = """
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
daemon off;
user root;
events {{ worker_connections 19900; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_timeout 120s;
  keepalive_requests 100000000;
  server {{ listen {ip}:8080 reuseport backlog=65535; location / {{ return 200 "ok\\n"; }} }}
}}
"""


@contextlib.contextmanager
def nginx_on_the_lan(lab: labmod.Lab, directory: Path, workers: int = 4) -> Iterator[None]:
    """nginx (NGINX above) on the lab's LAN, port 8080, its files in directory; stopped at the end. Each
    worker takes 19,900 connections."""
    (directory / "nginx.conf").write_text(NGINX.format(tmp=directory, ip=lab.lan_ip, workers=workers))
    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.lan_ns}", "/usr/sbin/nginx", "-c",
                               str(directory / "nginx.conf"), "-p", str(directory)])  # fmt: skip
    try:
        yield
    finally:
        server.terminate()
        server.wait(timeout=20)


def established(netns: str, port: int) -> int:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "ss", "-Htn", "state", "established",
                          f"( sport = :{port} )"], capture_output=True, text=True).stdout  # fmt: skip
    return len(out.splitlines())


@pytest.mark.skipif(
    not shutil.which("wrk") or not shutil.which("nginx", path="/usr/sbin:/sbin"), reason="needs wrk, nginx"
)
def test_wrk_from_four_namespaces_holds_more_than_one_ip_can_to_one_nginx(lab: labmod.Lab, tmp_path: Path) -> None:
    """A real HTTP server on the lab's LAN (nginx, four workers) and Debian's wrk in four namespaces through
    `exec --all`: the server sees more than 64,512 connections established at once from one host."""
    prefix = f"w{lab.name[2:]}"
    with nginx_on_the_lan(lab, tmp_path):
        multiip("run", "--prefix", prefix, "--count", "4", "--yes", netns=lab.host_ns)
        try:
            client = subprocess.Popen(
                [sys.executable, "-m", "multiip", "exec", "--prefix", prefix, "--all", "--json", "--", "wrk", "-t", "2",
                 "-c", "17000", "-d", "40s", "--timeout", "30s", f"http://{lab.lan_ip}:8080/"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            most = 0  # 40 s of wrk are a bound: all connect within a few seconds here (the README's figures)
            while client.poll() is None:
                most = max(most, established(lab.lan_ns, 8080))
                time.sleep(0.5)
            out, err = client.communicate(timeout=120)
            assert client.returncode == 0, err[-2000:]
            assert most > 64512, f"the server saw at most {most:,} connections at once"
            rates = [float(m) for m in re.findall(r"\| Requests/sec:\s+([\d.]+)", err)]  # --json: lines on stderr
            assert len(rates) == 4 and all(r > 0 for r in rates), err[-2000:]
            assert [r["exit"] for r in json.loads(out)] == [0] * 4
        finally:
            multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)


LOCUSTFILE = Path(__file__).parent / "locust_hold.py"


def locust_counts(csv: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(type, name) -> (requests, failures), as the Locust master's CSV says now (rewritten every second)."""
    try:
        rows = list(csvmod.DictReader(csv.read_text().splitlines()))
    except (OSError, csvmod.Error):
        return {}
    return {(r["Type"], r["Name"]): (int(r["Request Count"]), int(r["Failure Count"])) for r in rows if r["Type"]}


def established_from(netns: str, port: int) -> Counter[str]:
    """The connections established to the server's port, by source address."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "ss", "-Htn", "state", "established",
                          f"( sport = :{port} )"], capture_output=True, text=True).stdout  # fmt: skip
    return Counter(line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines())


def run_locust(
    lab: labmod.Lab, prefixes: list[str], users: int, rate: int, logs: Path, hold_for: float = 0.0,
    limit: float = 600.0, master_host: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Locust distributed as the README says: the master on a (lab) host, one worker in every namespace of
    each setup through `multiip exec --all` (one exec per setup: per load host), users that each keep a
    connection to nginx on the lab's LAN. It runs until Locust's own statistics count every user's connect
    and first request (then ``hold_for`` seconds more), at most ``limit`` seconds: no fixed time raced
    against the machine's speed. Returns Locust's final stats, what it logged, the server's peak of
    established connections (and, then, how many came from each address) and the seconds from the last
    `multiip exec --all` to every worker connected, to every user spawned and to every connect."""
    host, n = str(lab.host_ip_of(master_host)), sum(len(ours(p)) for p in prefixes)
    master_log = logs / "locust-master.log"
    with master_log.open("w") as err:
        master = subprocess.Popen(
            [*within(lab.host_ns_of(master_host)), sys.executable, "-m", "locust", "-f",
             str(LOCUSTFILE), "--master", "--master-bind-host", host, "--headless", "-u", str(users), "-r", str(rate),
             "--expect-workers", str(n), "--expect-workers-max-wait", "120", "--run-time", f"{int(limit)}s",
             "--host", f"http://{lab.lan_ip}:8080", "--json", "--csv", str(logs / "locust"), "--stop-timeout", "5"],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd="/",
            # on 2 busy cores the workers' last counts can come later than Locust's default 1 s allows
            env={**os.environ, "LOCUST_WAIT_FOR_WORKERS_REPORT_AFTER_RAMP_UP": "15"},
        )  # fmt: skip
    workers = []
    for p in prefixes:
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "multiip", "exec", "--prefix", p, "--all", "--json", "--output", str(logs / p), "--",
             sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", host],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    t0 = time.monotonic()  # the last exec started
    most, split, connected, spawned, every, stop_at = 0, Counter[str](), None, None, None, t0 + limit
    try:
        while master.poll() is None and time.monotonic() < stop_at:
            now = established_from(lab.lan_ns, 8080)
            if now.total() > most:
                most, split = now.total(), now
            text = master_log.read_text()
            if connected is None and f"{n} workers connected" in text:
                connected = round(time.monotonic() - t0, 2)
            if spawned is None and ("All users spawned" in text or "Spawning is complete" in text):
                spawned = round(time.monotonic() - t0, 2)
            counts = locust_counts(logs / "locust_stats.csv")
            if every is None and counts.get(("CONNECT", "connect"), (0, 0))[0] >= users and counts.get(
                ("GET", "keep-alive /"), (0, 0))[0] >= users:  # fmt: skip
                every = round(time.monotonic() - t0, 2)
                stop_at = time.monotonic() + hold_for
            time.sleep(0.5)
        master.send_signal(signal.SIGTERM)  # Locust's own shutdown: final statistics as JSON on stdout
        out, _ = master.communicate(timeout=120)
        ended = [w.communicate(timeout=120) for w in workers]
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
    return {
        "stats": json.loads(out) if out.strip() else [],
        "log": master_log.read_text().splitlines(),
        "master_exit": master.returncode,
        "workers": [json.loads(w_out) if w_out.strip() else [] for w_out, _ in ended],
        "workers_exit": max(w.returncode for w in workers),
        "workers_err": "".join(w_err for _, w_err in ended),
        "server_held_at_once": most,
        "server_held_by_source": dict(split),
        "seconds_to_every_worker": connected,
        "seconds_to_every_user": spawned,
        "seconds_to_every_connect": every,
    }


def assert_locust_counted(run: dict[str, Any], users: int) -> None:
    """Locust's own statistics: every user's connect, without a failure, and its first request."""
    said = "\n".join(run["log"][-20:]) + run["workers_err"]
    assert run["master_exit"] == 0 and run["workers_exit"] == 0, said
    by_name = {(s["method"], s["name"]): s for s in run["stats"]}
    connects = by_name[("CONNECT", "connect")]
    assert connects["num_requests"] == users and connects["num_failures"] == 0
    assert by_name[("GET", "keep-alive /")]["num_requests"] >= users
    assert any("All users spawned" in line and f"{users} total users" in line for line in run["log"])
    assert run["server_held_at_once"] > 64512, run["server_held_at_once"]


@pytest.mark.skipif(not shutil.which("nginx", path="/usr/sbin:/sbin"), reason="needs nginx")
def test_locust_distributed_over_the_namespaces_holds_more_than_one_ip_can(lab: labmod.Lab, tmp_path: Path) -> None:
    """Locust (the optional extra): the master on the lab host, a worker in each of 4 namespaces through
    `exec --all`, 68,000 users each keeping one connection to one nginx ip:port. Locust's own stats count
    68,000 connects without a failure; the server holds more than 64,512 at once from one host. It runs until
    Locust counts them (bounded at 10 minutes), however fast this machine is."""
    prefix = f"l{lab.name[2:]}"
    with nginx_on_the_lan(lab, tmp_path):
        multiip("run", "--prefix", prefix, "--count", "4", "--yes", netns=lab.host_ns)
        try:
            run = run_locust(lab, [prefix], users=68_000, rate=4000, logs=tmp_path)
            assert_locust_counted(run, 68_000)
        finally:
            multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)


@pytest.mark.skipif(not shutil.which("nginx", path="/usr/sbin:/sbin"), reason="needs nginx")
def test_locust_workers_of_two_load_hosts_join_one_master(tmp_path: Path) -> None:
    """The README's several load hosts: a lab LAN with three hosts; the first two each make a setup of 2
    namespaces (`multiip run` on each), the third runs the Locust master; each load host starts a worker
    per namespace with `exec --all`. Locust counts 68,000 connects to one nginx ip:port from both hosts
    (the server more than 64,512 at once, from each host's addresses a share); both setups go leaving
    nothing."""
    with running_lab(check_down=False, name=unique("mh"), hosts=3, leases=64, capacity=100) as the_lab:
        prefixes = {1: unique("a"), 2: unique("b")}
        with nginx_on_the_lan(the_lab, tmp_path):
            for host, prefix in prefixes.items():
                multiip("run", "--prefix", prefix, "--count", "2", "--yes", netns=the_lab.host_ns_of(host))
            try:
                run = run_locust(the_lab, list(prefixes.values()), users=68_000, rate=4000, logs=tmp_path,
                                 master_host=3)  # fmt: skip
                assert_locust_counted(run, 68_000)
                shares = {}
                for host, prefix in prefixes.items():
                    rows = json.loads(multiip("status", "--prefix", prefix, "--json").stdout)["namespaces"]
                    ips = {r["ipv4"].split("/")[0] for r in rows}
                    shares[host] = sum(n for ip, n in run["server_held_by_source"].items() if ip in ips)
                assert all(share > 0 for share in shares.values()), shares
                assert sum(shares.values()) == run["server_held_at_once"] > 64512, (shares, run["server_held_at_once"])
                print(f"two load hosts: {shares} held at once; from the last exec: every worker "
                      f"{run['seconds_to_every_worker']} s, every user {run['seconds_to_every_user']} s, every "
                      f"connect {run['seconds_to_every_connect']} s")  # fmt: skip
            finally:
                for host, prefix in prefixes.items():
                    multiip("down", "--prefix", prefix, "--yes", netns=the_lab.host_ns_of(host))
        for host, prefix in prefixes.items():
            assert leftovers(prefix, the_lab.host_ns_of(host)) == []
