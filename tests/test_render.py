"""Rendering: one golden script per kind, focused assertions for the other option sets, every script
shellcheck-clean and parsed by bash; templates ship in the wheel; rendering loads no load generator or lab."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import jinja2
import pytest

from multiip import lab
from multiip.plan import make_plan, make_target
from multiip.render import _Cache, bytecode_cache, doctor_script, setup_script, teardown_script

GOLDEN = Path(__file__).parent / "golden"
GOLDENS = {
    "setup-seed": lambda: setup_script(make_plan()),
    "teardown-seed": lambda: teardown_script(make_target()),
}
STATIC_BRCTL = dict(
    prefix="lab", count=300, dhcp="none", address="198.18.10.1/15", gateway="198.18.0.1", bridge="brx",
    uplink="ens3", bridge_tool="brctl", port_range="2000-60000",
)  # fmt: skip
SCRIPTS = {
    **GOLDENS,
    "setup-static-brctl": lambda: setup_script(make_plan(**STATIC_BRCTL)),
    "setup-dhclient-hostdhcp": lambda: setup_script(
        make_plan(count=4, dhcp="dhclient", host_dhcp=True, lease_timeout=60)
    ),
    "setup-confirm-tune": lambda: setup_script(make_plan(confirm=30, tune_host=True)),
    "teardown-custom": lambda: teardown_script(make_target(prefix="lab", bridge="brx", uplink="ens3")),
    "setup-macvlan": lambda: setup_script(make_plan(mode="macvlan", count=2000)),
    "setup-ipvlan-static": lambda: setup_script(
        make_plan(mode="ipvlan", count=8, dhcp="none", address="198.18.20.1/15", uplink="ens5")
    ),
    "setup-ipvlan-dhcp": lambda: setup_script(make_plan(mode="ipvlan", count=8)),
    "setup-ipvlan-listed": lambda: setup_script(make_plan(mode="ipvlan", addresses="10.0.1.20,10.0.1.21/24")),
    "setup-alias": lambda: setup_script(
        make_plan(mode="alias", addresses="10.0.1.20,10.0.1.21", port_range="1024-65535")
    ),
    "setup-alias-keep-ports": lambda: setup_script(make_plan(mode="alias", address="198.18.30.1/15", count=300)),
    "setup-macvlan-arping": lambda: setup_script(
        make_plan(mode="macvlan", addresses="198.18.50.1,198.18.50.2", probe_tool="arping")
    ),
    "setup-alias-arp-scan": lambda: setup_script(
        make_plan(mode="alias", address="198.18.30.1/15", probe_tool="arp-scan")
    ),
    "setup-family-6": lambda: setup_script(make_plan(family="6")),
    "setup-dual-dhcp6": lambda: setup_script(make_plan(family="dual", dhcp6=True, dhcp="dhclient")),
    "setup-macvlan-6-dhcp6": lambda: setup_script(make_plan(mode="macvlan", family="6", dhcp6=True)),
    "setup-ipvlan-6": lambda: setup_script(make_plan(mode="ipvlan", family="6")),
    "setup-static-6": lambda: setup_script(make_plan(address="2001:db8:100::10/64", count=4)),
    "setup-alias-6": lambda: setup_script(make_plan(mode="alias", addresses="2001:db8:100::10,2001:db8:100::11")),
    "setup-alias-block": lambda: setup_script(make_plan(mode="alias", addresses="198.18.40.16/28")),
    "setup-alias-local-route-6": lambda: setup_script(
        make_plan(mode="alias", addresses="2001:db8:5::/80", count=32, local_route=True)
    ),
    "doctor": lambda: doctor_script("", 3, False),
    "doctor-probe": lambda: doctor_script("", 3, True),
    "lab-up": lambda: lab.up_script(lab.make_lab()),
    "lab-up-cloud": lambda: lab.up_script(lab.make_lab(cloud=4)),
    "lab-up-networkd": lambda: lab.up_script(lab.make_lab(manager="systemd-networkd", server=True, critical=True)),
    "lab-up-nm": lambda: lab.up_script(lab.make_lab(manager="NetworkManager", client_id="duid", mtu=1400)),
    "lab-up-hosts-slaac": lambda: lab.up_script(lab.make_lab(hosts=3, ipv6="slaac")),
    "lab-up-dhcpv6": lambda: lab.up_script(lab.make_lab(ipv6="dhcpv6")),
    "lab-down": lambda: lab.down_script(lab.make_lab()),
}


def code(script: str) -> str:
    """The script without its comments: what bash runs."""
    return "\n".join(line.split("  # ")[0] for line in script.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("case", sorted(GOLDENS))
def test_golden(case: str) -> None:
    """A changed script is a reviewed change: UPDATE_GOLDEN=1 rewrites tests/golden/."""
    text = GOLDENS[case]()
    path = GOLDEN / f"{case}.sh"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("case", sorted(SCRIPTS))
def test_shellcheck_clean(case: str, tmp_path: Path) -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    script = tmp_path / f"{case}.sh"
    script.write_text(SCRIPTS[case]())
    cp = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout


@pytest.mark.parametrize("case", sorted(SCRIPTS))
def test_bash_parses_it_and_it_is_only_bash(case: str, tmp_path: Path) -> None:
    text = SCRIPTS[case]()
    script = tmp_path / "s.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert text.startswith("#!/usr/bin/env bash\n")
    body = code(text)  # no second language: no perl, no inline python, no here-document but the udhcpc script
    assert not re.search(r"\b(perl|ruby|lua)\b|python3? -c", body)
    # here-documents: ip batches, the udhcpc event script; the lab's: its cloud LAN's nft ruleset, its host's
    # DHCP client script and networkd file
    allowed = {"UDHCPC", "BATCH"} | ({"NFT", "CLIENT", "NETWORK"} if case.startswith("lab-") else set())
    assert set(re.findall(r"<<-?'?(\w+)", body)) <= allowed


def test_choices_made_at_render_time_are_not_tested_again_in_bash() -> None:
    seed = code(setup_script(make_plan()))
    static = code(setup_script(make_plan(**STATIC_BRCTL)))
    hostdhcp = code(setup_script(make_plan(host_dhcp=True)))
    for text in (seed, static, hostdhcp):
        assert "BRIDGE_TOOL" not in text and "HOST_MODE" not in text and "TUNE_HOST" not in text
    assert "brctl" not in seed and 'brctl addbr "$BRIDGE"' in static and 'brctl addif "$BRIDGE" "$UPLINK"' in static
    assert 'brctl stp "$BRIDGE" off' in static and "type bridge stp_state 0" in seed
    assert 'step 6/6 "static addresses' in static and "DHCP=none" in static
    assert 'dhcp_start "$DHCP" "$PREFIX$i"' not in static
    assert "198.18.10.1/15 198.18.10.2/15" in static and "GATEWAY=198.18.0.1" in static
    assert "PORT_RANGE=(2000 60000)" in static
    assert 'dhcp_start "$DHCP" host "$BRIDGE"' in hostdhcp and 'carry "$BRIDGE_STATE/carry.then"' in hostdhcp
    assert 'dhcp_start "$DHCP" host' not in seed and 'carry "$BRIDGE_STATE/carry" "$UPLINK" "$BRIDGE"' in seed
    assert "renew_on_bridge" in seed and "renew_on_bridge" not in hostdhcp
    tuned = code(setup_script(make_plan(tune_host=True)))
    assert "host-limits" in tuned and "host-limits" not in seed


def test_each_script_includes_only_the_helpers_it_calls() -> None:
    for render in SCRIPTS.values():
        body = code(render())
        for helper in re.findall(r"^([a-z_]+)\(\) \{", body, re.M):
            calls = len(re.findall(rf"(?<![\w-]){helper}\b", body))
            assert calls >= 2, f"{helper} is defined and never called"  # the definition is one


def test_every_script_speaks_one_message_format() -> None:
    """say/die/step/progress come from one include; no script prints the format by hand."""
    for render in SCRIPTS.values():
        body = code(render())
        assert body.count("say() {") == 1 and body.count("die() {") == 1
        for line in body.splitlines():
            if "printf 'multiip: " in line or 'printf "multiip: ' in line:
                assert re.match(r"\s*(say|die|step|progress)\(\)|\s*(if|else).*interrupted|.*failed \(exit", line) or (
                    "/dev/tty" in line or "is now in" in line
                ), line


def test_script_shape() -> None:
    text = setup_script(make_plan())
    assert "set -Eeuo pipefail" in text
    assert "need_root" in text and "need_tool ip iproute2" in text
    assert "step 1/6" in text and "step 6/6" in text
    # the seed's names and bridge, and the record's place, told by Python
    assert "PREFIX=ns " in text and "INSIDE=tap " in text and "PORT=br-tap " in text and "BRIDGE=br0\n" in text
    assert "STATE=/run/multiip/ns " in text
    # decided where it runs: uplink and client
    assert "UPLINK=''" in text and "DHCP=auto " in text
    # the namespaces are entered with nsenter, never ip netns exec or ip -n, when they are made
    made = code(text[text.index("step 4/6") : text.index("step 5/6")])
    assert "nsenter --net=" in made and "ip netns exec" not in made and "ip -n " not in made


def test_the_probe_tool_is_the_one_asked_for_or_chosen_where_the_script_runs() -> None:
    """--probe-tool arping or arp-scan: that tool alone, needed in the preflight; auto: arp-scan where the script
    runs has it, iputils' arping otherwise, both in the script."""
    for tool, needed, others in (
        ("arping", "need_tool arping iputils-arping", ("arp-scan ", "probe_arp_scan")),
        ("arp-scan", "need_tool arp-scan arp-scan", ("arping -D", "probe_arping")),
    ):
        body = code(setup_script(make_plan(mode="alias", addresses="10.0.1.20,10.0.1.21", probe_tool=tool)))
        assert needed in body and f"PROBE_TOOL={tool}" in body, tool
        assert not [word for word in others if word in body], tool
    auto = code(setup_script(make_plan(mode="alias", addresses="10.0.1.20,10.0.1.21")))
    assert "command -v arp-scan" in auto and "arp-scan --interface=" in auto and "arping -D" in auto
    # an arping that is not iputils' reads -D otherwise: refused in the preflight, before anything changes
    for tool, checked in (("auto", True), ("arping", True), ("arp-scan", False)):
        body = code(setup_script(make_plan(mode="alias", addresses="10.0.1.20,10.0.1.21", probe_tool=tool)))
        assert ("arping -V 2>&1 | grep -q iputils" in body) == checked, tool
    assert "PROBE_TOOL" not in code(setup_script(make_plan(count=3)))  # DHCP: nothing to probe


