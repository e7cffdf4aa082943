"""The command line: a thin Typer layer over plan -> render -> execute, and the lab.

Every error a user can cause is a MultiipError, printed once here as one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from multiip import __version__, demo, execute, hold, lab, render, state, ui
from multiip.errors import MultiipError
from multiip.plan import Target, make_plan, make_target

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Many source IPv4 addresses on one host: network namespaces behind a bridge on the uplink, "
    "one DHCP address each, so a load client can open N x 64,512 connections to one server ip:port.",
)
lab_app = typer.Typer(
    no_args_is_help=True,
    help="A stand-in for a host on a LAN, in network namespaces: DHCP server, TCP sink and a host "
    "whose uplink is eth0. Run multiip as that host with: multiip lab exec -- multiip run ...",
)
app.add_typer(lab_app, name="lab")

# Options shared by several commands.
Prefix = Annotated[str, typer.Option(help="Namespaces are PREFIX0..PREFIX(N-1); ns gives the seed's names.")]
Bridge = Annotated[str, typer.Option(help="The bridge that takes the uplink.")]
Uplink = Annotated[
    str,
    typer.Option(
        help="The host's uplink. Default: the interface of the default route, found on the host when the script runs."
    ),
]
Count = Annotated[int, typer.Option("--count", "-n", help="How many namespaces (source IPs).")]
Dhcp = Annotated[
    str,
    typer.Option(
        help="auto|udhcpc|dhclient|dhcpcd|none; auto picks an installed one "
        "where the script runs (udhcpc, then dhclient, then dhcpcd)."
    ),
]
Address = Annotated[
    str | None, typer.Option(help="With --dhcp none: namespace i gets ADDRESS + i, e.g. 198.18.1.10/15.")
]
Gateway = Annotated[
    str | None, typer.Option(help="With --address: the namespaces' default route. Default: the uplink's gateway.")
]
PortRange = Annotated[str, typer.Option(help="ip_local_port_range set inside every namespace.")]
BridgeTool = Annotated[str, typer.Option(help="ip: iproute2 only; brctl: the seed's brctl commands.")]
HostDhcp = Annotated[
    bool,
    typer.Option(
        help="The seed's way for the host: the bridge asks DHCP for the host's "
        "address instead of taking over the uplink's addresses and routes."
    ),
]
LeaseTimeout = Annotated[int, typer.Option(help="Seconds to wait for every namespace's DHCP lease.")]
TuneHost = Annotated[
    bool,
    typer.Option(
        help="Raise the host-wide ARP table (gc_thresh1-3) and netdev_max_backlog limits that about 1000 "
        "namespaces outgrow; down restores them. Without it such counts are refused with what to change."
    ),
]
Confirm = Annotated[
    int,
    typer.Option(
        metavar="SECONDS",
        help="After moving the uplink, ask on the terminal to confirm the host is still reachable; without an "
        "answer within SECONDS the uplink goes back as it was (like netplan try). For setups over SSH.",
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before moving the uplink.")]
DryRun = Annotated[bool, typer.Option(help="Print the script that would run, change nothing.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
LabName = Annotated[str, typer.Option("--name", help="Lab name: namespaces NAME-lan and NAME-host.")]


def _version(value: bool) -> None:
    if value:
        print(f"multiip {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """multiip"""


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise MultiipError(f"{command} changes network interfaces: run it as root (sudo multiip {command} ...)")


def _confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; without one, refuse unless --yes. Called before anything changes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise MultiipError(f"{question.rstrip('?')}: no terminal to ask on, so nothing was changed; pass --yes")
    if not typer.confirm(question, default=False, err=True):
        raise MultiipError("nothing was changed", exit_code=1)


def _run(script: str, title: str) -> None:
    with ui.ScriptProgress(title) as show:
        execute.run_script(script, show)


def _uplink_words(t: Target) -> str:
    return t.uplink or "the default route's interface"


@app.command("render")
def render_cmd(
    count: Count = 20,
    prefix: Prefix = "ns",
    bridge: Bridge = "br0",
    uplink: Uplink = "",
    dhcp: Dhcp = "auto",
    address: Address = None,
    gateway: Gateway = None,
    port_range: PortRange = "1024-65535",
    bridge_tool: BridgeTool = "ip",
    host_dhcp: HostDhcp = False,
    lease_timeout: LeaseTimeout = 30,
    tune_host: TuneHost = False,
    confirm: Confirm = 0,
    teardown: Annotated[bool, typer.Option(help="Print the script that undoes the setup.")] = False,
) -> None:
    """Print a standalone bash script of the setup (or, with --teardown, of its undoing)."""
    if teardown:
        sys.stdout.write(render.teardown_script(make_target(prefix, bridge, uplink)))
        return
    plan = make_plan(
        prefix=prefix, bridge=bridge, uplink=uplink, count=count, dhcp=dhcp, address=address, gateway=gateway,
        port_range=port_range, bridge_tool=bridge_tool, host_dhcp=host_dhcp, lease_timeout=lease_timeout,
        tune_host=tune_host, confirm=confirm,
    )  # fmt: skip
    sys.stdout.write(render.setup_script(plan))


@app.command()
def run(
    count: Count = 20,
    prefix: Prefix = "ns",
    bridge: Bridge = "br0",
    uplink: Uplink = "",
    dhcp: Dhcp = "auto",
    address: Address = None,
    gateway: Gateway = None,
    port_range: PortRange = "1024-65535",
    bridge_tool: BridgeTool = "ip",
    host_dhcp: HostDhcp = False,
    lease_timeout: LeaseTimeout = 30,
    tune_host: TuneHost = False,
    confirm: Confirm = 0,
    yes: Yes = False,
    dry_run: DryRun = False,
) -> None:
    """Set up the namespaces here: runs exactly the script `multiip render` prints."""
    plan = make_plan(
        prefix=prefix, bridge=bridge, uplink=uplink, count=count, dhcp=dhcp, address=address, gateway=gateway,
        port_range=port_range, bridge_tool=bridge_tool, host_dhcp=host_dhcp, lease_timeout=lease_timeout,
        tune_host=tune_host, confirm=confirm,
    )  # fmt: skip
    script = render.setup_script(plan)
    if dry_run:
        sys.stdout.write(script)
        return
    _need_root("run")
    _confirm(
        f"This moves {_uplink_words(plan.target)} into bridge {plan.target.bridge}; the host's network "
        "drops for a moment (its addresses and routes move to the bridge). Continue?",
        yes,
    )
    _run(
        script,
        f"multiip: {plan.count} namespaces {plan.target.namespace(0)}.."
        f"{plan.target.namespace(plan.count - 1)} on {plan.target.bridge}",
    )


@app.command()
def down(
    prefix: Prefix = "ns",
    bridge: Bridge = "br0",
    uplink: Uplink = "",
    yes: Yes = False,
    dry_run: DryRun = False,
) -> None:
    """Undo a setup: release leases, stop clients, remove namespaces and bridge, restore the uplink."""
    target = make_target(prefix, bridge, uplink)
    script = render.teardown_script(target)
    if dry_run:
        sys.stdout.write(script)
        return
    _need_root("down")
    _confirm(
        f"This removes the namespaces {target.prefix}N and bridge {target.bridge} and gives "
        f"{_uplink_words(target)} back its addresses; the host's network drops for a moment. Continue?",
        yes,
    )
    _run(script, f"multiip: tearing down {target.prefix}N on {target.bridge}")


@app.command()
def status(prefix: Prefix = "ns", bridge: Bridge = "br0", json_out: Json = False) -> None:
    """Show each namespace: interface, MAC, IPv4, gateway, DHCP client, lease expiry, port range."""
    data = state.status(make_target(prefix, bridge))
    if json_out:
        print(json.dumps(data, indent=2))
    elif data["namespaces"]:
        ui.status_table(data)
    if not data["namespaces"]:
        ui.console.print(f"multiip: no namespaces named {prefix}<N> on this host", markup=False)


@app.command("hold")
def hold_cmd(
    server: Annotated[str, typer.Argument(metavar="HOST:PORT", help="The server to connect to (IPv4:port).")],
    prefix: Prefix = "ns",
    bridge: Bridge = "br0",
    per_ip: Annotated[
        int | None, typer.Option(help="Connections per namespace. Default: its whole port range.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Hold this many seconds after the ramp, then close all. Default: until Ctrl-C.")
    ] = None,
    rate: Annotated[float, typer.Option(help="At most this many new connections per second (0: no cap).")] = 0.0,
    json_out: Json = False,
) -> None:
    """Open and hold connections to HOST:PORT from every namespace, each bound to its own IP and ports."""
    target = make_target(prefix, bridge)
    where = hold.parse_server(server)
    if per_ip is not None and per_ip < 1:
        raise MultiipError(f"--per-ip {per_ip}: must be at least 1")
    if duration is not None and duration < 0:
        raise MultiipError(f"--duration {duration}: must be 0 or more")
    if rate < 0:
        raise MultiipError(f"--rate {rate}: must be 0 or more")
    result = ui.hold_with_progress(hold.plan_shares(target, per_ip), where, duration, rate)
    ui.hold_table(result)
    ui.console.print(ui.headline(result), markup=False)
    if json_out:
        print(json.dumps(result, indent=2))
    if result["interrupted"]:
        raise typer.Exit(130)


@app.command("demo")
def demo_cmd(count: Count = 4) -> None:
    """Show it working without touching this host's network: lab up, run, status, down."""
    _need_root("demo")
    plan = make_plan(count=count)  # validates --count before anything starts
    result = demo.run(plan.count)
    ui.console.print(ui.headline(result), markup=False)
    if result["established"] != result["target"]:
        raise MultiipError(f"held {result['established']:,} of {result['target']:,} connections", exit_code=1)


