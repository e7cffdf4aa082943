"""Real load clients through `multiip exec --all`, one after the other in the same run against the same
nginx ip:port on the lab's LAN (four workers, SO_REUSEPORT), from the same 4 namespaces:

- Debian's wrk, 17,000 connections per namespace: the most connections the server held at once, the
  requests/s wrk reports, and the time from starting `multiip exec --all` to the server holding every one;
- Locust distributed (master on the lab host, a worker per namespace), 68,000 users that each keep one
  connection (tests/locust_hold.py, a request every 10 s each): the server's peak, Locust's own counts
  and requests/s, and the time from `multiip exec --all` to every worker connected and every user spawned.
"""

from __future__ import annotations

import random
import re
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import lab_up, save, show
from test_exec import established, nginx_on_the_lan, run_locust  # tests/: the same server and client

from multiip import execute, lab, render
from multiip.plan import make_plan

NAMESPACES, PER_NAMESPACE, SECONDS = 4, 17_000, 15
LOCUST_USERS, LOCUST_HOLD = 68_000, 30  # users; seconds they run on once every one has connected


def main() -> dict[str, Any]:
    tag = "".join(random.choices(string.ascii_lowercase, k=4))
    with (
        lab_up(f"cl{tag}", leases=64, capacity=1000) as the_lab,
        tempfile.TemporaryDirectory() as tmp,
        nginx_on_the_lan(the_lab, Path(tmp)),  # the same server as the tests'
    ):
        plan = make_plan(prefix=f"c{tag}", count=NAMESPACES)
        execute.run_script(render.setup_script(plan), show, within=lab.enter(the_lab, []))
        try:
            target = NAMESPACES * PER_NAMESPACE
            t0 = time.monotonic()
            client = subprocess.Popen(
                [sys.executable, "-m", "multiip", "exec", "--prefix", plan.target.prefix, "--all", "--", "wrk", "-t",
                 "2", "-c", str(PER_NAMESPACE), "-d", f"{SECONDS}s", "--timeout", "10s",
                 f"http://{the_lab.lan_ip}:8080/"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            most, all_up = 0, None
            while client.poll() is None:
                now = established(the_lab.lan_ns, 8080)
                most = max(most, now)
                if all_up is None and now >= target:
                    all_up = round(time.monotonic() - t0, 2)
                time.sleep(0.25)
            out, _ = client.communicate()
            rates = [float(m) for m in re.findall(r"\| Requests/sec:\s+([\d.]+)", out)]
            time.sleep(5)  # wrk's connections closed: the server starts from none
            locust = run_locust(the_lab, [plan.target.prefix], LOCUST_USERS, 4000, Path(tmp), hold_for=LOCUST_HOLD)
        finally:
            execute.run_script(render.teardown_script(plan.target), show, within=lab.enter(the_lab, []))
    stats = {(x["method"], x["name"]): x for x in locust["stats"]}
    gets, connects = stats[("GET", "keep-alive /")], stats[("CONNECT", "connect")]
    seconds = gets["last_request_timestamp"] - gets["start_time"]
    result = {
        "namespaces": NAMESPACES,
        "wrk": {
            "connections_per_namespace": PER_NAMESPACE,
            "server_held_at_once": most,
            "seconds_to_every_connection": all_up,
            "requests_per_second": round(sum(rates)),
            "requests_per_second_per_namespace": rates,
            "wrk_seconds": SECONDS,
        },
        "locust": {
            "users": LOCUST_USERS,
            "server_held_at_once": locust["server_held_at_once"],
            "connects": connects["num_requests"],
            "connect_failures": connects["num_failures"],
            "requests": gets["num_requests"],
            "request_failures": gets["num_failures"],
            "requests_per_second": round(gets["num_requests"] / seconds) if seconds > 0 else None,
            "seconds_to_every_worker": locust["seconds_to_every_worker"],
            "seconds_to_every_user": locust["seconds_to_every_user"],
            "seconds_to_every_connect": locust["seconds_to_every_connect"],
            "held_on_seconds": LOCUST_HOLD,
            "request_every_seconds_per_user": 10,
        },
    }
    save("clients", result)
    return result


if __name__ == "__main__":
    main()
