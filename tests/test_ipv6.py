"""IPv6 end to end, as root in labs whose LAN speaks it: SLAAC and DHCPv6 (dnsmasq), static IPv6 addresses,
blocks (delegated prefixes) in alias mode with and without a local route, hold to an IPv6 ip:port."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import unique
from helpers import host_state, ip_json, leftovers, multiip, ours, reaches, running_lab, sh, uplink_state, within

from multiip import lab as labmod

pytestmark = pytest.mark.root

FULL = 64512  # ports 1024-65535: what one source address opens to one ip:port


@pytest.fixture(scope="module")
def slaac() -> Iterator[labmod.Lab]:
    """A LAN whose router advertises 2001:db8:100::/64 for SLAAC; its sink holds 4 full addresses' worth of
    connections and more."""
    with running_lab(check_down=False, name=unique("m6"), ipv6="slaac", leases=500, capacity=4 * FULL + 20_000) as it:
        yield it


@pytest.fixture(scope="module")
def dhcpv6() -> Iterator[labmod.Lab]:
    """A LAN whose router says: addresses by DHCPv6 (no prefix for SLAAC), from dnsmasq."""
    with running_lab(check_down=False, name=unique("md"), ipv6="dhcpv6", leases=500, capacity=5000) as it:
        yield it


def fresh_prefix(the_lab: labmod.Lab) -> Iterator[str]:
    """A fresh prefix in that lab; whatever the test leaves under it is torn down afterwards."""
    p = unique("v")
    yield p
    if ours(p) or sh("test", "-e", f"/run/multiip/{p}", check=False).returncode == 0:
        multiip("down", "--prefix", p, "--yes", netns=the_lab.host_ns, check=False)


@pytest.fixture
def sp(slaac: labmod.Lab) -> Iterator[str]:
    yield from fresh_prefix(slaac)


@pytest.fixture
def dp(dhcpv6: labmod.Lab) -> Iterator[str]:
    yield from fresh_prefix(dhcpv6)


def status(prefix: str, netns: str) -> dict[str, Any]:
    return json.loads(multiip("status", "--prefix", prefix, "--json", netns=netns).stdout)  # type: ignore[no-any-return]


def v6_leases(the_lab: labmod.Lab) -> list[str]:
    """dnsmasq's DHCPv6 leases: lines "EXPIRY IAID ADDRESS HOST DUID" (its own DUID line aside)."""
    lines = (the_lab.state_dir / "dnsmasq.leases").read_text().splitlines()
    return [line for line in lines if not line.startswith("duid ") and ":" in line.split()[2]]


def eui64(mac: str, net: ipaddress.IPv6Network) -> ipaddress.IPv6Address:
    """The SLAAC address a MAC gets in a /64 (RFC 4291: the U/L bit flipped, ff:fe in the middle)."""
    b = bytes.fromhex(mac.replace(":", ""))
    iid = bytes([b[0] ^ 2]) + b[1:3] + b"\xff\xfe" + b[3:]
    return net[int.from_bytes(iid, "big")]