@lab_app.command("up")
def lab_up(
    name: LabName = "mlab",
    port: Annotated[int, typer.Option(help="The sink's TCP port.")] = 9000,
    leases: Annotated[int, typer.Option(help="DHCP leases the server may hand out.")] = 4096,
    capacity: Annotated[int, typer.Option(help="Connections the sink must be able to hold.")] = 150_000,
) -> None:
    """Bring up the lab: LAN namespace (dnsmasq, TCP sink) and host namespace (uplink eth0)."""
    the_lab = lab.make_lab(name, port, leases, capacity)
    _need_root("lab up")
    _run(render.lab_up_script(the_lab), f"multiip: lab {name} up")


@lab_app.command("down")
def lab_down(name: LabName = "mlab") -> None:
    """Remove the lab: sink, DHCP server, namespaces, state."""
    the_lab = lab.make_lab(name)
    _need_root("lab down")
    _run(render.lab_down_script(the_lab), f"multiip: lab {name} down")


@lab_app.command("exec", context_settings={"allow_interspersed_args": False})
def lab_exec(
    command: Annotated[list[str], typer.Argument(help="Command to run with the lab host's network.")],
    name: LabName = "mlab",
) -> None:
    """Run COMMAND as the lab host: in its network namespace only (nsenter --net)."""
    the_lab = lab.make_lab(name)
    lab.require_up(the_lab)
    execute.replace_process(execute.in_netns(the_lab.host_ns, command))


@lab_app.command("status")
def lab_status(name: LabName = "mlab", json_out: Json = False) -> None:
    """What the lab's sink holds now, per source IP."""
    the_lab = lab.make_lab(name)
    lab.require_up(the_lab)
    stats = lab.sink_stats(the_lab)
    if json_out:
        print(json.dumps(stats, indent=2))
    else:
        ui.console.print(
            f"lab {name}: sink on {the_lab.lan_ip}:{the_lab.port} holds {stats['held']} "
            f"connections from {len(stats['peers'])} addresses ({stats['workers']} workers)"
        )


def main() -> None:
    """Entry point: one line on stderr and a non-zero exit for every error, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except MultiipError as e:
        print(f"multiip: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("multiip: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # bad usage: unknown option, value of the wrong type, ...
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message.startswith("Usage:"):  # a command group given no command: its help, as is
            print(message, file=sys.stderr)
            sys.exit(2)
        print(f"multiip: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        print("multiip: interrupted; `multiip down` removes a partial setup", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug: still one line; MULTIIP_DEBUG=1 shows the traceback
        if os.environ.get("MULTIIP_DEBUG"):
            raise
        print(f"multiip: internal error: {type(e).__name__}: {e} (MULTIIP_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)
