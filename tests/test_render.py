"""Rendering: golden scripts for a few option sets, each shellcheck-clean; templates ship in the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from multiip.plan import make_plan, make_target
from multiip.render import setup_script, teardown_script

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "setup-seed": lambda: setup_script(make_plan()),
    "setup-static-brctl": lambda: setup_script(
        make_plan(
            prefix="lab",
            count=300,
            dhcp="none",
            address="198.18.10.1/15",
            gateway="198.18.0.1",
            bridge="brx",
            uplink="ens3",
            bridge_tool="brctl",
            port_range="2000-60000",
        )
    ),
    "setup-dhclient-hostdhcp": lambda: setup_script(
        make_plan(count=4, dhcp="dhclient", host_dhcp=True, lease_timeout=60)
    ),
    "teardown-seed": lambda: teardown_script(make_target()),
    "teardown-custom": lambda: teardown_script(make_target(prefix="lab", bridge="brx", uplink="ens3")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    """A changed script is a reviewed change: UPDATE_GOLDEN=1 rewrites tests/golden/."""
    text = CASES[case]()
    path = GOLDEN / f"{case}.sh"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_shellcheck_clean(case: str, tmp_path: Path) -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    script = tmp_path / f"{case}.sh"
    script.write_text(CASES[case]())
    cp = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_bash_parses_it(case: str, tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text(CASES[case]())
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_script_shape() -> None:
    text = setup_script(make_plan())
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -Eeuo pipefail" in text
    assert "need_root" in text and "need_tool ip iproute2" in text
    assert "step 1/6" in text and "step 6/6" in text
    # the seed's names and bridge
    assert "PREFIX=ns " in text and "INSIDE=tap " in text and "PORT=br-tap " in text and "BRIDGE=br0\n" in text
    # decided where it runs: uplink and client
    assert "UPLINK=''" in text and "DHCP=auto " in text
    brctl = setup_script(make_plan(bridge_tool="brctl"))
    assert 'brctl addbr "$BRIDGE"' in brctl and 'brctl stp "$BRIDGE" off' in brctl and "brctl addif" in brctl


def inside_helper(script: str) -> str:
    """The perl helper the setup script writes to $STATE/inside.pl."""
    start = script.index("<<'PERL'\n") + len("<<'PERL'\n")
    return script[start : script.index("\nPERL\n", start) + 1]


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if c.startswith("setup")])
def test_inside_helper_compiles_and_names_the_ip_commands_it_stands_for(case: str, tmp_path: Path) -> None:
    helper = inside_helper(CASES[case]())
    assert helper.startswith("#!/usr/bin/perl\n")
    for command in ("ip link set dev lo up", "addrgenmode none", "ip address replace", "ip route replace default"):
        assert command in helper
    if not shutil.which("perl"):
        pytest.skip("perl not installed")
    (tmp_path / "inside.pl").write_text(helper)
    cp = subprocess.run(["perl", "-c", str(tmp_path / "inside.pl")], capture_output=True, text=True)
    assert cp.returncode == 0 and "syntax OK" in cp.stderr, cp.stderr


def test_host_resolv_conf_never_a_target() -> None:
    """Clients write their own resolver files; the host's is only ever a bind-mount target."""
    for case in CASES.values():
        text = case()
        for line in text.splitlines():
            code = line.split("  # ")[0]
            if "/etc/resolv.conf" in code and not code.lstrip().startswith("#"):
                assert "mount --bind" in code, line


def test_wheel_ships_templates(tmp_path: Path) -> None:
    """An installed wheel (no source tree around it) renders."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("multiip-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "multiip/templates/setup.sh.j2" in names and "multiip/templates/teardown.sh.j2" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    cp = subprocess.run(
        [sys.executable, "-m", "multiip", "render", "--count", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("#!/usr/bin/env bash") and "COUNT=3" in cp.stdout
    cp = subprocess.run(
        [sys.executable, "-c", "import multiip.render as r; print(r.templates_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert cp.stdout.strip() == str(target / "multiip" / "templates")