def test_the_probe_waits_what_probe_wait_gives() -> None:
    """arp-scan waits the milliseconds; iputils' arping takes whole seconds, rounded up (never less), with as
    many requests: it waits no longer than its requests (-c), whatever its -w says."""
    for wait, scan, ping in (
        (500, "--timeout=500 ", "-c 1 -w 1 "),
        (2500, "--timeout=2500 ", "-c 3 -w 3 "),
        (3000, "--timeout=3000 ", "-c 3 -w 3 "),
    ):
        body = code(setup_script(make_plan(address="198.18.1.1/15", count=3, probe_wait=wait)))
        assert f'arp-scan --interface="$dev" --arpspa=0.0.0.0 --retry=1 {scan}' in body, wait
        assert f"arping -D {ping}" in body, wait


def rendered_function(script: str, name: str) -> str:
    """The bash function NAME as a script renders it, to run by itself."""
    function = re.search(rf"^{name}\(\) \{{.*?^\}}$", script, re.S | re.M)
    assert function is not None, name
    return function.group(0)


@pytest.mark.parametrize(
    ("answers", "last"),
    [
        ("0 none\n1 none\nend 2\n", "no host on the LAN answers for the 2 new addresses"),
        ("0 reply 02:00:00:00:00:01\n1 none\nend 2\n", "no host on the LAN answers for the 2 new addresses"),
        ("0 none\n1 reply 0a:0b:0c:0d:0e:0f\n1 reply 02:00:00:00:00:01\nend 2\n", "answered on the LAN (by 0a:0b"),
        ("0 none\nend 2\n", "answered for 1 of its 2 addresses"),
        ("0 none\n1 none\n", "did not finish"),
        ("\nend 2\n", "answered for 0 of its 2 addresses"),
        ("0 none\n1 failed arp-scan exit 1: bad\nend 2\n", "probe of 10.0.1.21 on eth0 failed (arp-scan exit 1: bad)"),
    ],
)
def test_the_probes_answers_are_read_whole(answers: str, last: str, tmp_path: Path) -> None:
    """probe_check, the rendered function itself, over a probe's lines (own MAC 02:00:00:00:00:01): an
    answer from someone else, a failure, a probe that stopped early or left an address out stop the setup."""
    function = rendered_function(setup_script(make_plan(mode="alias", addresses="10.0.1.20,10.0.1.21")), "probe_check")
    (tmp_path / "answers").write_text(answers)
    harness = f"""set -Eeuo pipefail
say() {{ echo "say: $*" >&2; }}
die() {{ echo "die: $*" >&2; exit 1; }}
find_cloud() {{ CLOUD=""; }}
ip() {{ echo "2: eth0: <UP> mtu 1500 link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff"; }}
ADDRESSES=(10.0.1.20/24 10.0.1.21/24) PROBE_DEV=eth0 PROBE_TOOL=arp-scan
exec {{PROBE_FD}}<{tmp_path / "answers"}
{function}
probe_check
"""
    cp = subprocess.run(["bash", "-c", harness], capture_output=True, text=True)
    assert last in cp.stderr.strip().splitlines()[-1], cp.stderr
    assert (cp.returncode == 0) == last.startswith("no host"), cp.stderr


