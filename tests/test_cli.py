"""The CLI contract: data on stdout, one line on stderr for every error, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import multiip, ours

from multiip import cli, render


@pytest.mark.parametrize(
    "args",
    [
        ["render", "--count", "0"],
        ["render", "--count", "-3"],
        ["render", "--count", "5000"],
        ["render", "--count", "abc"],
        ["render", "--prefix", "$(touch /tmp/multiip-pwned)"],
        ["render", "--bridge", "br0;reboot"],
        ["render", "--uplink", "eth0 && reboot"],
        ["render", "--uplink", "averyveryverylongname"],
        ["render", "--dhcp", "pump"],
        ["render", "--dhcp", "none", "--address", "198.18.0.1"],
        ["render", "--dhcp", "none", "--address", "198.18.0.250/24", "--count", "10"],
        ["render", "--port-range", "70000-80000"],
        ["render", "--bridge-tool", "ovs"],
        ["render", "--nope"],
        ["run", "--count", "0", "--yes"],
        ["run", "--dhcp", "none", "--address", "1.2.3.4/40", "--yes"],
        ["down", "--prefix", "a b", "--yes"],
        ["status", "--prefix", "x" * 16],
        ["hold", "198.18.0.1:9000", "--rate", "-1"],
        ["lab", "up", "--name", "far-too-long-name"],
        ["lab", "exec", "--name", "nolabhere", "--", "true"],
        ["render", "--systemd", "/tmp/multiip unit dir"],  # a space splits ExecStart's command
        ["render", "--systemd", "/tmp/multiip-50%n"],  # %n: systemd's unit name
        ["render", "--systemd", "/proc/multiip-cannot-be-made"],
        ["exec", "--all", "--output", "/proc/multiip-cannot-be-made", "--", "true"],
    ],
)
def test_bad_input_is_one_line(args: list[str]) -> None:
    cp = multiip(*args, check=False)
    assert cp.returncode != 0
    assert cp.stdout == ""
    lines = cp.stderr.splitlines()
    assert len(lines) == 1, cp.stderr
    assert lines[0].startswith("multiip: error: ")
    assert "Traceback" not in cp.stderr


def test_render_prints_a_script() -> None:
    cp = multiip("render", "--count", "3")
    assert cp.stdout.startswith("#!/usr/bin/env bash\n") and "COUNT=3\n" in cp.stdout
    assert cp.stderr == ""
    teardown = multiip("render", "--teardown").stdout
    assert "netns del" in teardown and "restore_uplink" in teardown


def test_dry_run_prints_what_render_prints() -> None:
    args = ["--count", "7", "--prefix", "dry", "--dhcp", "none", "--address", "198.18.50.1/15"]
    assert multiip("run", *args, "--dry-run").stdout == multiip("render", *args).stdout
    assert (
        multiip("down", "--prefix", "dry", "--dry-run").stdout
        == multiip("render", "--teardown", "--prefix", "dry").stdout
    )


def test_run_without_terminal_or_yes_refuses_before_changing_anything() -> None:
    cp = multiip("run", "--count", "2", "--prefix", "refuse", check=False)
    assert cp.returncode != 0
    assert "pass --yes" in cp.stderr and len(cp.stderr.splitlines()) == 1
    assert not ours("refuse")


@pytest.mark.parametrize("command", [["run", "--yes"], ["down", "--yes"], ["lab", "up"], ["lab", "down"]])
def test_not_root_is_refused(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "argv", ["multiip", *command])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("multiip: error: ") and "root" in err and len(err.splitlines()) == 1


def test_a_script_whose_runner_is_missing_is_an_error_not_a_bug() -> None:
    from multiip import execute
    from multiip.errors import MultiipError

    with pytest.raises(MultiipError, match=r"^/nonexistent/nsenter not found .*: install it$"):
        execute.run_script("true\n", print, within=["/nonexistent/nsenter", "--net=/proc/self/ns/net"])


def test_internal_error_is_one_line_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(*_: object) -> str:
        raise KeyError("surprise")

    monkeypatch.setattr(render, "setup_script", boom)
    monkeypatch.setattr(sys, "argv", ["multiip", "render"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 70
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "internal error" in err and "Traceback" not in err


def test_the_command_ends_with_mains_exit_code_and_all_its_output() -> None:
    """python -m multiip (cli.command) leaves by os._exit: what it printed is all there, through a pipe, and
    main()'s exit code is the process's."""
    from multiip.options import setup
    from multiip.plan import plan_of

    printed = multiip("render", "--count", "300").stdout
    assert len(printed) > 65536 and printed == render.setup_script(plan_of(setup(count=300)))
    assert multiip("render", "--no-such-option", check=False).returncode == 2


@pytest.mark.parametrize(("leaves", "code"), [(lambda: None, 0), (lambda: sys.exit(5), 5), (lambda: sys.exit("?"), 1)])
def test_the_command_exits_with_the_code_main_gives(leaves: Any, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(cli, "main", leaves)
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    cli.command()
    assert exits == [code]


def test_status_json_with_nothing_set_up() -> None:
    data = json.loads(multiip("status", "--prefix", "nothinghere", "--json").stdout)
    assert data["namespaces"] == [] and data["prefix"] == "nothinghere"


def test_doctor_dry_run_prints_its_script_without_root() -> None:
    script = multiip("doctor", "--dry-run", "--uplink", "ens5").stdout
    assert script.startswith("#!/usr/bin/env bash") and "UPLINK=ens5" in script and "arping -D" not in script
    assert "multiip doctor --probe does it" in script  # no probe from a new MAC unless asked
    probing = multiip("doctor", "--dry-run", "--probe").stdout
    assert "arping -D" in probing and "port security" in probing
    cp = multiip("doctor", "--timeout", "0", check=False)
    assert cp.returncode != 0 and "--timeout 0" in cp.stderr and "Traceback" not in cp.stderr


def test_version() -> None:
    assert multiip("--version").stdout.startswith("multiip ")


def test_every_command_has_an_example_in_its_help() -> None:
    for command in (["render"], ["run"], ["down"], ["status"], ["top"], ["hold"], ["exec"], ["addrs"], ["demo"],
                    ["doctor"],
                    ["lab", "up"], ["lab", "down"], ["lab", "exec"], ["lab", "status"]):  # fmt: skip
        help_text = multiip(*command, "--help").stdout
        assert "Example: " in help_text and "multiip " in help_text.split("Example: ")[1], command


def test_shell_completion_after_install() -> None:
    """The installed command completes its own commands and options in bash."""
    exe = str(Path(sys.executable).with_name("multiip"))
    script = subprocess.run([exe, "--show-completion", "bash"], capture_output=True, text=True, check=True).stdout
    assert "_MULTIIP_COMPLETE=complete_bash" in script
    env = {**os.environ, "_MULTIIP_COMPLETE": "complete_bash", "COMP_WORDS": "multiip re", "COMP_CWORD": "1"}
    assert subprocess.run([exe], env=env, capture_output=True, text=True).stdout.split() == ["render"]
    env = {**env, "COMP_WORDS": "multiip run --dh", "COMP_CWORD": "2"}
    assert subprocess.run([exe], env=env, capture_output=True, text=True).stdout.split() == ["--dhcp", "--dhcp6"]


def as_nobody(argv: list[str]) -> tuple[int, str]:
    """`multiip ARGV` run by a normal user (uid/gid nobody, no capability): in a forked child of this test,
    so it needs no Python of its own that such a user may run. Returns its exit status and stderr."""
    import multiip.state
    import multiip.ui

    assert multiip.state.STATE_ROOT.exists()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, then the CLI as a user would run it
        code = 70
        try:
            sys.stderr = os.fdopen(write, "w")  # what the CLI says, to the test
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            sys.argv = ["multiip", *argv]
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as err:
        said = err.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), said


@pytest.mark.root
def test_a_normal_users_status_and_addrs_say_root_is_needed_never_that_there_is_no_setup(lab: Any, prefix: str) -> None:
    multiip("run", "--mode", "alias", "--prefix", prefix, "--addresses", "198.18.0.44", netns=lab.host_ns)
    try:
        for command in (["status", "--prefix", prefix], ["addrs", "--prefix", prefix], ["status", "--json"]):
            code, said = as_nobody(command)
            assert code != 0 and len(said.splitlines()) == 1, said
            assert "readable by root only: run it as root (sudo multiip ...)" in said and "no setup" not in said, said
    finally:
        multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
