"""--mode alias, the cloud checks and `multiip doctor`, as root in the lab: an ordinary LAN and a cloud-like
one (frames from the host's MAC and its assigned IPs only, DHCP for the host alone)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import unique
from helpers import host_state, ip_json, ipvlan_works, multiip, running_lab, sh, uplink_state

from multiip import lab as labmod

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cloud() -> Iterator[labmod.Lab]:
    """A cloud-like lab with two addresses assigned to its host."""
    with running_lab(check_down=False, name=unique("mc"), cloud=2) as the_lab:
        yield the_lab


@pytest.fixture
def cprefix(cloud: labmod.Lab) -> Iterator[str]:
    """A fresh setup prefix on the cloud lab's host, taken down afterwards whatever the test left."""
    p = unique("t")
    yield p
    if Path(f"/run/multiip/{p}").exists():
        multiip("down", "--prefix", p, "--yes", netns=cloud.host_ns, check=False)


def port_range(netns: str) -> str:
    return "-".join(sh("cat", "/proc/sys/net/ipv4/ip_local_port_range", netns=netns).stdout.split())


def doctor(netns: str, **env: str) -> dict[str, str]:
    cp = multiip("doctor", "--probe", "--json", netns=netns, env={**os.environ, **env})
    found: dict[str, str] = json.loads(cp.stdout)
    return found


def test_alias_labels_its_addresses_and_down_removes_exactly_them(lab: labmod.Lab, prefix: str) -> None:
    """Two addresses on the lab host's eth0 with the label eth0:PREFIX, its own address, routes and rules
    untouched; the host-wide port range changed only because it was asked, and put back by down."""
    before, uplink, ports = host_state(lab.host_ns, prefix), uplink_state(lab.host_ns), port_range(lab.host_ns)
    cp = multiip("run", "--mode", "alias", "--prefix", prefix, "--addresses", "198.18.0.40,198.18.0.41/16",
                 "--port-range", "1024-65535", netns=lab.host_ns)  # fmt: skip
    assert "uplink eth0: keeps its addresses, routes and manager; 2 of 2 addresses to add" in cp.stderr
    labelled = {
        (a["local"], a.get("label")) for x in ip_json("address", "show", "dev", "eth0", netns=lab.host_ns)
        for a in x["addr_info"] if a["family"] == "inet"
    }  # fmt: skip
    label = f"eth0:{prefix}"
    assert labelled == {(str(lab.host_ip), "eth0"), ("198.18.0.40", label), ("198.18.0.41", label)}
    assert port_range(lab.host_ns) == "1024-65535"
    status = json.loads(multiip("status", "--prefix", prefix, "--json", netns=lab.host_ns).stdout)
    assert status["mode"] == "alias"
    assert [r["ipv4"] for r in status["namespaces"]] == ["198.18.0.40/16", "198.18.0.41/16"]
    assert all(r["host"] for r in status["namespaces"])
    k6 = multiip("addrs", "--prefix", prefix, "--format", "k6", netns=lab.host_ns).stdout.strip()
    assert k6 == "198.18.0.40,198.18.0.41"
    cp = multiip("exec", "--prefix", prefix, "--all", "--", "true", netns=lab.host_ns, check=False)
    assert cp.returncode != 0 and "--mode alias" in cp.stderr and "multiip addrs" in cp.stderr
    # every port is in the host's range now: hold would leave the host none for its own connections
    cp = multiip("hold", f"{lab.lan_ip}:{lab.port}", "--prefix", prefix, "--duration", "0", netns=lab.host_ns,
                 check=False)  # fmt: skip
    assert cp.returncode != 0 and "covers every port" in cp.stderr
    # run again: nothing added twice; an address someone else has is refused before anything changes
    multiip("run", "--mode", "alias", "--prefix", prefix, "--addresses", "198.18.0.40,198.18.0.41/16",
            "--port-range", "1024-65535", netns=lab.host_ns)  # fmt: skip
    other = unique("t")
    cp = multiip("run", "--mode", "alias", "--prefix", other, "--addresses", "198.18.0.41,198.18.0.42",
                 netns=lab.host_ns, check=False)  # fmt: skip
    assert cp.returncode != 0 and "198.18.0.41/16 is on eth0 already and is not from this setup" in cp.stderr
    assert not Path(f"/run/multiip/{other}").exists()
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert uplink_state(lab.host_ns) == uplink and port_range(lab.host_ns) == ports
    assert host_state(lab.host_ns, prefix) == before and not Path(f"/run/multiip/{prefix}").exists()


