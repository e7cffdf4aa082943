"""The parsers between the scripts and Python: script messages, the setup record, status probes, leases."""

from __future__ import annotations

import json

import pytest

from multiip import messages, state
from multiip.execute import ScriptLog


@pytest.mark.parametrize(
    ("line", "kind", "text", "done", "total"),
    [
        ("multiip: [2/6] record the setup", "step", "record the setup", 2, 6),
        ("multiip: progress leases 17/20\n", "progress", "leases", 17, 20),
        ("multiip: error: uplink nosuch0 does not exist", "error", "uplink nosuch0 does not exist", 0, 0),
        ("multiip: ready: 4 namespaces", "note", "ready: 4 namespaces", 0, 0),
        ("RTNETLINK answers: File exists", "other", "RTNETLINK answers: File exists", 0, 0),
        ("multiip: [x/6] not a step", "note", "[x/6] not a step", 0, 0),
    ],
)
def test_message_parse(line: str, kind: str, text: str, done: int, total: int) -> None:
    assert messages.parse(line) == messages.Message(kind, text, done, total)  # type: ignore[arg-type]


def test_doctor_findings() -> None:
    assert messages.finding(messages.parse("multiip: found new_mac=dropped")) == ("new_mac", "dropped")
    offer = messages.parse("multiip: found dhcp=offer from 10.0.0.1")
    assert messages.finding(offer) == ("dhcp", "offer from 10.0.0.1")
    assert messages.finding(messages.parse("multiip: found nothing")) is None
    assert messages.finding(messages.parse("found x=y")) is None  # a tool's own line, not a message


def test_alias_record_parse() -> None:
    record = state.parse_record("PREFIX=a\nMODE=alias\nUPLINK=eth0\nLABEL=eth0:a\n", "", "10.0.1.20/24\n10.0.1.21/24\n")
    assert record.mode == "alias" and record.members == [] and record.addresses == ["10.0.1.20/24", "10.0.1.21/24"]
    assert state.parse_record("PREFIX=b\n", "").mode == "bridge"  # records from before --mode


def test_script_log_keeps_the_first_error_and_the_tool_line_before() -> None:
    shown: list[str] = []
    log = ScriptLog(shown.append)
    failed = 'multiip: error: step "4/6" failed (exit 1 at line 9)'
    for line in ("multiip: [4/6] namespaces", 'Cannot find device "x"', failed, "multiip: error: later"):
        log(line)
    assert log.message(1) == 'step "4/6" failed (exit 1 at line 9): Cannot find device "x"'
    assert len(shown) == 4
    quiet = ScriptLog(shown.append)
    assert quiet.message(3) == "script failed with exit 3"
    named = ScriptLog(shown.append)
    named("multiip: error: uplink nosuch0 does not exist")
    assert named.message(2) == "uplink nosuch0 does not exist"


def test_record_parse() -> None:
    record = state.parse_record(
        "PREFIX=t1\nBRIDGE=br0\nUPLINK=eth0\nDHCP=udhcpc\nCOUNT=2\n",
        "t10 t1-t0 t1-b0 /run/multiip/t1/t10.pid /run/multiip/t1/t10.lease\nt11 t1-t1 t1-b1 - -\nbroken line\n",
    )
    assert record.client == "udhcpc" and record.env["BRIDGE"] == "br0"
    assert [m.name for m in record.members] == ["t10", "t11"]
    assert record.members[0].pidfile == "/run/multiip/t1/t10.pid" and record.members[1].leasefile is None


def test_decode_probe() -> None:
    links = [
        {"ifname": "lo", "address": "00:00:00:00:00:00", "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
        {"ifname": "tap3", "address": "02:aa:bb:cc:dd:03",
         "addr_info": [{"family": "inet", "local": "198.18.1.9", "prefixlen": 15},
                       {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
    ]  # fmt: skip
    routes = [{"dst": "default", "gateway": "198.18.0.1", "dev": "tap3"}]
    out = f"{json.dumps(links)}\n\n{json.dumps(routes)}\n\n1024\t65535\n"
    st = state.decode_probe(state.Member("ns3", "tap3", "br-tap3", None, None), out)
    assert (st.mac, st.ipv4, st.gateway, st.port_range) == (
        "02:aa:bb:cc:dd:03",
        "198.18.1.9/15",
        "198.18.0.1",
        "1024-65535",
    )
    empty = state.decode_probe(state.Member("ns3", "tap3", "br-tap3", None, None), "[]\n\n[]\n\n")
    assert empty.ipv4 is None and empty.gateway is None and empty.port_range is None


def test_lease_expiry() -> None:
    udhcpc = "ipv4=198.18.1.2/15\nlease=43200\n"  # our event script's, written when it got the lease
    assert state.lease_expiry("udhcpc", udhcpc, 1800000000 - 43200) == "2027-01-15T08:00:00+00:00"
    dhclient = "lease {\n  expire 4 2026/11/26 10:00:00;\n}\nlease {\n  expire 4 2026/11/26 12:00:00;\n}\n"
    assert state.lease_expiry("dhclient", dhclient) == "2026-11-26T12:00:00+00:00"
    assert state.lease_expiry("dhcpcd", "\x01\x02binary") is None
    assert state.lease_expiry("udhcpc", "garbage", 1800000000) is None
    dhclient6 = "lease6 {\n  ia-na 16:43:00:00 {\n    iaaddr 2001:db8::1:951b {\n      starts 1800000000;\n" \
                "      preferred-life 7200;\n      max-life 7500;\n    }\n  }\n}\n"  # fmt: skip
    assert state.lease_expiry("dhclient6", dhclient6) == "2027-01-15T10:05:00+00:00"