@pytest.mark.parametrize("mode", ["bridge", "macvlan"])
def test_slaac_gives_20_namespaces_stable_ipv6_that_reaches_the_lans_sink(
    slaac: labmod.Lab, sp: str, mode: str
) -> None:
    """--family auto on a LAN that advertises a prefix: IPv4 by DHCP and IPv6 by SLAAC (EUI-64 of each
    namespace's stable MAC), the same addresses after a down and a run again; each reaches the sink over
    IPv6; exec's {ip6}, addrs --family 6; down leaves the host as it was."""
    before, uplink = host_state(slaac.host_ns, sp), uplink_state(slaac.host_ns)
    args = ["run", "--mode", mode, "--prefix", sp, "--count", "20", "--yes"]
    cp = multiip(*args, netns=slaac.host_ns)
    assert "the LAN advertises IPv6" in cp.stderr and "ipv6: 20/20" in cp.stderr, cp.stderr
    st = status(sp, slaac.host_ns)
    assert st["family"] == "dual"
    rows = st["namespaces"]
    first = {r["name"]: r["ipv6"] for r in rows}
    assert len(set(first.values())) == 20 and all(r["ipv4"] for r in rows)
    for r in rows:
        assert ipaddress.IPv6Interface(r["ipv6"]).ip == eui64(r["mac"], slaac.lan_net6), r
        assert r["gateway6"].startswith("fe80::") and not r["ipv6_pending"]
    for ns in ours(sp):
        assert reaches(ns, str(slaac.lan_ip6), slaac.port), ns
    addrs = multiip("addrs", "--prefix", sp, "--family", "6", netns=slaac.host_ns).stdout.split()
    assert addrs == [r["ipv6"].split("/")[0] for r in rows]  # in the record's order
    out = multiip("exec", "--all", "--prefix", sp, "--", "sh", "-c", 'echo "{ns} {ip6} $MULTIIP_IP6"',
                  netns=slaac.host_ns).stdout  # fmt: skip
    for ns, address in first.items():
        ip6 = address.split("/")[0]
        assert f"{ns} {ip6} {ip6}" in out
    multiip("down", "--prefix", sp, "--yes", netns=slaac.host_ns)
    multiip(*args, netns=slaac.host_ns)
    assert {r["name"]: r["ipv6"] for r in status(sp, slaac.host_ns)["namespaces"]} == first
    multiip("down", "--prefix", sp, "--yes", netns=slaac.host_ns)
    assert leftovers(sp, slaac.host_ns) == []
    assert uplink_state(slaac.host_ns) == uplink and host_state(slaac.host_ns, sp) == before