def test_an_address_outside_the_uplinks_subnets_needs_its_length(lab: labmod.Lab, prefix: str) -> None:
    before = host_state(lab.host_ns, prefix)
    cp = multiip("run", "--mode", "alias", "--prefix", prefix, "--addresses", "10.9.8.7", netns=lab.host_ns,
                 check=False)  # fmt: skip
    assert cp.returncode != 0 and "10.9.8.7 is in none of the subnets of eth0" in cp.stderr
    assert host_state(lab.host_ns, prefix) == before


def test_static_addresses_the_lan_cannot_have_are_refused_before_anything_changes(lab: labmod.Lab, prefix: str) -> None:
    """Outside the uplink's subnet, another prefix length, the gateway, the network and broadcast addresses, an
    address someone on the LAN answers for (a duplicate-address ARP probe): each refused with the reason, in
    every mode, with nothing changed; --off-subnet takes a block routed to the host."""
    before = host_state(lab.host_ns, prefix)
    alias, static = ["--mode", "alias", "--addresses"], ["--dhcp", "none", "--count", "2", "--address"]
    for args, why in (
        ([*alias, "10.0.0.50/8"], "address 10.0.0.50 is in none of the subnets of eth0"),
        ([*alias, "198.18.0.50/24"], "address 198.18.0.50/24: the LAN's subnet there is /16"),
        ([*alias, str(lab.lan_ip)], f"address {lab.lan_ip} is the default gateway"),
        ([*alias, "198.18.0.0"], "address 198.18.0.0 is the network address of its subnet /16"),
        ([*alias, "198.18.255.255"], "address 198.18.255.255 is the broadcast address of its subnet /16"),
        ([*alias, str(lab.second_router)], f"address {lab.second_router} is answered on the LAN (by "),
        (["--mode", "macvlan", *static, f"{lab.second_router}/16"], f"address {lab.second_router} is answered"),
        (["--mode", "bridge", *static, "10.0.0.10/24", "--gateway", "10.0.0.1"], "is in none of the subnets"),
    ):
        cp = multiip("run", "--prefix", prefix, *args, "--yes", netns=lab.host_ns, check=False)
        last = cp.stderr.strip().splitlines()[-1]
        assert cp.returncode != 0 and why in last and last.endswith("nothing was changed"), (args, last)
        assert host_state(lab.host_ns, prefix) == before and not Path(f"/run/multiip/{prefix}").exists(), args
    multiip("run", "--prefix", prefix, *alias, "10.9.8.7/32", "--off-subnet", netns=lab.host_ns)
    assert ("eth0", "10.9.8.7", 32) in [(n, a, p) for n, a, p, *_ in host_state(lab.host_ns, prefix)["addresses"]]
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == before


