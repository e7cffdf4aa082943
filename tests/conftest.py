"""Fixtures: the root-namespace guard, the lab, unique names, and helpers to run multiip as the lab host."""

from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import multiip, running_lab, sh

from multiip import lab as labmod

REQUIRE_ROOT = os.environ.get("MULTIIP_REQUIRE_ROOT_TESTS") == "1"
ROOT_TOOLS = (
    *("ip", "nsenter", "dnsmasq", "udhcpc", "dhclient", "dhcpcd", "brctl", "shellcheck", "nft", "arping"),
    "arp-scan",
)


IN_TEST_KERNEL = os.environ.get("MULTIIP_IN_TEST_KERNEL") == "1"  # tests/test_kernel.py runs pytest in one


def pytest_configure(config: pytest.Config) -> None:
    """The Ctrl-C tests' processes get SIGINT as a user's shell leaves it: handled here, so it is the
    default again in every program they start. A runner that starts pytest in the background of a
    script (`cmd &`, no job control) has it ignored, and an ignored signal stays ignored across exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Root tests need root and the lab's tools; with MULTIIP_REQUIRE_ROOT_TESTS=1 (CI) a gap fails the run.
    The test kernel's tests are deselected here (tests/test_kernel.py runs them inside it); in the test
    kernel, only they and what they need run."""
    chosen = [i for i in items if ("in_test_kernel" in i.keywords) == IN_TEST_KERNEL]
    if len(chosen) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen
    missing = [t for t in ROOT_TOOLS if not shutil.which(t, path=os.environ["PATH"] + ":/usr/sbin:/sbin")]
    why = "needs root" if os.geteuid() != 0 else (f"needs {', '.join(missing)}" if missing else "")
    if not why:
        return
    for item in items:
        if "root" in item.keywords:
            if REQUIRE_ROOT:
                raise pytest.UsageError(f"MULTIIP_REQUIRE_ROOT_TESTS=1 but the root tests cannot run: {why}")
            item.add_marker(pytest.mark.skip(reason=why))


def _root_snapshot() -> dict[str, Any]:
    def j(*argv: str) -> Any:
        return json.loads(sh("ip", "-j", *argv).stdout or "[]")

    links = sorted(
        (x["ifname"], x.get("master"), tuple(x.get("flags", [])), x.get("address")) for x in j("link", "show")
    )
    addrs = sorted(
        (x["ifname"], a["local"], a["prefixlen"]) for x in j("address", "show") for a in x.get("addr_info", [])
    )
    routes = sorted(json.dumps(r, sort_keys=True) for r in j("route", "show", "table", "all"))
    routes6 = sorted(json.dumps(r, sort_keys=True) for r in j("-6", "route", "show", "table", "main"))
    return {
        "links": links,
        "addresses": addrs,
        "routes": routes,
        "routes6": routes6,
        "resolv.conf": Path("/etc/resolv.conf").read_bytes(),
    }


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched() -> Iterator[None]:
    """Fail the run if the machine's own links, addresses, routes or /etc/resolv.conf changed."""
    if os.geteuid() != 0:
        yield
        return
    before = _root_snapshot()
    yield
    after = _root_snapshot()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"the root network namespace changed during the tests: {changed}\n{before}\n{after}"


def unique(stem: str) -> str:
    """A short name no other run uses (namespace and interface names must stay within 15 characters)."""
    return f"{stem}{uuid.uuid4().hex[:4]}"


@pytest.fixture(scope="session")
def lab() -> Iterator[labmod.Lab]:
    """One lab for the session, with a name of its own; removed at the end whatever happened."""
    with running_lab(check_down=False, name=unique("mt"), leases=2000, capacity=150_000) as the_lab:
        yield the_lab


@pytest.fixture
def prefix(lab: labmod.Lab) -> Iterator[str]:
    """A fresh setup prefix; whatever a test leaves under it is torn down afterwards."""
    p = unique("t")
    yield p
    made = any(line.split()[0].startswith(p) for line in sh("ip", "netns", "list").stdout.splitlines() if line)
    if made or Path(f"/run/multiip/{p}").exists():
        # queued behind another setup or teardown (--wait), not left behind because one ran at that moment
        multiip("down", "--prefix", p, "--yes", "--wait", "60", netns=lab.host_ns, check=False)
