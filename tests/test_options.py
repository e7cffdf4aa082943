"""Validation: every bad value is refused with a message naming the option, before anything runs."""

from __future__ import annotations

import ipaddress

import pytest

from multiip import options
from multiip.errors import MultiipError
from multiip.plan import make_plan, make_target


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


@pytest.mark.parametrize("value", ["1024", "a-b", "0-100", "100-100", "200-100", "1-65536", "1024-70000", " - "])
def test_port_range_refused(value: str) -> None:
    with pytest.raises(MultiipError, match="--port-range"):
        options.port_range(value)


def test_port_range_ok() -> None:
    assert options.port_range("1024-65535") == (1024, 65535)


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
    with pytest.raises(MultiipError, match="--dhcp none"):
        make_plan(address="198.18.1.1/15")
    with pytest.raises(MultiipError, match="--gateway goes with --address"):
        make_plan(dhcp="none", gateway="198.18.0.1")
    with pytest.raises(MultiipError, match="--dhcp"):
        make_plan(dhcp="pump")
    with pytest.raises(MultiipError, match="--bridge-tool"):
        make_plan(bridge_tool="ovs")
    with pytest.raises(MultiipError, match="--host-dhcp"):
        make_plan(dhcp="none", host_dhcp=True)
    with pytest.raises(MultiipError, match="over 15 characters"):
        make_plan(prefix="abcdefghijkl", count=100)  # abcdefghijkl-b99 is 16 characters
    with pytest.raises(MultiipError, match="--confirm"):
        make_plan(confirm=601)
    with pytest.raises(MultiipError, match="--confirm"):
        make_plan(confirm=-1)
    with pytest.raises(MultiipError, match="both"):
        make_target(bridge="eth0", uplink="eth0")


def test_seed_names_and_others_do_not_collide() -> None:
    seed = make_target()
    assert (seed.namespace(3), seed.inside(3), seed.port(3)) == ("ns3", "tap3", "br-tap3")
    other = make_target(prefix="tap")
    names = {other.inside(i) for i in range(30)} | {other.port(i) for i in range(30)}
    assert not names & ({seed.inside(i) for i in range(30)} | {seed.port(i) for i in range(30)})
    assert other.index("tap12") == 12 and other.index("tap012") is None and other.index("tapx") is None