@pytest.mark.parametrize("tool", ["arp-scan", "arping"])
def test_a_duplicate_found_while_the_bridge_is_made_stops_the_setup_before_the_uplink_moves(
    lab: labmod.Lab, prefix: str, tool: str
) -> None:
    """In bridge mode the probe goes on while the namespaces are made (they reach the LAN only with the uplink):
    an address someone has stops the setup before the uplink moves, and down removes what it made. Either tool
    finds it."""
    before = host_state(lab.host_ns, prefix)
    uplink = [row for row in before["addresses"] if row[0] == "eth0"]
    args = ["--dhcp", "none", "--probe-tool", tool, "--addresses", f"198.18.100.1,{lab.second_router},198.18.100.2"]
    cp = multiip("run", "--prefix", prefix, *args, "--yes", netns=lab.host_ns, check=False)
    last = cp.stderr.strip().splitlines()[-1]
    assert cp.returncode != 0 and f"address {lab.second_router} is answered on the LAN (by " in last, last
    assert "eth0 was not moved: the host's network is as it was" in last and f"multiip down --prefix {prefix}" in last
    now = host_state(lab.host_ns, prefix)
    assert [row for row in now["addresses"] if row[0] == "eth0"] == uplink
    assert [r for r in now["routes"] if '"dev": "br0"' not in r] == before["routes"]  # the bridge's own: fe80::/64
    assert [x for x in now["links"] if x[0] == "eth0"] == [x for x in before["links"] if x[0] == "eth0"]  # no master
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == before


def test_without_arp_scan_the_probe_is_arpings(lab: labmod.Lab, prefix: str, tmp_path: Path) -> None:
    """--probe-tool auto (the default) on a host without arp-scan: the exported script probes with iputils'
    arping instead and still refuses the address someone has, with nothing changed."""
    tools = tmp_path / "bin"  # this host's programs, arp-scan left out
    tools.mkdir()
    for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for program in Path(directory).iterdir():
            if program.name != "arp-scan" and not (tools / program.name).is_symlink():
                (tools / program.name).symlink_to(program)
    args = ["--mode", "macvlan", "--prefix", prefix, "--dhcp", "none", "--count", "2"]
    script = tmp_path / "setup.sh"
    script.write_text(multiip("render", *args, "--address", f"{lab.second_router}/16").stdout)
    before = host_state(lab.host_ns, prefix)
    cp = sh("bash", str(script), netns=lab.host_ns, check=False, env={"PATH": str(tools), "LC_ALL": "C"})
    last = cp.stderr.strip().splitlines()[-1]
    assert cp.returncode != 0 and f"address {lab.second_router} is answered on the LAN (by " in last, cp.stderr
    assert host_state(lab.host_ns, prefix) == before


def test_doctor_probes_from_a_new_mac_only_when_asked(lab: labmod.Lab) -> None:
    log = (lab.state_dir / "dnsmasq.log").read_text()
    found = json.loads(multiip("doctor", "--json", netns=lab.host_ns).stdout)
    assert found["new_mac"] == found["dhcp"] == "untested" and "probe_mac" not in found
    assert found["mode_macvlan"].startswith("yes, if the network takes new MACs (not probed")
    assert (lab.state_dir / "dnsmasq.log").read_text() == log  # no DHCP request was sent


def test_doctor_on_an_ordinary_lan(lab: labmod.Lab) -> None:
    """A new MAC is answered (ARP) and offered an address (DHCP, released at once): macvlan is the suggestion."""
    leases = (lab.state_dir / "dnsmasq.leases").read_text()
    found = doctor(lab.host_ns)
    assert (found["wifi"], found["cloud"], found["gateway"]) == ("no", "none", str(lab.lan_ip))
    assert found["new_mac"] == "answered" and found["dhcp"] == f"offer from {lab.lan_ip}"
    assert found["mode_macvlan"] == found["mode_bridge"] == found["mode_alias"] == "yes"
    assert found["suggest"] == "macvlan"
    assert found["probe_mac"] not in (lab.state_dir / "dnsmasq.leases").read_text()  # released
    assert (lab.state_dir / "dnsmasq.leases").read_text() == leases
    assert not [n for n in sh("ip", "netns", "list", netns=lab.host_ns).stdout.split() if "doctor" in n]


