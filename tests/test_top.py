"""`multiip top`: the parsers of the kernel's counters and netlink replies (no root), its sampler on this
namespace's loopback sockets (no root: sock_diag dumps are anyone's), and, as root in the lab, top against
what `multiip hold` holds."""

from __future__ import annotations

import io
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import multiip
from rich.console import Console

from multiip import lab as labmod
from multiip import top, ui
from multiip.errors import MultiipError
from multiip.state import Record

SNMP = """\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams OutRequests
Ip: 1 64 1805 0 0 0 1790
Icmp: InMsgs InErrors
Icmp: 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs \
OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 64518 2 0 0 64513 905843 903210 0 0 6 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 4 0 0 4 0 0 0 0 0
"""

SOCKSTAT = """\
sockets: used 64530
TCP: inuse 64514 orphan 0 tw 3 alloc 64520 mem 2
UDP: inuse 0 mem 0
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
"""

SOCKSTAT6 = """\
TCP6: inuse 1
UDP6: inuse 0
UDPLITE6: inuse 0
RAW6: inuse 0
FRAG6: inuse 0 memory 0
"""


def test_snmp() -> None:
    parsed = top.parse_snmp(SNMP)
    assert parsed["Tcp"]["CurrEstab"] == 64513
    assert parsed["Tcp"]["MaxConn"] == -1
    assert (parsed["Tcp"]["InSegs"], parsed["Tcp"]["OutSegs"]) == (905843, 903210)
    assert parsed["Ip"]["OutRequests"] == 1790 and parsed["Udp"]["MemErrors"] == 0


def test_sockstat() -> None:
    assert top.parse_sockstat(SOCKSTAT)["TCP"] == {"inuse": 64514, "orphan": 0, "tw": 3, "alloc": 64520, "mem": 2}
    assert top.parse_sockstat(SOCKSTAT)["FRAG"] == {"inuse": 0, "memory": 0}
    assert top.parse_sockstat(SOCKSTAT6)["TCP6"] == {"inuse": 1}


def test_port_ranges() -> None:
    assert top.port_range_size("1024\t65535\n") == 64512
    assert top.port_range_size("32768\t60999\n") == 28232
    assert top.alias_ports("32768\t60999\n") == 64512  # inside 1024-65535
    assert top.alias_ports("500 2000") == 65036  # 500-65535


def test_diag_request_is_an_inet_diag_req_v2() -> None:
    req = top.diag_request(socket.AF_INET, top.RARE)
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags) == (len(req), 20, 0x301) and length == 16 + 56
    family, protocol, ext, _, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, protocol, ext) == (socket.AF_INET, socket.IPPROTO_TCP, 0)
    assert states == (1 << 2) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11)  # SYN-SENT, the closing ones
    assert not states & (1 << top.ESTABLISHED)
    code = top.source_bytecode(["198.18.150.1"])
    with_code = top.diag_request(socket.AF_INET, top.HOLDING, code)
    attr_len, attr_kind = struct.unpack_from("=HH", with_code, 72)
    assert (attr_len, attr_kind) == (4 + len(code), 1) and with_code[76:] == code  # INET_DIAG_REQ_BYTECODE


# The kernel's checks and interpreter of inet_diag bytecode (net/ipv4/inet_diag.c: inet_diag_bc_audit,
# valid_cc, valid_hostcond, inet_diag_bc_run), for the two operations source_bytecode uses.


def _valid_cc(bc: bytes, length: int, cc: int) -> bool:
    pos = 0
    while length >= 0:
        if cc > length:
            return False
        if cc == length:
            return True
        yes = bc[pos + 1]
        if yes < 4 or yes & 3:
            return False
        length -= yes
        pos += yes
    return False


def _audit(bc: bytes) -> bool:
    pos, length = 0, len(bc)
    while length > 0:
        code, yes, no = struct.unpack_from("=BBH", bc, pos)
        min_len = 4
        if code == top.INET_DIAG_BC_S_COND:
            min_len += 8
            if length < min_len:
                return False
            family, prefix_len = bc[pos + 4], bc[pos + 5]
            min_len += {socket.AF_INET: 4, socket.AF_INET6: 16, 0: 0}[family]
            if length < min_len or prefix_len > 8 * (min_len - 12):
                return False
        elif code != top.INET_DIAG_BC_JMP:
            return False
        if no < min_len or no > length + 4 or no & 3:
            return False
        if no < length and not _valid_cc(bc, len(bc), length - no):
            return False
        if yes < min_len or yes > length + 4 or yes & 3:
            return False
        pos += yes
        length -= yes
    return length == 0


