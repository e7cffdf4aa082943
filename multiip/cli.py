"""The command line: a thin Typer layer over plan -> render -> execute, the load and the lab.

Every error a user can cause is a MultiipError, printed once here as one line on stderr. Each command
imports what it needs when it runs, so `multiip render` loads no load generator, lab or ``sh``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, NoReturn

import typer

from multiip import __version__, options
from multiip.errors import MultiipError

app = typer.Typer(
    add_completion=True,
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

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing the host's network.")]
DryRun = Annotated[bool, typer.Option(help="Print the script that would run, change nothing.")]
Wait = Annotated[
    int,
    typer.Option(
        metavar="SECONDS",
        help="If another setup or teardown runs here, wait this long for it (the scripts: MULTIIP_WAIT).",
    ),
]
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


def _need_root(command: str, why: str = "changes network interfaces") -> None:
    if os.geteuid() != 0:
        raise MultiipError(f"{command} {why}: run it as root (sudo multiip {command} ...)")


def _confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; without one, refuse unless --yes. Called before anything changes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise MultiipError(f"{question.rstrip('?')}: no terminal to ask on, so nothing was changed; pass --yes")
    if not typer.confirm(question, default=False, err=True):
        raise MultiipError("nothing was changed", exit_code=1)


def _run(script: str, title: str, undo: str = "", wait: int = 0) -> None:
    from multiip import execute, ui

    if wait < 0:
        raise MultiipError(f"--wait {wait}: give 0 or more seconds")
    with ui.ScriptProgress(title) as show:
        execute.run_script(script, show, undo=undo, env={"MULTIIP_WAIT": str(wait)})


def _uplink_words(uplink: str) -> str:
    return uplink or "the default route's interface"


D = options.DEFAULT  # every option's default, stated once (options.Setup)


@app.command("render")
def render_cmd(
    count: options.Count = D.count,
    mode: options.ModeOption = D.mode,
    prefix: options.Prefix = D.prefix,
    bridge: options.Bridge = D.bridge,
    uplink: options.Uplink = D.uplink,
    dhcp: options.DhcpOption = D.dhcp,
    family: options.FamilyOption = D.family,
    address: options.Address = None,
    addresses: options.Addresses = None,
    gateway: options.Gateway = None,
    port_range: options.PortRange = None,
    off_subnet: options.OffSubnet = D.off_subnet,
    local_route: options.LocalRoute = D.local_route,
    dhcp6: options.Dhcp6 = D.dhcp6,
    bridge_tool: options.BridgeToolOption = D.bridge_tool,
    probe_tool: options.ProbeToolOption = D.probe_tool,
    probe_wait: options.ProbeWait = D.probe_wait,
    host_dhcp: options.HostDhcp = D.host_dhcp,
    lease_timeout: options.LeaseTimeout = D.lease_timeout,
    tune_host: options.TuneHost = D.tune_host,
    confirm: options.Confirm = D.confirm,
    teardown: Annotated[bool, typer.Option(help="Print the script that undoes the setup.")] = False,
    systemd: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Write a systemd service (made at boot, undone on stop) and the two scripts it runs into DIR.",
        ),
    ] = None,
) -> None:
    """Print a standalone bash script of the setup (or, with --teardown, of its undoing).

    Example: multiip render --count 20 > setup.sh && multiip render --teardown > teardown.sh
    """
    from multiip import render
    from multiip.plan import make_target, plan_of

    if teardown:
        sys.stdout.write(render.teardown_script(make_target(prefix, bridge, uplink)))
        return
    plan = plan_of(
        options.setup(
            count=count, mode=mode, prefix=prefix, bridge=bridge, uplink=uplink, dhcp=dhcp, family=family,
            address=address, addresses=addresses, gateway=gateway, port_range=port_range, off_subnet=off_subnet,
            local_route=local_route, dhcp6=dhcp6, bridge_tool=bridge_tool, probe_tool=probe_tool,
            probe_wait=probe_wait, host_dhcp=host_dhcp, lease_timeout=lease_timeout, tune_host=tune_host,
            confirm=confirm,
        )
    )  # fmt: skip
    if systemd is None:
        sys.stdout.write(render.setup_script(plan))
        return
    if plan.o.confirm:
        raise MultiipError(
            "--confirm asks on a terminal, which a service at boot does not have: drop it with --systemd"
        )
    directory = options.unit_directory(systemd)
    files = render.systemd_files(plan, str(directory))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (directory / name).write_text(text)
            print(directory / name)
    except OSError as e:
        raise MultiipError(f"--systemd {systemd}: cannot write {e.filename}: {e.strerror}") from None


@app.command()
def run(
    count: options.Count = D.count,
    mode: options.ModeOption = D.mode,
    prefix: options.Prefix = D.prefix,
    bridge: options.Bridge = D.bridge,
    uplink: options.Uplink = D.uplink,
    dhcp: options.DhcpOption = D.dhcp,
    family: options.FamilyOption = D.family,
    address: options.Address = None,
    addresses: options.Addresses = None,
    gateway: options.Gateway = None,
    port_range: options.PortRange = None,
    off_subnet: options.OffSubnet = D.off_subnet,
    local_route: options.LocalRoute = D.local_route,
    dhcp6: options.Dhcp6 = D.dhcp6,
    bridge_tool: options.BridgeToolOption = D.bridge_tool,
    probe_tool: options.ProbeToolOption = D.probe_tool,
    probe_wait: options.ProbeWait = D.probe_wait,
    host_dhcp: options.HostDhcp = D.host_dhcp,
    lease_timeout: options.LeaseTimeout = D.lease_timeout,
    tune_host: options.TuneHost = D.tune_host,
    confirm: options.Confirm = D.confirm,
    yes: Yes = False,
    dry_run: DryRun = False,
    wait: Wait = 0,
) -> None:
    """Set up the namespaces here: runs exactly the script `multiip render` prints.

    Example: sudo multiip run --count 20 --confirm 30
    """
    from multiip import render
    from multiip.plan import plan_of

    plan = plan_of(
        options.setup(
            count=count, mode=mode, prefix=prefix, bridge=bridge, uplink=uplink, dhcp=dhcp, family=family,
            address=address, addresses=addresses, gateway=gateway, port_range=port_range, off_subnet=off_subnet,
            local_route=local_route, dhcp6=dhcp6, bridge_tool=bridge_tool, probe_tool=probe_tool,
            probe_wait=probe_wait, host_dhcp=host_dhcp, lease_timeout=lease_timeout, tune_host=tune_host,
            confirm=confirm,
        )
    )  # fmt: skip
    script = render.setup_script(plan)
    if dry_run:
        sys.stdout.write(script)
        return
    _need_root("run")
    o, t = plan.o, plan.target
    if o.mode == options.Mode.bridge:  # the other modes leave the uplink as it is: nothing drops
        _confirm(
            f"This moves {_uplink_words(t.uplink)} into bridge {t.bridge}; the host's network drops for a moment "
            "(its addresses and routes move to the bridge). Continue?",
            yes,
        )
    where = f"on {t.bridge}" if o.mode == options.Mode.bridge else f"with a {o.mode} each"
    title = (
        f"multiip: {o.count} addresses on {_uplink_words(t.uplink)}"
        if o.mode == options.Mode.alias
        else f"multiip: {o.count} namespaces {t.prefix}0..{t.prefix}{o.count - 1} {where}"
    )
    _run(script, title, wait=wait)  # an interrupted setup says itself what undoes it


@app.command()
def down(
    prefix: options.Prefix = D.prefix,
    bridge: options.Bridge = D.bridge,
    uplink: options.Uplink = D.uplink,
    yes: Yes = False,
    dry_run: DryRun = False,
    wait: Wait = 0,
) -> None:
    """Undo a setup: release leases, stop clients, remove namespaces and bridge, restore the uplink.

    Example: sudo multiip down --prefix ns
    """
    from multiip import render, state
    from multiip.plan import make_target

    target = make_target(prefix, bridge, uplink)
    script = render.teardown_script(target)
    if dry_run:
        sys.stdout.write(script)
        return
    _need_root("down")
    record = state.read_record(target)
    if record is None or record.mode == "bridge":
        question = (
            f"This removes the namespaces of setup {target.prefix} and its bridge and gives "
            f"{_uplink_words(target.uplink)} back its addresses; the host's network drops for a moment. Continue?"
        )
    elif record.mode == "alias":
        question = (
            f"This removes the {len(record.addresses)} addresses of setup {target.prefix} from the uplink. Continue?"
        )
    else:
        n = len(record.members)
        question = f"This removes the {n} namespaces of setup {target.prefix} (and what runs there). Continue?"
    _confirm(question, yes)
    _run(script, f"multiip: tearing down {target.prefix}", "run `multiip down` again to finish", wait)


@app.command()
def status(prefix: options.Prefix = D.prefix, json_out: Json = False) -> None:
    """Show each namespace: interface, MAC, IPv4, gateway, DHCP client, lease expiry, port range.

    Example: sudo multiip status --json | jq '.namespaces[].ipv4'
    """
    from multiip import state, ui
    from multiip.plan import make_target

    data = state.status(make_target(prefix))
    if json_out:
        print(json.dumps(data, indent=2))
    elif data["namespaces"]:
        ui.status_table(data)
    if not data["namespaces"]:
        ui.console.print(f"multiip: no setup with prefix {prefix} on this host", markup=False)


@app.command("top")
def top_cmd(
    prefix: options.Prefix = D.prefix,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between refreshes.")] = 1.0,
    count: Annotated[
        int | None, typer.Option("--count", metavar="N", help="Refresh N times, then exit. Default: until Ctrl-C.")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per refresh, a line each, on stdout (no table).")
    ] = False,
) -> None:
    """Watch every source IP of a setup, live: its TCP connections established, connecting (SYN-SENT), in
    TIME-WAIT and closing, and its local ports in use against its port range (red past 90%: the range is
    nearly exhausted), with the totals. Read from the kernel's counters, not a dump of every socket.

    Example: sudo multiip top --json --count 10 | jq .total.established
    """
    from multiip import top, ui
    from multiip.plan import make_target

    if not 0.1 <= interval <= 3600:
        raise MultiipError(f"--interval {interval:g}: give 0.1..3600 seconds")
    if count is not None and count < 1:
        raise MultiipError(f"--count {count}: give 1 or more refreshes")
    target = make_target(prefix)
    _need_root("top", "enters every namespace of the setup")

    def emit(snap: dict[str, object]) -> None:
        print(json.dumps(snap), flush=True)

    try:
        if json_out:
            top.watch(target, interval, count, emit)
        else:
            with ui.TopView() as view:
                top.watch(target, interval, count, view)
    except KeyboardInterrupt:  # Ctrl-C is how top ends
        return
    except BrokenPipeError:  # e.g. | head -1: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes


@app.command()
def doctor(
    uplink: options.Uplink = D.uplink,
    probe: Annotated[
        bool,
        typer.Option(
            help="Also probe the network from a new, random MAC (ARP, DHCP). On a switch port with port security "
            "that can shut the port down: without --probe doctor asks first on a terminal, and skips it otherwise."
        ),
    ] = False,
    wait: Annotated[int, typer.Option("--timeout", metavar="SECONDS", help="How long to wait for each answer.")] = 3,
    dry_run: DryRun = False,
    json_out: Json = False,
) -> None:
    """Which modes can work on this host and its network: Wi-Fi, a cloud (DMI), what the kernel makes, and
    (with --probe) whether the network answers a new MAC (ARP, DHCP) from a throwaway namespace. Changes
    nothing of the host.

    Example: sudo multiip doctor --probe --json | jq -r .suggest
    """
    from multiip import execute, messages, render, ui

    if not 1 <= wait <= 60:
        raise MultiipError(f"--timeout {wait}: give 1..60 seconds")
    uplink = options.name(uplink, "--uplink") if uplink else ""
    if not probe and not dry_run and sys.stdin.isatty() and os.geteuid() == 0:
        probe = typer.confirm(
            "Probe the network from a new, random MAC (one ARP probe, one DHCP request, released at once)? On a "
            "switch port with port security this can shut the port down",
            default=False,
            err=True,
        )
    script = render.doctor_script(uplink, wait, probe)
    if dry_run:
        sys.stdout.write(script)
        return
    _need_root("doctor", "probes the uplink from a namespace of its own")
    found: dict[str, str] = {}
    with ui.ScriptProgress("multiip: doctor") as show:

        def collect(line: str) -> None:
            item = messages.finding(messages.parse(line))
            if item is None:
                show(line)
            else:
                found[item[0]] = item[1]

        execute.run_script(script, collect)
    if json_out:
        print(json.dumps(found, indent=2))
    else:
        ui.doctor_table(found)


@app.command("hold")
def hold_cmd(
    server: Annotated[str, typer.Argument(metavar="HOST:PORT", help="The server to connect to (IPv4:port).")],
    prefix: options.Prefix = D.prefix,
    per_ip: Annotated[
        int | None, typer.Option(help="Connections per namespace. Default: its whole port range.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Hold this many seconds after the ramp, then close all. Default: until Ctrl-C.")
    ] = None,
    rate: Annotated[float, typer.Option(help="At most this many new connections per second (0: no cap).")] = 0.0,
    json_out: Json = False,
) -> None:
    """Open and hold connections to HOST:PORT from every namespace, each bound to its own IP and ports.

    Example: sudo multiip hold 10.0.0.5:8080 --duration 60
    """
    from multiip import hold, ui
    from multiip.plan import make_target

    target = make_target(prefix)
    where = hold.parse_server(server)
    options.hold_limits(per_ip, duration, rate)
    shares = hold.plan_shares(target, per_ip, where.host.version)
    result = ui.with_hold_progress(
        hold.preflight(shares), sum(s.count for s in shares), lambda p: hold.hold(shares, where, duration, rate, p)
    )
    ui.hold_table(result)
    ui.console.print(ui.headline(result), markup=False)
    if json_out:
        print(json.dumps(result, indent=2))
    if result["interrupted"]:
        raise typer.Exit(130)


@app.command()
def addrs(
    prefix: options.Prefix = D.prefix,
    fmt: Annotated[
        options.AddressFormat,
        typer.Option("--format", help="plain: one per line; json; k6: comma-separated (--local-ips); args: tcpkali's."),
    ] = options.AddressFormat.plain,
    family: Annotated[
        str | None,
        typer.Option("--family", metavar="4|6", help="Which addresses. Default: IPv4 where the setup has it."),
    ] = None,
) -> None:
    """Print the setup's source addresses, for load tools that bind them themselves.

    Example: k6 run --local-ips "$(sudo multiip addrs --format k6)" script.js
    """
    from multiip import state
    from multiip.plan import make_target

    if family not in (None, "4", "6"):
        raise MultiipError(f"--family {family}: 4 or 6")
    rows = state.addressed(make_target(prefix), int(family) if family else None)
    version = int(family) if family else (4 if rows[0].ipv4 else 6)
    ips = [(r.source(version) or "").split("/")[0] for r in rows]
    if fmt is options.AddressFormat.json:
        print(json.dumps([{"namespace": r.name, "ip": ip} for r, ip in zip(rows, ips, strict=True)], indent=2))
    elif fmt is options.AddressFormat.k6:
        print(",".join(ips))
    elif fmt is options.AddressFormat.args:
        print(" ".join(f"--source-ip {ip}" for ip in ips))
    else:
        print("\n".join(ips))


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_cmd(
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="[NS] -- CMD...", help="A namespace (of the setup that recorded it), then the command."),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(help="The setup (with --all). Default: ns, or with NS the setup that recorded NS."),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Run CMD in every namespace of the setup.")] = False,
    parallel: Annotated[int, typer.Option(help="At most this many runs at a time.")] = 64,
    output: Annotated[
        str | None, typer.Option(metavar="DIR", help="Write each namespace's output to DIR/NS.log instead.")
    ] = None,
    json_out: Json = False,
) -> None:
    """Run a command in one namespace or in all of them, in parallel, with {ns}, {ip}, {ip6} and {index}
    replaced in its arguments (and MULTIIP_NS, MULTIIP_IP, MULTIIP_IP6, MULTIIP_INDEX in its environment).
    With --json, stdout is the summary alone, as JSON: the commands' lines go to stderr.

    Example: sudo multiip exec --all -- wrk -c 19000 -d 60s http://10.0.0.5/
    """
    from pathlib import Path

    from multiip import fanout, state, ui
    from multiip.plan import make_target

    args = list(command or [])
    chosen = None if every else (args.pop(0) if args else None)
    if args and args[0] == "--":
        args.pop(0)
    if not every and (chosen is None or not args):
        raise MultiipError(
            "exec: name a namespace of the setup, or pass --all; then the command: multiip exec NS -- CMD"
        )
    if not args:
        raise MultiipError("exec: no command: multiip exec --all -- CMD ARGS...")
    options.parallel(parallel)
    out_dir = Path(output) if output else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MultiipError(f"exec --output {output}: cannot make that directory: {e.strerror}") from None
    _need_root("exec", "runs commands in the setup's namespaces")
    if prefix is None:
        prefix = state.owner(chosen) if chosen is not None else D.prefix
    target = make_target(prefix)
    rows = state.addressed(target)
    if rows[0].host:
        raise MultiipError(
            f"exec: setup {prefix} is --mode alias: its addresses are on the host, with no namespaces; run "
            f"the tool on the host with them: multiip addrs --prefix {prefix} --format k6|args|json"
        )
    targets = [
        fanout.Target(r.name, (r.ipv4 or "").split("/")[0], i, (r.ipv6 or "").split("/")[0]) for i, r in enumerate(rows)
    ]
    if chosen is not None:
        targets = [t for t in targets if t.namespace == chosen]
        if not targets:
            names = ", ".join(r.name for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise MultiipError(f"exec: {chosen} is not a namespace of setup {prefix} ({names})")
    width = max(len(t.namespace) for t in targets)

    def show(namespace: str, line: str) -> None:  # with --json, stdout is the JSON alone
        print(f"{namespace:<{width}} | {line}", flush=True, file=sys.stderr if json_out else sys.stdout)

    summary = fanout.fan_out(targets, args, parallel, show, out_dir)
    ui.exec_table(summary)
    if json_out:
        print(json.dumps(summary, indent=2))
    failed = [r for r in summary if r["exit"] != 0]
    if failed:
        raise MultiipError(
            f"exec: {len(failed)} of {len(summary)} runs failed ({failed[0]['namespace']}: exit {failed[0]['exit']})",
            exit_code=1,
        )


@app.command("demo")
def demo_cmd(
    count: Annotated[int, typer.Option("--count", "-n", help="How many namespaces.")] = 4,
    mode: Annotated[
        options.Mode, typer.Option(help="bridge, macvlan, ipvlan or alias (see multiip run --help).")
    ] = options.Mode.bridge,
) -> None:
    """Show it working without touching this host's network: lab up, run, status, hold, down.

    Example: sudo multiip demo --count 4
    """
    from multiip import demo, ui

    _need_root("demo")
    result = demo.run(count, mode.value)  # validates --count and --mode before anything starts
    ui.console.print(ui.headline(result), markup=False)
    if result["established"] != result["target"]:
        raise MultiipError(f"held {result['established']:,} of {result['target']:,} connections", exit_code=1)


@lab_app.command("up")
def lab_up(
    name: LabName = "mlab",
    port: Annotated[int, typer.Option(help="The sink's TCP port.")] = 9000,
    leases: Annotated[int, typer.Option(help="DHCP leases the server may hand out.")] = 4096,
    capacity: Annotated[int, typer.Option(help="Connections the sink must be able to hold.")] = 150_000,
    manager: Annotated[
        str,
        typer.Option(
            help="What gives the lab host's eth0 its address: static, dhclient, udhcpc, dhcpcd, NetworkManager or "
            "systemd-networkd."
        ),
    ] = "static",
    cloud: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="A cloud-like LAN: it drops frames from any MAC but the host's and packets from any IPv4 address "
            "not assigned to it; N addresses are assigned (listed in the lab's state directory, file assigned).",
        ),
    ] = 0,
    mtu: Annotated[int, typer.Option(help="The MTU of the wire between the host and the LAN.")] = 1500,
    server: Annotated[
        bool,
        typer.Option(
            help="The host's eth0 carries what real servers' uplinks do: an ECMP default route over two routers, a "
            "labelled secondary address, a route over a nexthop object, an IPv6 address and route with lifetimes."
        ),
    ] = False,
    critical: Annotated[
        bool, typer.Option(help="With systemd-networkd: KeepConfiguration=yes (netplan's critical: true).")
    ] = False,
    client_id: Annotated[
        str, typer.Option(help="With NetworkManager: its ipv4.dhcp-client-id (mac or duid). Default: its own.")
    ] = "",
    host_by: Annotated[
        str,
        typer.Option(
            help="How the LAN's DHCP server knows the host: mac, or client-id (01 and its MAC), so that clients "
            "sharing its MAC (ipvlan's) are told apart."
        ),
    ] = "mac",
    ignore_client_ids: Annotated[
        bool, typer.Option(help="The LAN's DHCP server tells clients apart by MAC only (as some servers do).")
    ] = False,
    ipv6: Annotated[
        str,
        typer.Option(
            help="The LAN's IPv6 for its hosts: none (the host's static address only), slaac (router advertisements "
            "of 2001:db8:100::/64 for SLAAC) or dhcpv6 (advertisements saying: addresses by DHCPv6, from dnsmasq)."
        ),
    ] = "none",
    hosts: Annotated[
        int,
        typer.Option(
            help="Load hosts on the LAN: the lab's host (NAME-host) and more with static addresses (NAME-host2: "
            "198.18.0.11, ...), each with its own eth0, for setups on several hosts (lab exec --host N)."
        ),
    ] = 1,
) -> None:
    """Bring up the lab: LAN namespace (dnsmasq, TCP sink, routers) and host namespace (uplink eth0), the host
    with a mount namespace of its own for its network manager.

    Example: sudo multiip lab up --name mlab --manager systemd-networkd --server
    """
    from multiip import lab

    the_lab = lab.make_lab(
        name, port, leases, capacity, manager, cloud, mtu, server, critical, client_id, host_by, ignore_client_ids,
        ipv6, hosts,
    )  # fmt: skip
    _need_root("lab up")
    _run(lab.up_script(the_lab), f"multiip: lab {name} up", f"`multiip lab down --name {name}` removes it")


@lab_app.command("down")
def lab_down(name: LabName = "mlab") -> None:
    """Remove the lab: sink, DHCP server, its host's manager, namespaces, state.

    Example: sudo multiip lab down --name mlab
    """
    from multiip import lab

    the_lab = lab.make_lab(name)
    _need_root("lab down")
    _run(lab.down_script(the_lab), f"multiip: lab {name} down")


@lab_app.command("exec", context_settings={"allow_interspersed_args": False})
def lab_exec(
    command: Annotated[list[str], typer.Argument(help="Command to run with the lab host's network.")],
    name: LabName = "mlab",
    host: Annotated[int, typer.Option(help="Which of the lab's hosts (lab up --hosts): 1 is its first.")] = 1,
) -> None:
    """Run COMMAND as the lab host: in its network namespace and its mount namespace (where its manager's
    D-Bus and /run are), nothing else of the machine's changed.

    Example: sudo multiip lab exec --name mlab -- multiip run --count 4 --yes
    """
    from multiip import execute, lab

    the_lab = lab.make_lab(name)
    lab.require_up(the_lab)
    if host != 1 and not os.path.exists(f"/run/netns/{the_lab.host_ns_of(host)}"):
        raise MultiipError(f"lab {name} has no host {host}: multiip lab up --name {name} --hosts {max(host, 2)}")
    execute.replace_process(lab.enter(the_lab, command, host))


@lab_app.command("status")
def lab_status(name: LabName = "mlab", json_out: Json = False) -> None:
    """What the lab's sink holds now, per source IP.

    Example: sudo multiip lab status --name mlab --json
    """
    from multiip import lab, ui

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
    except (typer.Abort, KeyboardInterrupt):
        print("multiip: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # bad usage: unknown option, value of the wrong type, ...
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message.startswith("Usage:"):  # a command group given no command: its help, as is
            print(message, file=sys.stderr)
            sys.exit(2)
        print(f"multiip: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except Exception as e:  # a bug: still one line; MULTIIP_DEBUG=1 shows the traceback
        if os.environ.get("MULTIIP_DEBUG"):
            raise
        print(f"multiip: internal error: {type(e).__name__}: {e} (MULTIIP_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)


def command() -> NoReturn:
    """The installed command (and ``python -m multiip``): main(), then the exit without the interpreter's
    teardown of every module it loaded, 60-80 ms of each command on a slow machine (measured) with nothing
    left for it to do: every file is closed by then and the output is flushed here."""
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (| head), a closed stream
            code = code or 1
    os._exit(code)
