"""Validation: every bad value is refused with a message naming the option, before anything runs."""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
from pathlib import Path

import pytest

from multiip import cli, options
from multiip.errors import MultiipError
from multiip.plan import make_plan, make_target

setup = options.setup


@pytest.mark.parametrize(
    "value",
    ["", "a;b", "a b", "$(reboot)", "`id`", "a|b", "a'b", 'a"b', "a\nb", "-rf", ".hidden", "ä", "x" * 16, "a/b"],
)
def test_names_refuse_shell_and_length(value: str) -> None:
    with pytest.raises(MultiipError, match="--bridge"):
        options.name(value, "--bridge")


@pytest.mark.parametrize("value", ["br0", "br-lab.1", "a_b", "x" * 15])
def test_names_accept(value: str) -> None:
    assert options.name(value, "--bridge") == value


@pytest.mark.parametrize("n", [0, -1, options.MAX_COUNT + 1, 5000])
def test_count_bounds(n: int) -> None:
    with pytest.raises(MultiipError, match="--count"):
        options.count(n)


def test_count_limit_says_why() -> None:
    with pytest.raises(MultiipError, match="1023 ports"):
        options.count(2000)
    assert options.count(options.MAX_COUNT) == 1022


@pytest.mark.parametrize(
    "value", ["1024", "a-b", "0-100", "200-100", "1-65536", "1024-70000", " - ", "1023-65535", "1-65535", "100-100"]
)
def test_port_range_refused(value: str) -> None:
    with pytest.raises(MultiipError, match="--port-range"):
        options.port_range(value)


def test_port_range_ok() -> None:
    assert options.port_range("1024-65535") == (1024, 65535)
    assert options.port_range("1024-1024") == (1024, 1024)  # the kernel takes it


@pytest.mark.parametrize(
    ("value", "why"),
    [("0.0.0.5/8", "0/8"), ("127.0.0.2/8", "loopback"), ("224.0.0.9/4", "multicast"), ("240.0.0.1/4", "reserved"),
     ("198.18.0.5/0", "/0")],
)  # fmt: skip
def test_addresses_no_host_can_have_are_refused(value: str, why: str) -> None:
    with pytest.raises(MultiipError, match=why):
        options.interface_address(value)


def test_a_gateway_that_is_the_network_or_broadcast_address_is_refused() -> None:
    first = ipaddress.IPv4Interface("198.18.0.10/24")
    with pytest.raises(MultiipError, match="network address"):
        options.address_block(first, 5, ipaddress.IPv4Address("198.18.0.0"))
    with pytest.raises(MultiipError, match="broadcast address"):
        options.address_block(first, 5, ipaddress.IPv4Address("198.18.0.255"))
    with pytest.raises(MultiipError, match="loopback"):
        options.address_block(first, 5, ipaddress.IPv4Address("127.0.0.1"))


@pytest.mark.parametrize("value", ["198.18.0.1", "198.18.0.300/15", "nope/24", "198.18.0.1/33", "::1/64"])
def test_address_refused(value: str) -> None:
    with pytest.raises(MultiipError, match="--address"):
        options.interface_address(value)


def test_address_block_must_stay_in_subnet() -> None:
    first = ipaddress.IPv4Interface("198.18.0.250/24")
    with pytest.raises(MultiipError, match="leave the subnet"):
        options.address_block(first, 10, None)
    options.address_block(first, 5, None)  # .250-.254 fit
    with pytest.raises(MultiipError, match="leave the subnet"):
        options.address_block(first, 6, None)  # .255 is the broadcast address
    with pytest.raises(MultiipError, match="leave the subnet"):
        options.address_block(ipaddress.IPv4Interface("198.18.0.0/24"), 1, None)  # network address
    with pytest.raises(MultiipError, match="inside the namespace addresses"):
        options.address_block(ipaddress.IPv4Interface("198.18.0.10/24"), 5, ipaddress.IPv4Address("198.18.0.12"))
    with pytest.raises(MultiipError, match="outside the subnet"):
        options.address_block(ipaddress.IPv4Interface("198.18.0.10/24"), 5, ipaddress.IPv4Address("198.18.1.1"))