@pytest.mark.parametrize(
    ("address", "net", "verdict"),
    [
        ("198.18.100.1", "198.18.0.2/15", "in"),
        ("198.20.0.1", "198.18.0.2/15", "out"),
        ("198.18.0.0", "198.18.0.2/15", "in first"),
        ("198.19.255.255", "198.18.0.2/15", "in last"),
        ("10.0.1.255", "10.0.1.7/24", "in last"),
        ("10.0.2.0", "10.0.1.7/24", "out"),
        ("255.255.255.254", "255.255.255.255/31", "in"),
        ("0.0.0.1", "0.0.0.0/0", "in"),
        ("1.2.3.4", "1.2.3.4/32", "in"),
    ],
)
def test_in_subnet_the_rendered_function(address: str, net: str, verdict: str) -> None:
    """in_subnet and ip_int as rendered: in the subnet or not, and its network (FIRST) and broadcast
    (LAST) addresses, the /31 and /32 having neither."""
    script = setup_script(make_plan(address="198.18.1.1/15", count=3))
    check = f'if in_subnet {address} {net}; then echo "in${{FIRST:+ first}}${{LAST:+ last}}"; else echo out; fi'
    harness = "\n".join([rendered_function(script, "ip_int"), rendered_function(script, "in_subnet"), check])
    assert subprocess.run(["bash", "-c", harness], capture_output=True, text=True, check=True).stdout.strip() == verdict


