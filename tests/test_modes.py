"""--mode macvlan and ipvlan, as root in the lab: no bridge, the uplink left exactly as it is."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from helpers import (
    HOST_LIMITS,
    fake_sysctls,
    host_state,
    ip_json,
    ipvlan_works,
    leftovers,
    multiip,
    ours,
    reaches,
    uplink_state,
)

from multiip import lab as labmod

pytestmark = pytest.mark.root


def test_macvlan_with_dhcp_reaches_the_lan_and_never_touches_the_uplink(lab: labmod.Lab, prefix: str) -> None:
    before = host_state(lab.host_ns, prefix)
    uplink = uplink_state(lab.host_ns)
    cp = multiip("run", "--mode", "macvlan", "--prefix", prefix, "--count", "20", "--yes", netns=lab.host_ns)
    assert "uplink eth0: left as it is (--mode macvlan)" in cp.stderr
    assert uplink_state(lab.host_ns) == uplink  # addresses, routes, rules: as they were, during the setup too
    assert [x.get("master") for x in ip_json("link", "show", "dev", "eth0", netns=lab.host_ns)] == [None]
    status = json.loads(multiip("status", "--prefix", prefix, "--json").stdout)
    assert status["mode"] == "macvlan" and status["bridge"] is None
    rows = status["namespaces"]
    assert len({r["ipv4"] for r in rows}) == 20 and len({r["mac"] for r in rows}) == 20
    for r in rows:
        assert ipaddress.IPv4Interface(r["ipv4"]).ip >= lab.dhcp_first and r["dhcp_alive"]
    for ns in ours(prefix)[:3]:
        assert reaches(ns, str(lab.lan_ip), lab.port)
    held = json.loads(multiip("hold", f"{lab.lan_ip}:{lab.port}", "--prefix", prefix, "--per-ip", "500",
                              "--duration", "0", "--json").stdout)  # fmt: skip
    assert held["established"] == held["target"] == 20 * 500
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert leftovers(prefix, lab.host_ns) == [] and host_state(lab.host_ns, prefix) == before


def test_macvlan_goes_past_one_bridges_1022(
    lab: labmod.Lab, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1100 namespaces, no bridge. A broadcast from one macvlan (mode bridge) is copied to every other at
    once, into the per-CPU backlog: the host-wide netdev_max_backlog the setup checks must fit them, so it
    is raised for the test (and put back) as --tune-host raises it on a real host."""
    # what the setup's check reads: the lab's host cannot see the host-wide ones
    fake = fake_sysctls(tmp_path / "sys", dict.fromkeys(HOST_LIMITS, "8192"))
    monkeypatch.setenv("MULTIIP_SYSCTL_DIR", str(fake))
    backlog = Path("/proc/sys/net/core/netdev_max_backlog")
    old = backlog.read_text()
    backlog.write_text("4096\n")
    try:
        before = host_state(lab.host_ns, prefix)
        multiip("run", "--mode", "macvlan", "--prefix", prefix, "--count", "1100", "--dhcp", "none",
                "--address", "198.18.100.1/16", "--yes", netns=lab.host_ns)  # fmt: skip
        assert len(ours(prefix)) == 1100
        for ns in (f"{prefix}0", f"{prefix}1099"):
            assert reaches(ns, str(lab.lan_ip), lab.port)
        multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
        assert host_state(lab.host_ns, prefix) == before
    finally:
        backlog.write_text(old)


def test_ipvlan_shares_the_uplinks_mac_or_is_refused_with_the_reason(lab: labmod.Lab, prefix: str) -> None:
    """Each namespace's ipvlan has the uplink's MAC; DHCP tells them apart by client id. On a kernel without
    ipvlan (this machine's has CONFIG_IPVLAN unset) the setup says so and changes nothing."""
    before = host_state(lab.host_ns, prefix)
    args = ["run", "--mode", "ipvlan", "--prefix", prefix, "--count", "4", "--yes"]
    if not ipvlan_works(lab.host_ns):
        cp = multiip(*args, netns=lab.host_ns, check=False)
        assert cp.returncode != 0
        assert "this kernel cannot make an ipvlan on eth0" in cp.stderr.splitlines()[-1]
        assert host_state(lab.host_ns, prefix) == before and not Path(f"/run/multiip/{prefix}").exists()
        return  # the setup itself: tests/test_second_kernel.py, in a kernel that has ipvlan
    multiip(*args, netns=lab.host_ns)
    rows = json.loads(multiip("status", "--prefix", prefix, "--json").stdout)["namespaces"]
    eth0 = ip_json("link", "show", "dev", "eth0", netns=lab.host_ns)[0]["address"]
    assert {r["mac"] for r in rows} == {eth0} and len({r["ipv4"] for r in rows}) == 4
    for ns in ours(prefix):
        assert reaches(ns, str(lab.lan_ip), lab.port)
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == before


def test_a_setup_keeps_its_mode(lab: labmod.Lab, prefix: str) -> None:
    static = ["--dhcp", "none", "--address", "198.18.120.1/16", "--yes"]
    multiip("run", "--mode", "macvlan", "--prefix", prefix, "--count", "2", *static, netns=lab.host_ns)
    cp = multiip("run", "--prefix", prefix, "--count", "2", *static, netns=lab.host_ns, check=False)
    assert cp.returncode != 0 and f"prefix {prefix} is set up with --mode macvlan" in cp.stderr
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