def _run(bc: bytes, source: str) -> bool:
    addr = socket.inet_aton(source)
    pos, length = 0, len(bc)
    while length > 0:
        code, yes, no = struct.unpack_from("=BBH", bc, pos)
        ok = False
        if code == top.INET_DIAG_BC_S_COND:
            family, prefix_len, port = struct.unpack_from("=BBxxi", bc, pos + 4)
            want = int.from_bytes(bc[pos + 12 : pos + 16], "big")
            mask = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF
            ok = port == -1 and family == socket.AF_INET and int.from_bytes(addr, "big") & mask == want & mask
        step = yes if ok else no
        pos += step
        length -= step
    return length == 0


@pytest.mark.parametrize("n", [1, 2, 3, 17, top.MAX_SOURCES])
def test_source_bytecode_passes_the_kernels_audit_and_matches_exactly_its_addresses(n: int) -> None:
    ips = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(n)]
    code = top.source_bytecode(ips)
    assert len(code) == 20 * n - 4 <= 65535 - 4
    assert _audit(code)
    for ip in {ips[0], ips[-1], ips[n // 2]}:
        assert _run(code, ip)
    for other in ("198.19.0.1", "10.0.0.1", "198.18.255.255"):
        assert not _run(code, other)


def test_source_bytecode_bounds() -> None:
    with pytest.raises(ValueError):
        top.source_bytecode([])
    with pytest.raises(ValueError):
        top.source_bytecode(["198.18.0.1"] * (top.MAX_SOURCES + 1))


def diag_msg(state: int, source: str, timer: int = 0, family: int = socket.AF_INET) -> bytes:
    """One sock_diag reply as the kernel sends it: nlmsghdr, inet_diag_msg, an attribute."""
    src = socket.inet_aton(source) if family == socket.AF_INET else bytes(10) + b"\xff\xff" + socket.inet_aton(source)
    body = struct.pack("=BBBBHH16s16sI8sIIIII", family, state, timer, 0, 40000, 9000, src, bytes(16), 0, bytes(8),
                       0, 0, 0, 0, 12345) + struct.pack("=HHB3x", 5, 8, 0)  # fmt: skip
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


def done(code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, top.NLMSG_DONE, 2, 1, 0, code)


def test_tally_counts_by_source_state_and_bucket() -> None:
    counts: Counter[tuple[bytes, int, bool]] = Counter()
    first = diag_msg(top.SYN_SENT, "198.18.150.1") * 2 + diag_msg(top.FIN_WAIT2, "198.18.150.1", timer=3)
    assert not top.tally(first, counts)  # no NLMSG_DONE yet: more to read
    second = diag_msg(top.CLOSE_WAIT, "198.18.150.2", family=socket.AF_INET6) + done()
    assert top.tally(memoryview(second), counts)
    a, b = socket.inet_aton("198.18.150.1"), socket.inet_aton("198.18.150.2")
    assert counts == {(a, top.SYN_SENT, False): 2, (a, top.FIN_WAIT2, True): 1, (b, top.CLOSE_WAIT, False): 1}
    assert top.by_state(counts) == {(top.SYN_SENT, False): 2, (top.FIN_WAIT2, True): 1, (top.CLOSE_WAIT, False): 1}


def test_tally_raises_the_dumps_error() -> None:
    error = struct.pack("=IHHIIi", 36, top.NLMSG_ERROR, 0, 1, 0, -22) + bytes(16)
    with pytest.raises(OSError) as e:
        top.tally(error, Counter())
    assert e.value.errno == 22
    with pytest.raises(OSError):
        top.tally(done(-1), Counter())


def addr_msg(address: str, label: str, scope: int = 0) -> bytes:
    def attr(kind: int, data: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(data), kind) + data + bytes(-(4 + len(data)) % 4)

    body = struct.pack("=BBBBI", socket.AF_INET, 16, 0, scope, 2)
    body += attr(top.IFA_ADDRESS, socket.inet_aton(address)) + attr(top.IFA_LOCAL, socket.inet_aton(address))
    body += attr(top.IFA_LABEL, label.encode() + b"\0")
    return struct.pack("=IHHII", 16 + len(body), top.RTM_NEWADDR, 2, 1, 0) + body


def test_parse_addresses_leaves_out_loopback() -> None:
    found: list[tuple[str, str]] = []
    data = addr_msg("127.0.0.1", "lo", scope=254) + addr_msg("198.18.150.1", "eth0") + done()
    assert top.parse_addresses(data, found)
    assert found == [("eth0", "198.18.150.1")]


def counters(**kw: Any) -> top.Counters:
    base: dict[str, Any] = {
        "curr_estab": 1000, "segments": (10, 20), "inuse": 1010, "inuse6": 0, "tw": 7, "listen": 0, "listen6": 0,
        "ports": 64512, "ip": "198.18.150.1",
    }  # fmt: skip
    return top.Counters(**{**base, **kw})


def test_a_row_with_its_split_is_exact() -> None:
    c = counters()
    dumped = Counter({(top.SYN_SENT, False): 4, (top.FIN_WAIT1, False): 6, (top.CLOSE_WAIT, False): 2,
                      (top.FIN_WAIT2, True): 3})  # fmt: skip
    row = top.row_of("p0", c, top.split_of(c, dumped, 0.0))
    assert row == top.Row("p0", "198.18.150.1", established=998, syn_sent=4, time_wait=4, closing=6 + 2 + 3,
                          ports_in_use=1017, ports=64512, estimated=False)  # fmt: skip


def test_a_row_whose_counters_moved_is_estimated_from_its_last_split() -> None:
    old = counters()
    split = top.split_of(old, Counter({(top.SYN_SENT, False): 5, (top.LAST_ACK, False): 5}), 0.0)
    now = counters(curr_estab=2000, inuse=2020, segments=(99, 99), tw=0)  # 20 others: split as before, half-half
    row = top.row_of("p0", now, split)
    assert row.estimated and (row.established, row.syn_sent, row.closing, row.time_wait) == (2000, 10, 10, 0)
    assert row.ports_in_use == 2020


def test_a_row_without_history_guesses_by_the_direction() -> None:
    assert top.row_of("p0", counters(), None).syn_sent == 10  # first seen: connecting
    split = top.split_of(counters(curr_estab=5000, inuse=5000), Counter(), 0.0)
    shrinking = top.row_of("p0", counters(), split)
    assert (shrinking.syn_sent, shrinking.closing, shrinking.estimated) == (0, 10, True)


def test_listeners_are_not_connecting() -> None:
    row = top.row_of("p0", counters(curr_estab=0, inuse=1, listen=1, tw=0), None)
    assert (row.syn_sent, row.closing, row.ports_in_use) == (0, 0, 1)


def snapshot(in_use: int, ports: int = 64512) -> dict[str, Any]:
    rows = [
        {"name": "p0", "ip": "198.18.150.1", "established": in_use, "syn_sent": 0, "time_wait": 0, "closing": 0,
         "ports_in_use": in_use, "ports": ports, "estimated": False},
        {"name": "p1", "ip": "198.18.150.2", "established": 5, "syn_sent": 1, "time_wait": 0, "closing": 0,
         "ports_in_use": 6, "ports": ports, "estimated": True},
    ]  # fmt: skip
    keys = ("established", "syn_sent", "time_wait", "closing", "ports_in_use", "ports")
    return {
        "time": "2026-01-02T03:04:05.678Z", "prefix": "p", "mode": "bridge", "sample_seconds": 0.0021,
        "split_dumps": 0, "namespaces": rows, "total": {k: sum(r[k] for r in rows) for k in keys},
    }  # fmt: skip


def test_ports_in_use_stand_out_past_90_percent() -> None:
    assert ui.ports_used(61200, 64512) == ("61,200 / 64,512 (95%)", True)
    assert ui.ports_used(58000, 64512) == ("58,000 / 64,512 (90%)", False)
    assert ui.ports_used(64511, 64512)[0] == "64,511 / 64,512 (99%)"  # 100% only when full
    assert ui.ports_used(64512, 64512)[0] == "64,512 / 64,512 (100%)"
    line = ui.top_line(snapshot(61200))
    assert "2 IPs, established 61,205, connecting 1" in line and "ports 61,206 / 129,024 (47%)" in line
    assert line.endswith("fullest p0 198.18.150.1 61,200 / 64,512 (95%) PORTS NEARLY EXHAUSTED")
    assert "EXHAUSTED" not in ui.top_line(snapshot(100))


def test_top_table_shows_every_ip_and_the_totals() -> None:
    out = Console(width=160, record=True, file=io.StringIO())
    out.print(ui.top_table(snapshot(61200)))
    text = out.export_text()
    assert "198.18.150.1" in text and "61,200 / 64,512 (95%)" in text and "~5" in text
    assert "total (2)" in text and "61,206 / 129,024 (47%)" in text
    out.print(ui.top_table(snapshot(61200), max_rows=1))
    assert "… 1 more" in out.export_text()


@pytest.fixture
def loopback() -> Iterator[dict[str, str]]:
    """TCP sockets on loopback addresses of this namespace no one else uses (127.R.R.x), in known states."""
    base = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
    ip = {k: f"{base}.{i}" for i, k in enumerate(("server", "client", "half", "gone", "waiting", "full"), start=1)}
    sockets: list[socket.socket] = []

    def sock(bind: str) -> socket.socket:
        s = socket.socket()
        sockets.append(s)
        s.bind((bind, 0))
        return s

    try:
        listener = sock(ip["server"])
        listener.listen(16)
        server = listener.getsockname()
        for _ in range(2):
            sock(ip["client"]).connect(server)
            sockets.append(listener.accept()[0])
        half = sock(ip["half"])
        half.connect(server)
        sockets.append(listener.accept()[0])
        half.shutdown(socket.SHUT_WR)  # it: FIN-WAIT-2; the server's end: CLOSE-WAIT
        gone = sock(ip["gone"])
        gone.connect(server)
        accepted = listener.accept()[0]
        gone.close()
        accepted.close()  # closed first by the client: its end in TIME-WAIT
        full = sock(ip["full"])
        full.listen(0)  # one connection fills its queue: the next stays in SYN-SENT
        for _ in range(2):
            s = sock(ip["waiting"])
            s.setblocking(False)
            s.connect_ex(full.getsockname())
        yield ip
    finally:
        for s in sockets:
            s.close()


def test_alias_mode_counts_per_source_address(loopback: dict[str, str]) -> None:
    """The alias path's one dump, against this namespace's own sockets."""
    netns = str(Path("/proc/thread-self/ns/net").stat().st_ino)
    record = Record({"PREFIX": "a", "MODE": "alias", "NETNS": netns, "LABEL": "lo:a"}, [],
                    [f"{ip}/8" for ip in loopback.values()])  # fmt: skip
    want = {
        "server": (2, 0, 0, 1, 4),  # established, syn_sent, time_wait, closing, ports_in_use (the listener too)
        "client": (2, 0, 0, 0, 2),
        "half": (0, 0, 0, 1, 1),
        "gone": (0, 0, 1, 0, 1),
        "waiting": (1, 1, 0, 0, 2),
        "full": (1, 0, 0, 0, 2),
    }
    deadline = time.monotonic() + 10
    while True:
        snap = top.sample(record)
        got = {
            k: (r["established"], r["syn_sent"], r["time_wait"], r["closing"], r["ports_in_use"])
            for k, r in zip(loopback, snap["namespaces"], strict=True)
        }
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # loopback's handshakes and FINs are asynchronous
    assert got == want
    assert [r["ip"] for r in snap["namespaces"]] == list(loopback.values())
    assert {r["name"] for r in snap["namespaces"]} == {"lo:a"} and snap["split_dumps"] == 1
    assert snap["total"]["established"] == 6 and snap["namespaces"][0]["ports"] >= 64512
    json.dumps(snap)


def test_alias_mode_refuses_another_namespace() -> None:
    record = Record({"PREFIX": "a", "MODE": "alias", "NETNS": "1"}, [], ["198.18.0.9/16"])
    with pytest.raises(MultiipError, match="another network namespace"):
        top.sample(record)


def test_the_budget_rations_dumps() -> None:
    sampler = top.Sampler(share=0.5)
    sampler._refill(100.0)
    assert sampler._may_dump()  # the first refresh: every split
    sampler.credit = -1.0  # a dump ran over
    sampler._refill(101.0)
    assert not sampler._may_dump()  # paid back at 0.5 s a second
    sampler._refill(103.0)
    assert sampler._may_dump()
    sampler._refill(1000.0)
    assert sampler.credit == pytest.approx(0.5 * 897)  # credit is the time since the last refresh's share
    watching = top.Sampler(first=0.3)  # multiip top's first refresh: a budget of its own
    watching._refill(100.0)
    assert watching._may_dump()
    watching._spent(time.monotonic() - 0.4)  # its first dump took 0.4 s
    assert not watching._may_dump()  # the others wait for the next refreshes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "--interval 0: give 0.1..3600 seconds"),
        (["--count", "0"], "--count 0"),
        (["--prefix", "a b"], "--prefix"),
    ],
)
def test_bad_top_input(args: list[str], message: str) -> None:
    cp = multiip("top", *args, check=False)
    assert cp.returncode != 0 and cp.stdout == ""
    assert len(cp.stderr.splitlines()) == 1 and message in cp.stderr, cp.stderr