def test_host_resolv_conf_never_a_target() -> None:
    """Clients write their own resolver files; the host's is only ever a bind-mount target."""
    for case in SCRIPTS.values():
        for line in code(case()).splitlines():
            if "/etc/resolv.conf" in line:
                assert "mount --bind" in line, line


def test_rendering_loads_no_load_generator_lab_or_sh() -> None:
    program = (
        "import contextlib, io, sys\n"
        "from multiip import cli\n"
        "sys.argv = ['multiip', 'render', '--count', '3']\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main()\n"
        "print(sorted(m for m in sys.modules if m.startswith('multiip') or m == 'sh'))\n"
    )
    cp = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    loaded = cp.stdout.strip().splitlines()[-1]
    for module in ("multiip.hold", "multiip.holdworker", "multiip.lab", "multiip.sink", "multiip.demo", "'sh'"):
        assert module not in loaded, loaded
    assert "multiip.render" in loaded


def test_wheel_ships_templates(tmp_path: Path) -> None:
    """An installed wheel (no source tree around it) renders."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(root)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheel = next(tmp_path.glob("multiip-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "multiip/templates/setup_bridge.sh.j2" in names and "multiip/templates/teardown.sh.j2" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    cp = subprocess.run(
        [sys.executable, "-m", "multiip", "render", "--count", "3"], cwd=tmp_path, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("#!/usr/bin/env bash") and "COUNT=3" in cp.stdout
    cp = subprocess.run(
        [sys.executable, "-c", "import multiip.render as r; print(r.templates_dir())"], cwd=tmp_path, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert cp.stdout.strip() == str(target / "multiip" / "templates")


def test_systemd_service_runs_the_rendered_scripts(tmp_path: Path) -> None:
    from helpers import multiip

    out = multiip("render", "--systemd", str(tmp_path), "--count", "4", "--prefix", "boot").stdout.split()
    unit, setup, teardown = (tmp_path / n for n in ("multiip-boot.service", "multiip-boot-setup.sh",
                                                    "multiip-boot-teardown.sh"))  # fmt: skip
    assert out == [str(unit), str(setup), str(teardown)]
    text = unit.read_text()
    assert f"ExecStart=/bin/bash {setup}\n" in text and f"ExecStop=/bin/bash {teardown}\n" in text
    assert "Type=oneshot\nRemainAfterExit=yes\n" in text and "WantedBy=multi-user.target" in text
    assert setup.read_text() == multiip("render", "--count", "4", "--prefix", "boot").stdout
    assert teardown.read_text() == multiip("render", "--teardown", "--prefix", "boot").stdout
    refused = multiip("render", "--systemd", str(tmp_path / "x"), "--confirm", "30", check=False)
    assert refused.returncode != 0 and "--confirm asks on a terminal" in refused.stderr
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    cp = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert cp.returncode == 0 and cp.stderr == "", cp.stderr


def test_modes_other_than_bridge_leave_the_uplink_alone() -> None:
    for mode in ("macvlan", "ipvlan"):
        text = code(setup_script(make_plan(mode=mode, count=4)))
        for bridge_only in ("save_uplink", "restore_uplink", "find_manager", "leave_alone", "master $BRIDGE",
                            "type bridge", "step 5/", "type veth"):  # fmt: skip
            assert bridge_only not in text, (mode, bridge_only)
        assert f"type {mode} mode {'bridge' if mode == 'macvlan' else 'l2'}" in text and "step 4/4" in text
    ipvlan = code(setup_script(make_plan(mode="ipvlan", count=4)))
    assert 'how+=" -B -x 0x3d:01${MAC//:/}"' in ipvlan  # broadcast replies, a client id per namespace
    assert "-B -x" not in code(setup_script(make_plan(mode="macvlan", count=4)))


def test_the_compiled_templates_are_cached_only_where_no_one_else_can_write(tmp_path: Path) -> None:
    """The cached code runs as root: a directory others can write to, or of another user, is not used;
    a cache that cannot be written is no error (the template still renders)."""
    ours = tmp_path / "ours"
    assert bytecode_cache(ours) is not None and stat.S_IMODE(ours.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert bytecode_cache(shared) is None
    if os.geteuid() == 0:  # as root: a directory of another user's
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        assert bytecode_cache(theirs) is None
    (tmp_path / "file").write_text("")
    assert bytecode_cache(tmp_path / "file") is None
    (tmp_path / "t.j2").write_text("{{ 6 * 7 }}")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(tmp_path), bytecode_cache=_Cache("/proc/sys"))
    assert env.get_template("t.j2").render() == "42"
