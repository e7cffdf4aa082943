"""What needs a kernel this machine's may lack (ipvlan, 8021q), and every mode on a second kernel: these run
inside a test kernel (user-mode Linux 6.1, or 7.2 from Debian unstable: tests/kernel.py), where
tests/test_kernel.py runs this module; on the machine itself they are deselected, never skipped. The same
lab, multiip and assertions as elsewhere."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path

import pytest
from helpers import host_state, ip_json, leftovers, multiip, ours, reaches, running_lab, sh, uplink_state

from multiip import lab as labmod

pytestmark = [pytest.mark.root, pytest.mark.in_test_kernel]


def hold(server: str, prefix: str, netns: str | None = None, *args: str) -> dict[str, object]:
    held: dict[str, object] = json.loads(
        multiip("hold", server, "--prefix", prefix, "--duration", "0", "--json", *args, netns=netns).stdout
    )
    return held


def test_this_is_the_test_kernel() -> None:
    """The suite runs where it should: the test kernel (tests/test_kernel.py names its release: Debian 12's
    UML 6.1, or unstable's where 6.1 cannot run), with ipvlan and vlans."""
    assert os.uname().release == os.environ["MULTIIP_TEST_KERNEL_RELEASE"], os.uname().release
    probe = "ip link add zzv0 type veth peer name zzv1 && ip link add link zzv0 name zzi0 type ipvlan mode l2 && " \
            "ip link add link zzv0 name zzv0.7 type vlan id 7 && ip -d -o link; ip link del zzv0"  # fmt: skip
    out = sh("sh", "-c", probe).stdout
    assert " ipvlan " in out and " vlan " in out


def test_ipvlan_with_the_assigned_addresses_holds_n_x_64512_on_a_cloud_lan(prefix: str) -> None:
    """The cloud-like LAN takes the host's MAC and its assigned IPs only: ipvlan's links all have the host's
    MAC, so each namespace holds its 64,512 connections to one ip:port; status, addrs and exec agree; down
    leaves the host as it was."""
    with running_lab(name=prefix + "c", cloud=2, leases=8, capacity=140_000) as cloud:
        before, eth0 = host_state(cloud.host_ns, prefix), uplink_state(cloud.host_ns)
        multiip("run", "--mode", "ipvlan", "--prefix", prefix, "--addresses", f"@{cloud.assigned_file}", "--yes",
                netns=cloud.host_ns)  # fmt: skip
        assert uplink_state(cloud.host_ns) == eth0  # the uplink untouched
        rows = json.loads(multiip("status", "--prefix", prefix, "--json", netns=cloud.host_ns).stdout)["namespaces"]
        mac = ip_json("link", "show", "dev", "eth0", netns=cloud.host_ns)[0]["address"]
        assert [(r["mac"], r["ipv4"]) for r in rows] == [(mac, f"{ip}/16") for ip in cloud.assigned]
        k6 = multiip("addrs", "--prefix", prefix, "--format", "k6").stdout.strip()
        assert k6 == ",".join(map(str, cloud.assigned))
        cp = multiip("exec", "--prefix", prefix, "--all", "--", "sh", "-c", "ip -4 -o address show | grep -c {ip}")
        assert cp.stdout.count("| 1") == 2, cp.stdout
        held = hold(f"{cloud.lan_ip}:{cloud.port}", prefix)
        assert held["established"] == held["target"] == 2 * 64512, held
        multiip("down", "--prefix", prefix, "--yes", netns=cloud.host_ns)
        assert leftovers(prefix, cloud.host_ns) == [] and host_state(cloud.host_ns, prefix) == before


def test_doctor_suggests_ipvlan_where_the_kernel_has_it_on_a_cloud_lan(prefix: str) -> None:
    with running_lab(name=prefix + "d", cloud=2, leases=8, capacity=100) as cloud:
        found = json.loads(multiip("doctor", "--probe", "--json", netns=cloud.host_ns).stdout)
        assert found["kernel_ipvlan"] == "yes" and found["new_mac"] == "dropped", found
        assert found["mode_ipvlan"] == "yes" and found["suggest"] == "ipvlan", found


def test_ipvlan_with_dhcp_tells_the_namespaces_apart_by_client_id(prefix: str) -> None:
    """An ordinary LAN whose DHCP server knows clients by client id: each namespace asks with its own (and
    for broadcast replies), gets its own address, reaches the LAN; down releases every lease."""
    with running_lab(name=prefix + "i", host_by="client-id", leases=64, capacity=2000) as the_lab:
        before = host_state(the_lab.host_ns, prefix)
        multiip("run", "--mode", "ipvlan", "--prefix", prefix, "--count", "4", "--yes", netns=the_lab.host_ns)
        rows = json.loads(multiip("status", "--prefix", prefix, "--json", netns=the_lab.host_ns).stdout)["namespaces"]
        assert len({r["ipv4"] for r in rows}) == 4 and all(r["ipv4"] and r["dhcp_alive"] for r in rows), rows
        for ns in ours(prefix):
            assert reaches(ns, str(the_lab.lan_ip), the_lab.port)
        log = the_lab.state_dir / "dnsmasq.log"
        released = log.read_text().count("DHCPRELEASE(lan0)")
        multiip("down", "--prefix", prefix, "--yes", netns=the_lab.host_ns)
        assert log.read_text().count("DHCPRELEASE(lan0)") - released == 4
        assert leftovers(prefix, the_lab.host_ns) == [] and host_state(the_lab.host_ns, prefix) == before


def test_ipvlan_with_a_dhcp_server_that_ignores_client_ids_never_takes_the_hosts_address(prefix: str) -> None:
    """Every ipvlan sends the host's MAC: a server that ignores client ids offers a namespace the host's own
    lease. The namespace does not take it (nor release it), the setup says why, and the host keeps its
    address and its one lease."""
    with running_lab(name=prefix + "g", manager="udhcpc", ignore_client_ids=True, leases=64, capacity=100) as the_lab:
        before = uplink_state(the_lab.host_ns)
        leases = (the_lab.state_dir / "dnsmasq.leases").read_text()
        cp = multiip("run", "--mode", "ipvlan", "--prefix", prefix, "--count", "2", "--yes", netns=the_lab.host_ns,
                     check=False)  # fmt: skip
        last = cp.stderr.strip().splitlines()[-1]
        assert cp.returncode != 0 and f"the host's own address {the_lab.host_ip}" in last and "ignores" in last, last
        assert uplink_state(the_lab.host_ns) == before
        assert (the_lab.state_dir / "dnsmasq.leases").read_text().count(str(the_lab.host_ip)) == 1
        assert "DHCPRELEASE" not in (the_lab.state_dir / "dnsmasq.log").read_text()
        assert reaches(the_lab.host_ns, str(the_lab.lan_ip), the_lab.port)
        multiip("down", "--prefix", prefix, "--yes", netns=the_lab.host_ns)
        assert uplink_state(the_lab.host_ns) == before and leases.count(str(the_lab.host_ip)) == 1


def test_ipvlan_gets_stable_privacy_ipv6_addresses_of_its_own(prefix: str) -> None:
    """ipvlan's links share the uplink's MAC, so EUI-64 addresses would collide: each namespace's SLAAC
    address is a stable-privacy one (RFC 7217) from a secret of its own, different in each, the same after a
    down and a run again, and reaches the LAN's IPv6 sink."""
    with running_lab(name=prefix + "6", ipv6="slaac", host_by="client-id", leases=64, capacity=2000) as the_lab:
        before = host_state(the_lab.host_ns, prefix)
        args = ["run", "--mode", "ipvlan", "--prefix", prefix, "--count", "4", "--family", "6", "--yes"]
        multiip(*args, netns=the_lab.host_ns)

        def addresses() -> dict[str, str]:
            st = json.loads(multiip("status", "--prefix", prefix, "--json", netns=the_lab.host_ns).stdout)
            return {r["name"]: r["ipv6"] for r in st["namespaces"]}

        first = addresses()
        assert len(set(first.values())) == 4 and all(first.values()), first
        mac = ip_json("link", "show", "dev", "eth0", netns=the_lab.host_ns)[0]["address"]
        tail = int(mac.replace(":", "")[6:], 16)  # an EUI-64 address ends in the MAC's last 3 bytes
        assert not any(int(ipaddress.IPv6Interface(a).ip) & 0xFFFFFF == tail for a in first.values()), first
        for ns in ours(prefix):
            assert reaches(ns, str(the_lab.lan_ip6), the_lab.port)
        multiip("down", "--prefix", prefix, "--yes", netns=the_lab.host_ns)
        multiip(*args, netns=the_lab.host_ns)
        assert addresses() == first
        multiip("down", "--prefix", prefix, "--yes", netns=the_lab.host_ns)
        assert leftovers(prefix, the_lab.host_ns) == [] and host_state(the_lab.host_ns, prefix) == before


@pytest.mark.parametrize("mode", ["bridge", "macvlan", "ipvlan"])
def test_a_vlan_uplink(lab: labmod.Lab, prefix: str, mode: str) -> None:
    """eth0.100 as the uplink: a VLAN device is an Ethernet device; bridge (it can be a port), macvlan and
    ipvlan (links on it) work there, and down leaves it as it was."""
    lan = ["link add link lan0 name lan0.100 type vlan id 100", "link set dev lan0.100 up",
           "address add 198.18.200.1/24 dev lan0.100"]  # fmt: skip
    host = ["link add link eth0 name eth0.100 type vlan id 100", "link set dev eth0.100 up",
            "address add 198.18.200.2/24 dev eth0.100"]  # fmt: skip
    sh("ip", "-batch", "-", input="\n".join(lan) + "\n", netns=lab.lan_ns)
    sh("ip", "-batch", "-", input="\n".join(host) + "\n", netns=lab.host_ns)
    try:
        before = uplink_state(lab.host_ns, "eth0.100")
        multiip("run", "--mode", mode, "--prefix", prefix, "--count", "2", "--uplink", "eth0.100",
                "--bridge", f"{prefix}br", "--dhcp", "none", "--address", "198.18.200.10/24",
                "--gateway", "198.18.200.1", "--yes", netns=lab.host_ns)  # fmt: skip
        for ns in ours(prefix):
            assert reaches(ns, "198.18.200.1", lab.port) or reaches(ns, str(lab.lan_ip), lab.port), ns
        multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
        assert uplink_state(lab.host_ns, "eth0.100") == before
    finally:
        sh("ip", "link", "del", "dev", "eth0.100", netns=lab.host_ns, check=False)
        sh("ip", "link", "del", "dev", "lan0.100", netns=lab.lan_ns, check=False)


STATIC_BLOCK = {"bridge": "198.18.90.1/16", "macvlan": "198.18.91.1/16", "ipvlan": "198.18.92.1/16"}


@pytest.mark.parametrize(
    ("mode", "addressing"),
    [("bridge", "dhcp"), ("bridge", "static"), ("macvlan", "dhcp"), ("macvlan", "static"), ("ipvlan", "static"),
     ("alias", "static")],
)  # fmt: skip
def test_every_mode_on_this_kernel_too(lab: labmod.Lab, prefix: str, mode: str, addressing: str) -> None:
    """Setups of 20 (alias: 2 addresses), DHCP and static, a hold over each, and the uplink as before. (ipvlan
    with DHCP needs a DHCP server that knows the host by client id: its own test above.)"""
    before, eth0 = host_state(lab.host_ns, prefix), uplink_state(lab.host_ns)
    args = ["--mode", mode, "--prefix", prefix]
    if mode == "alias":
        args += ["--addresses", "198.18.0.60,198.18.0.61"]  # hold: the ports outside the host's own range
    elif addressing == "static":
        args += ["--count", "20", "--dhcp", "none", "--address", STATIC_BLOCK[mode]]
    else:
        args += ["--count", "20"]
    multiip("run", *args, "--yes", netns=lab.host_ns)
    n = 2 if mode == "alias" else 20
    held = hold(f"{lab.lan_ip}:{lab.port}", prefix, lab.host_ns, "--per-ip", "1000")
    assert held["established"] == held["target"] == n * 1000, held
    multiip("down", "--prefix", prefix, "--yes", netns=lab.host_ns)
    assert uplink_state(lab.host_ns) == eth0 and host_state(lab.host_ns, prefix) == before
    assert leftovers(prefix, lab.host_ns) == []
    assert not re.search(rf"\b{prefix}\d", sh("ip", "netns", "list").stdout)
    assert not Path(f"/run/multiip/{prefix}").exists()