def test_top_has_an_example_in_its_help() -> None:
    help_text = multiip("top", "--help").stdout
    assert "Example: " in help_text and "multiip top" in help_text.split("Example: ")[1]


@pytest.mark.root
def test_top_shows_what_hold_holds(lab: labmod.Lab, prefix: str, tmp_path: Path) -> None:
    ips = ["198.18.150.1", "198.18.150.2"]
    multiip("run", "--prefix", prefix, "--count", "2", "--dhcp", "none", "--address", "198.18.150.1/16", "--yes",
            netns=lab.host_ns)  # fmt: skip
    hold = None
    try:
        with (tmp_path / "hold.err").open("w") as err:
            hold = subprocess.Popen(
                [sys.executable, "-m", "multiip", "hold", f"{lab.lan_ip}:{lab.port}", "--prefix", prefix,
                 "--per-ip", "1500"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while [labmod.sink_stats(lab)["peers"].get(ip, 0) for ip in ips] != [1500, 1500]:
            assert hold.poll() is None, (tmp_path / "hold.err").read_text()
            assert time.monotonic() < deadline, labmod.sink_stats(lab)
            time.sleep(0.1)
        while True:  # the sink's end is counted before the client's ACK is: wait for top to see them too
            cp = multiip("top", "--prefix", prefix, "--json", "--count", "2", "--interval", "0.2")
            snaps = [json.loads(line) for line in cp.stdout.splitlines()]
            rows = snaps[-1]["namespaces"]
            if [(r["ip"], r["established"]) for r in rows] == [(ip, 1500) for ip in ips]:
                break
            assert time.monotonic() < deadline, snaps[-1]
        assert len(snaps) == 2 and cp.stderr == ""
        for snap in snaps:
            assert set(snap) >= {"time", "namespaces", "total"}
            assert [r["name"] for r in snap["namespaces"]] == [f"{prefix}0", f"{prefix}1"]
        for r in rows:
            assert (r["syn_sent"], r["time_wait"], r["closing"]) == (0, 0, 0), r
            assert (r["ports_in_use"], r["ports"], r["estimated"]) == (1500, 64512, False), r
        assert snaps[-1]["total"] == {"established": 3000, "syn_sent": 0, "time_wait": 0, "closing": 0,
                                      "ports_in_use": 3000, "ports": 129024}  # fmt: skip
        assert snaps[-1]["split_dumps"] == 0  # idle held connections: no dump after the first refresh
        line = multiip("top", "--prefix", prefix, "--count", "1").stderr  # not a terminal: one line
        assert "2 IPs, established 3,000, connecting 0" in line and "ports 3,000 / 129,024 (2%)" in line, line
    finally:
        if hold is not None:
            hold.send_signal(signal.SIGINT)
            try:
                hold.wait(timeout=30)
            except subprocess.TimeoutExpired:
                hold.kill()
                hold.wait()
        multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