def test_doctor_and_run_on_a_cloud_instance(lab: labmod.Lab, prefix: str, tmp_path: Path) -> None:
    """DMI strings of an EC2 instance: bridge and macvlan are refused before anything changes, with the way
    that works; doctor names the cloud. (MULTIIP_DMI_DIR stands in for /sys/class/dmi/id.)"""
    for name, value in (("sys_vendor", "Amazon EC2"), ("product_name", "m6i.large"), ("bios_version", "1.0")):
        (tmp_path / name).write_text(value + "\n")
    env = {**os.environ, "MULTIIP_DMI_DIR": str(tmp_path)}
    before = host_state(lab.host_ns, prefix)
    for mode in ("bridge", "macvlan"):
        cp = multiip("run", "--mode", mode, "--prefix", prefix, "--count", "2", "--yes", netns=lab.host_ns, env=env,
                     check=False)  # fmt: skip
        assert cp.returncode != 0, mode
        assert "Amazon EC2 instance" in cp.stderr and "--mode ipvlan or alias with --addresses" in cp.stderr
        assert host_state(lab.host_ns, prefix) == before and not Path(f"/run/multiip/{prefix}").exists()
    found = doctor(lab.host_ns, MULTIIP_DMI_DIR=str(tmp_path))
    assert found["cloud"] == "Amazon EC2" and "Amazon EC2" in found["mode_macvlan"] and found["mode_alias"] == "yes"
    # Azure says so in its chassis asset tag; an override exists for a network that does take other MACs
    (tmp_path / "sys_vendor").write_text("Microsoft Corporation\n")
    (tmp_path / "product_name").write_text("Virtual Machine\n")
    (tmp_path / "chassis_asset_tag").write_text("7783-7084-3265-9085-8269-3286-77\n")
    assert doctor(lab.host_ns, MULTIIP_DMI_DIR=str(tmp_path))["cloud"] == "Microsoft Azure"
    static = ["--dhcp", "none", "--address", "198.18.121.1/16"]
    multiip("run", "--mode", "macvlan", "--prefix", prefix, "--count", "2", *static, netns=lab.host_ns,
            env={**env, "MULTIIP_SKIP_CLOUD_CHECK": "1"})  # fmt: skip
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert host_state(lab.host_ns, prefix) == before


def test_cloud_lan_drops_new_macs_and_doctor_says_so(cloud: labmod.Lab) -> None:
    found = doctor(cloud.host_ns)
    assert found["new_mac"] == "dropped" and found["dhcp"] == "none"
    assert "drops unknown MACs" in found["mode_macvlan"] and "drops unknown MACs" in found["mode_bridge"]
    assert found["suggest"] in ("ipvlan", "alias") and found["mode_alias"] == "yes"


def test_bridge_and_macvlan_fail_clearly_on_a_cloud_lan(cloud: labmod.Lab, cprefix: str) -> None:
    """No DMI string gives this one away: the namespaces get no lease, and the error says what to do; the
    host keeps its network (its own MAC passes) and down leaves it as it was."""
    prefix = cprefix
    before = host_state(cloud.host_ns, prefix)
    for mode in ("macvlan", "bridge"):
        cp = multiip("run", "--mode", mode, "--prefix", prefix, "--count", "2", "--lease-timeout", "3", "--yes",
                     netns=cloud.host_ns, check=False)  # fmt: skip
        assert cp.returncode != 0, cp.stderr
        assert "no DHCP lease within 3s" in cp.stderr and "multiip doctor" in cp.stderr, cp.stderr
        reach = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"
        reached = sh("python3", "-c", reach, str(cloud.lan_ip), str(cloud.port), netns=cloud.host_ns, check=False)
        assert reached.returncode == 0, f"{mode}: the host lost the LAN: {reached.stderr}"  # the host still can
        down = multiip("down", "--prefix", prefix, "--yes", netns=cloud.host_ns)
        after = host_state(cloud.host_ns, prefix)
        changed = [k for k in before if before[k] != after[k]]
        assert after == before, f"{mode}: {changed}\n{before}\n{after}\n{down.stderr}"