def test_plan_rules() -> None:
    assert setup(address="198.18.1.1/15").dhcp == "none"  # static addresses need no DHCP client
    with pytest.raises(MultiipError, match="--dhcp udhcpc and static addresses"):
        make_plan(address="198.18.1.1/15", dhcp="udhcpc")
    with pytest.raises(MultiipError, match="--gateway goes with --address"):
        make_plan(dhcp="none", gateway="198.18.0.1")
    with pytest.raises(MultiipError, match="--dhcp"):
        make_plan(dhcp="pump")
    with pytest.raises(TypeError, match="unknown options"):
        make_plan(colour="red")
    with pytest.raises(MultiipError, match="--bridge-tool"):
        make_plan(bridge_tool="ovs")
    with pytest.raises(MultiipError, match="--host-dhcp"):
        make_plan(dhcp="none", host_dhcp=True)
    with pytest.raises(MultiipError, match="--probe-tool"):
        make_plan(address="198.18.1.1/15", probe_tool="nmap")
    for unprobed in (
        {},
        {"address": "2001:db8::10/64"},
        {"mode": "alias", "addresses": "10.0.0.16/28", "local_route": True},
    ):
        with pytest.raises(MultiipError, match="--probe-tool picks what probes static IPv4"):
            make_plan(probe_tool="arping", **unprobed)
    assert setup(address="198.18.1.1/15", probe_tool="arp-scan").probe_tool == "arp-scan"
    for wait in (99, 10001, 0, -1):
        with pytest.raises(MultiipError, match=f"--probe-wait {wait}: give 100..10000 milliseconds"):
            make_plan(address="198.18.1.1/15", probe_wait=wait)
    with pytest.raises(MultiipError, match="--probe-wait is how long the probe of static IPv4"):
        make_plan(address="2001:db8::10/64", probe_wait=1000)
    assert setup(address="198.18.1.1/15", probe_wait=1000).args()[-2:] == ["--probe-wait", "1000"]
    with pytest.raises(MultiipError, match="over 15 characters"):
        make_plan(prefix="abcdefghijkl", count=100)  # abcdefghijkl-b99 is 16 characters
    with pytest.raises(MultiipError, match="--confirm"):
        make_plan(confirm=601)
    with pytest.raises(MultiipError, match="--confirm"):
        make_plan(confirm=-1)
    with pytest.raises(MultiipError, match="both"):
        make_target(bridge="eth0", uplink="eth0")
    assert setup(mode="macvlan", count=2000).count == 2000  # no bridge, no 1023-port limit
    with pytest.raises(MultiipError, match="at most 4096"):
        make_plan(mode="macvlan", count=5000)
    with pytest.raises(MultiipError, match="are for --mode bridge"):
        make_plan(mode="macvlan", host_dhcp=True)
    with pytest.raises(MultiipError, match="use --dhcp udhcpc"):
        make_plan(mode="ipvlan", dhcp="dhclient")
    with pytest.raises(MultiipError, match="--mode"):
        make_plan(mode="vxlan")


def test_address_lists(tmp_path: Path) -> None:
    """--addresses: a list or @FILE, one address per namespace (or alias); it sets --count."""
    listed = tmp_path / "assigned"
    listed.write_text("# the instance's secondary IPs\n10.0.1.20\n10.0.1.21/24  # with its length\n\n10.0.1.22\n")
    plan = make_plan(mode="ipvlan", addresses=f"@{listed}")
    assert (plan.o.count, plan.o.dhcp, plan.static) == (3, "none", ["10.0.1.20", "10.0.1.21/24", "10.0.1.22"])
    assert "--addresses" in plan.args() and "10.0.1.20,10.0.1.21/24,10.0.1.22" in plan.args()
    assert setup(addresses="10.0.1.20, 10.0.1.21", count=2).count == 2
    assert make_plan(address="198.18.1.1/15", count=3).static == ["198.18.1.1/15", "198.18.1.2/15", "198.18.1.3/15"]
    for bad, why in (
        ("10.0.1.20,10.0.1.20", "given twice"),
        ("10.0.1.300", "not an IP address"),
        ("127.0.0.5", "loopback"),
        ("# nothing", "no address"),
        (f"@{tmp_path / 'missing'}", "cannot read it"),
    ):
        with pytest.raises(MultiipError, match=why):
            make_plan(addresses=bad)
    with pytest.raises(MultiipError, match="lists 2"):
        make_plan(addresses="10.0.1.20,10.0.1.21", count=5)
    with pytest.raises(MultiipError, match="use one"):
        make_plan(addresses="10.0.1.20", address="10.0.1.30/24")