def test_hold_opens_4_full_addresses_to_one_ipv6_ip_port_and_ipv4_beside_it(slaac: labmod.Lab, sp: str) -> None:
    """A dual-stack setup of 4 namespaces: 4 x 64,512 connections to [sink]:port over IPv6, then, its
    ports still held, over IPv4 to the sink's IPv4 address too: the two families' ports are apart."""
    multiip("run", "--mode", "macvlan", "--prefix", sp, "--count", "4", "--family", "dual", "--yes",
            netns=slaac.host_ns)  # fmt: skip
    v6 = subprocess.Popen(  # held until told to stop (SIGTERM, as Ctrl-C), bounded by --duration
        [*within(slaac.host_ns), sys.executable, "-m", "multiip", "hold", f"[{slaac.lan_ip6}]:{slaac.port}",
         "--prefix", sp, "--duration", "900", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(1800):  # bounded generously: until the sink counts every IPv6 connection
            peers = labmod.sink_stats(slaac)["peers"]
            if sum(n for ip, n in peers.items() if ":" in ip) >= 4 * FULL or v6.poll() is not None:
                break
            time.sleep(0.5)
        peers = labmod.sink_stats(slaac)["peers"]
        assert v6.poll() is None, v6.communicate()[1][-2000:]
        v6_peers = {ip: n for ip, n in peers.items() if ":" in ip}
        assert sorted(v6_peers.values()) == [FULL] * 4, v6_peers
        held = json.loads(multiip("hold", f"{slaac.lan_ip}:{slaac.port}", "--prefix", sp, "--per-ip", "2000",
                                  "--duration", "0", "--json").stdout)  # fmt: skip
        assert held["established"] == held["target"] == 4 * 2000
    finally:
        v6.send_signal(signal.SIGTERM)
        try:
            out, err = v6.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            v6.kill()
            raise
    result = json.loads(out)
    assert result["established"] == result["target"] == 4 * FULL, err[-2000:]
    multiip("down", "--prefix", sp, "--yes", netns=slaac.host_ns)


def test_dhcpv6_gives_20_namespaces_stable_addresses_released_by_down(dhcpv6: labmod.Lab, dp: str) -> None:
    """--family 6 --dhcp6 on a LAN whose router says "DHCPv6": one dhclient -6 per namespace, a DUID-LL of
    its stable MAC each; the same addresses after a down and a run again; down releases every lease."""
    before = host_state(dhcpv6.host_ns, dp)
    args = ["run", "--mode", "bridge", "--prefix", dp, "--count", "20", "--family", "6", "--dhcp6", "--yes"]
    multiip(*args, netns=dhcpv6.host_ns)
    rows = status(dp, dhcpv6.host_ns)["namespaces"]
    first = {r["name"]: r["ipv6"] for r in rows}
    assert len(set(first.values())) == 20 and not any(r["ipv4"] for r in rows)
    for r in rows:
        address = ipaddress.IPv6Interface(r["ipv6"])
        assert address.network.prefixlen == 128 and dhcpv6.dhcp6_first <= address.ip <= dhcpv6.dhcp6_last, r
        assert r["dhcp6_alive"] and r["lease6_expires"]
    duids = {line.split()[4] for line in v6_leases(dhcpv6)}
    assert duids == {"00:03:00:01:" + r["mac"] for r in rows}  # DUID-LL (type 3, Ethernet) of each MAC
    for ns in ours(dp):
        assert reaches(ns, str(dhcpv6.lan_ip6), dhcpv6.port), ns
    multiip("down", "--prefix", dp, "--yes", netns=dhcpv6.host_ns)
    assert v6_leases(dhcpv6) == []  # every lease released
    multiip(*args, netns=dhcpv6.host_ns)
    assert {r["name"]: r["ipv6"] for r in status(dp, dhcpv6.host_ns)["namespaces"]} == first
    multiip("down", "--prefix", dp, "--yes", netns=dhcpv6.host_ns)
    assert v6_leases(dhcpv6) == [] and leftovers(dp, dhcpv6.host_ns) == []
    assert host_state(dhcpv6.host_ns, dp) == before


def test_static_ipv6_addresses_in_namespaces(slaac: labmod.Lab, sp: str) -> None:
    """--address A/64 takes IPv6 too: no router advertisements taken in the namespaces, DAD waited for,
    the uplink's IPv6 default router as their gateway."""
    multiip("run", "--mode", "macvlan", "--prefix", sp, "--count", "3", "--address", "2001:db8:100::5:10/64",
            "--yes", netns=slaac.host_ns)  # fmt: skip
    rows = status(sp, slaac.host_ns)["namespaces"]
    assert [r["ipv6"] for r in rows] == [f"2001:db8:100::5:{10 + i}/64" for i in range(3)]
    assert all(r["ipv4"] is None and r["gateway6"].startswith("fe80::") for r in rows)
    for ns in ours(sp):
        globals_ = [a["local"] for x in ip_json("-6", "address", "show", netns=ns)
                    for a in x.get("addr_info", []) if a.get("scope") == "global"]  # fmt: skip
        assert len(globals_) == 1, globals_  # no SLAAC address beside the static one
        assert reaches(ns, str(slaac.lan_ip6), slaac.port)
    multiip("down", "--prefix", sp, "--yes", netns=slaac.host_ns)


def test_alias_takes_a_block_as_its_addresses(slaac: labmod.Lab, sp: str) -> None:
    """--mode alias --addresses BLOCK: an IPv4 /28's 16 addresses, an IPv6 /80's --count, each on the uplink
    (IPv6 after DAD); hold holds from every one; down removes exactly them."""
    uplink = uplink_state(slaac.host_ns)
    for block, count, server in (("198.18.0.32/28", None, f"{slaac.lan_ip}:{slaac.port}"),
                                 ("2001:db8:100:0:1::/80", "8", f"[{slaac.lan_ip6}]:{slaac.port}")):  # fmt: skip
        args = ["run", "--mode", "alias", "--prefix", sp, "--addresses", block, *(["--count", count] if count else [])]
        multiip(*args, "--yes", netns=slaac.host_ns)
        rows = status(sp, slaac.host_ns)["namespaces"]
        expected = [str(a) for a in ipaddress.ip_network(block)][: len(rows)] if ":" not in block else None
        got = [(r["ipv4"] or r["ipv6"]).split("/")[0] for r in rows]
        if expected:
            assert got == expected and len(rows) == 16
        else:
            assert got == [str(ipaddress.ip_network(block)[1 + i]) for i in range(8)]
        held = json.loads(multiip("hold", server, "--prefix", sp, "--per-ip", "500", "--duration", "0", "--json",
                                  netns=slaac.host_ns).stdout)  # fmt: skip
        assert held["established"] == held["target"] == 500 * len(rows)
        multiip("down", "--prefix", sp, "--yes", netns=slaac.host_ns)
        assert uplink_state(slaac.host_ns) == uplink


def test_alias_local_route_makes_a_routed_block_the_hosts(slaac: labmod.Lab, sp: str) -> None:
    """--local-route: the block routed to the host (the LAN's router sends it to the host, as a cloud does
    a delegated prefix) becomes the host's by one local route, on no interface; IPv6 binds of it need
    net.ipv6.ip_nonlocal_bind, which the setup turns on and down puts back; hold holds from its addresses."""
    nonlocal_bind = "/proc/sys/net/ipv6/ip_nonlocal_bind"
    routes = [("198.19.128.0/28", str(slaac.host_ip)), ("2001:db8:7::/80", str(slaac.host_ip6))]
    for block, via in routes:
        sh("ip", "route", "add", block, "via", via, netns=slaac.lan_ns)
    try:
        before = host_state(slaac.host_ns, sp)
        for (block, _), server in zip(routes, (f"{slaac.lan_ip}:{slaac.port}", f"[{slaac.lan_ip6}]:{slaac.port}"),
                                      strict=True):  # fmt: skip
            count = ["--count", "32"] if ":" in block else []
            multiip("run", "--mode", "alias", "--prefix", sp, "--addresses", block, *count, "--local-route", "--yes",
                    netns=slaac.host_ns)  # fmt: skip
            family = "-6" if ":" in block else "-4"
            local = ip_json(family, "route", "show", "table", "local", "type", "local", block, netns=slaac.host_ns)
            assert [r["dst"] for r in local] == [block]
            assert sh("cat", nonlocal_bind, netns=slaac.host_ns).stdout.strip() == ("1" if ":" in block else "0")
            rows = status(sp, slaac.host_ns)["namespaces"]
            assert len(rows) == (32 if ":" in block else 16) and all(r["ipv4"] or r["ipv6"] for r in rows)
            held = json.loads(multiip("hold", server, "--prefix", sp, "--per-ip", "300", "--duration", "0", "--json",
                                      netns=slaac.host_ns).stdout)  # fmt: skip
            assert held["established"] == held["target"] == 300 * len(rows)
            multiip("down", "--prefix", sp, "--yes", netns=slaac.host_ns)
            assert ip_json(family, "route", "show", "table", "local", "type", "local", block, netns=slaac.host_ns) == []
            assert sh("cat", nonlocal_bind, netns=slaac.host_ns).stdout.strip() == "0"
            assert host_state(slaac.host_ns, sp) == before
    finally:
        for block, via in routes:
            sh("ip", "route", "del", block, "via", via, netns=slaac.lan_ns, check=False)


def test_family_6_on_a_lan_without_ipv6_is_refused_with_nothing_changed(lab: labmod.Lab, prefix: str) -> None:
    before = host_state(lab.host_ns, prefix)
    cp = multiip("run", "--prefix", prefix, "--count", "2", "--family", "6", "--yes", netns=lab.host_ns, check=False)
    assert cp.returncode != 0
    last = cp.stderr.strip().splitlines()[-1]
    assert "no default route from router advertisements" in last and "--family 4" in last, cp.stderr
    assert host_state(lab.host_ns, prefix) == before
    # auto on this LAN: IPv4 alone, the namespaces without IPv6 link-local addresses (none floods the LAN)
    multiip("run", "--mode", "macvlan", "--prefix", prefix, "--count", "2", "--yes", netns=lab.host_ns)
    assert status(prefix, lab.host_ns)["family"] == "4"
    for ns in ours(prefix):
        assert not [x for x in ip_json("-6", "address", "show", netns=ns) if x["ifname"] != "lo" and x.get("addr_info")]
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--addresses", "198.18.0.10,2001:db8::5"], "a setup's static addresses are of one family"),
        (["--mode", "alias", "--addresses", "198.18.0.32/30", "--count", "8"], "holds 4 addresses, not the 8"),
        (["--mode", "alias", "--addresses", "2001:db8::/126", "--count", "8"], "holds 3 addresses, not the 8"),
        (["--address", "2001:db8::10/64", "--family", "4"], "the addresses give the family"),
        (["--local-route", "--addresses", "198.18.0.32/28"], "give --mode alias and --addresses BLOCK"),
        (["--family", "6", "--dhcp", "udhcpc"], "is a DHCPv4 client and --family 6"),
        (["--dhcp6", "--family", "4"], "not with static ones or --family 4"),
    ],
)
def test_bad_ipv6_input_is_one_line(args: list[str], message: str) -> None:
    cp = multiip("render", *args, check=False)
    assert cp.returncode != 0 and cp.stdout == ""
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in cp.stderr, cp.stderr