def test_alias_with_the_assigned_addresses_holds_past_one_ip_on_a_cloud_lan(cloud: labmod.Lab, cprefix: str) -> None:
    prefix = cprefix
    """The cloud's list as the cloud gives it (@FILE, no prefix length): both addresses hold every port outside
    the host's own range to one ip:port, 2 x 36,280 = 72,560 > 64,512, and the sink sees both."""
    before = host_state(cloud.host_ns, prefix)
    multiip("run", "--mode", "alias", "--prefix", prefix, "--addresses", f"@{cloud.assigned_file}",
            netns=cloud.host_ns)  # fmt: skip
    held = json.loads(multiip("hold", f"{cloud.lan_ip}:{cloud.port}", "--prefix", prefix, "--duration", "1",
                              "--json", netns=cloud.host_ns).stdout)  # fmt: skip
    assert held["established"] == held["target"] == 2 * (65535 - 1024 + 1 - (60999 - 32768 + 1)) == 72_560
    assert {r["ip"] for r in held["namespaces"]} == {str(ip) for ip in cloud.assigned}
    multiip("down", "--prefix", prefix, "--yes", netns=cloud.host_ns)
    assert host_state(cloud.host_ns, prefix) == before
    # an address the cloud did not assign reaches nothing, as in a real one
    multiip("run", "--mode", "alias", "--prefix", prefix, "--addresses", "198.18.0.60", netns=cloud.host_ns)
    connect_from = (
        "import socket,sys; s = socket.socket(); s.settimeout(2); s.bind((sys.argv[1], 0)); "
        "s.connect((sys.argv[2], int(sys.argv[3]))); s.close()"
    )
    for source, reached in ((str(cloud.host_ip), True), ("198.18.0.60", False)):
        cp = sh("python3", "-c", connect_from, source, str(cloud.lan_ip), str(cloud.port), netns=cloud.host_ns,
                check=False)  # fmt: skip
        assert (cp.returncode == 0) == reached, source
    multiip("down", "--prefix", prefix, "--yes", netns=cloud.host_ns)
    assert host_state(cloud.host_ns, prefix) == before


def test_ipvlan_with_the_assigned_addresses_holds_on_a_cloud_lan(cloud: labmod.Lab, cprefix: str) -> None:
    """ipvlan's links all carry the host's MAC, so the cloud LAN lets them through with its assigned IPs:
    each namespace holds 64,512 connections to one ip:port (2 x 64,512). Where the kernel has no ipvlan
    (this machine's: CONFIG_IPVLAN unset) the setup is refused with the reason, checked in test_modes."""
    if not ipvlan_works(cloud.host_ns):  # its setup: tests/test_second_kernel.py, in a kernel that has ipvlan
        cp = multiip("run", "--mode", "ipvlan", "--prefix", cprefix, "--addresses", f"@{cloud.assigned_file}",
                     "--yes", netns=cloud.host_ns, check=False)  # fmt: skip
        assert cp.returncode != 0 and "this kernel cannot make an ipvlan on eth0" in cp.stderr, cp.stderr
        return
    prefix = cprefix
    before = host_state(cloud.host_ns, prefix)
    multiip("run", "--mode", "ipvlan", "--prefix", prefix, "--addresses", f"@{cloud.assigned_file}", "--yes",
            netns=cloud.host_ns)  # fmt: skip
    held = json.loads(multiip("hold", f"{cloud.lan_ip}:{cloud.port}", "--prefix", prefix, "--duration", "1",
                              "--json").stdout)  # fmt: skip
    assert held["established"] == held["target"] == 2 * 64512
    multiip("down", "--prefix", prefix, "--yes", netns=cloud.host_ns)
    assert host_state(cloud.host_ns, prefix) == before