def test_alias_rules() -> None:
    """--mode alias: static addresses only, no namespace options; the host's port range left unless given."""
    plan = make_plan(mode="alias", addresses="10.0.1.20,10.0.1.21")
    assert plan.o.port_range is None and plan.ports == (1024, 65535)
    assert setup(mode="alias", addresses="10.0.1.20", port_range="2000-60000").port_range == (2000, 60000)
    with pytest.raises(MultiipError, match="--addresses LIST"):
        make_plan(mode="alias")
    with pytest.raises(MultiipError, match="no namespaces"):
        make_plan(mode="alias", addresses="10.0.1.20", tune_host=True)
    with pytest.raises(MultiipError, match="are for --mode bridge"):
        make_plan(mode="alias", addresses="10.0.1.20", confirm=10)


def test_seed_names_and_others_do_not_collide() -> None:
    seed = make_target()
    assert (seed.inside_prefix, seed.port_prefix) == ("tap", "br-tap")
    other = make_target(prefix="tap")
    names = {f"{other.inside_prefix}{i}" for i in range(30)} | {f"{other.port_prefix}{i}" for i in range(30)}
    seed_names = {f"{seed.inside_prefix}{i}" for i in range(30)} | {f"{seed.port_prefix}{i}" for i in range(30)}
    assert not names & seed_names


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"count": 7, "prefix": "lab", "dhcp": "none", "address": "198.18.1.10/15", "gateway": "198.18.0.1"},
        {"bridge": "brx", "uplink": "ens3", "bridge_tool": "brctl", "port_range": "2000-60000", "confirm": 30},
        {"dhcp": "dhclient", "host_dhcp": True, "lease_timeout": 60, "tune_host": True},
        {"mode": "macvlan", "count": 1500, "prefix": "mv"},
    ],
)
def test_setup_round_trip_through_its_own_args(given: dict[str, object]) -> None:
    """Setup.args() gives the options that make the same setup again: one definition, one default each."""
    valid = setup(**given)
    argv = valid.args()
    parsed: dict[str, object] = {}
    fields = {"--" + f.name.replace("_", "-"): f for f in dataclasses.fields(options.Setup)}
    while argv:
        f = fields[argv.pop(0)]
        parsed[f.name] = True if f.type == "bool" else argv.pop(0)
    assert setup(**parsed) == valid
    assert set(parsed) == {k for k in given if k != "count" or given[k] != 20}


def test_the_cli_defaults_are_the_setups() -> None:
    """Each setup option of `run` and `render` has Setup's default (the CLI reads options.DEFAULT)."""
    for command in (cli.run, cli.render_cmd):
        params = inspect.signature(command).parameters
        for f in dataclasses.fields(options.Setup):
            assert f.name in params, (command.__name__, f.name)
            default = params[f.name].default
            assert default == f.default or (default is None and f.default in ((), None)), (f.name, default)


def test_choices_are_enums() -> None:
    assert options.choice(options.Dhcp.udhcpc, options.Dhcp, "--dhcp") == "udhcpc"
    with pytest.raises(MultiipError, match="choose one of auto, udhcpc, dhclient, dhcpcd, none"):
        options.choice("pump", options.Dhcp, "--dhcp")


@pytest.mark.parametrize(
    ("value", "message"),
    [("nonsense", "IPv4:PORT"), ("198.18.0.1:99999", "1..65535"), ("198.18.0.1", "IPv4:PORT"), ("x:1", "IPv4:PORT")],
)
def test_server_refused(value: str, message: str) -> None:
    with pytest.raises(MultiipError, match=message):
        options.server(value)


def test_hold_limits() -> None:
    options.hold_limits(None, None, 0.0)
    for args, option in (
        ((0, None, 0.0), "--per-ip"),
        ((None, -1.0, 0.0), "--duration"),
        ((None, None, -2.0), "--rate"),
    ):
        with pytest.raises(MultiipError, match=option):
            options.hold_limits(*args)  # type: ignore[arg-type]
