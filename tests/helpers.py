"""Helpers for tests: run commands and multiip (optionally as the lab host), read a host's network state."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from multiip import lab as labmod


def within(netns: str) -> list[str]:
    """The command prefix that runs as this namespace: a lab's host in its mount namespace too (lab.enter)."""
    if netns.endswith("-host"):
        return labmod.enter(labmod.make_lab(netns.removesuffix("-host")), [])
    return ["nsenter", f"--net=/run/netns/{netns}", "--"]


def sh(*argv: str, check: bool = True, netns: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    if netns:
        argv = (*within(netns), *argv)
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kw)


def multiip(*args: str, netns: str | None = None, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it (python -m multiip), optionally as the lab host."""
    cp = sh(sys.executable, "-m", "multiip", *args, netns=netns, check=False, stdin=subprocess.DEVNULL, **kw)
    if check and cp.returncode != 0:
        raise AssertionError(f"multiip {' '.join(args)} exited {cp.returncode}:\n{cp.stderr}")
    return cp


def ip_json(*argv: str, netns: str | None = None) -> Any:
    return json.loads(sh("ip", "-j", *argv, netns=netns).stdout or "[]")


def netns_names() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()]


def ours(prefix: str) -> list[str]:
    return [n for n in netns_names() if n.startswith(prefix) and n[len(prefix) :].isdigit()]


def flags(address: dict[str, Any]) -> tuple[str, ...]:
    """An address's flags that a move must keep (not its lifetimes, which a DHCP client renews)."""
    return tuple(k for k in ("dynamic", "noprefixroute", "nodad", "secondary") if address.get(k))


def host_state(netns: str, prefix: str) -> dict[str, Any]:
    """The lab host's network and the setup's namespaces, without what differs between equal setups (MACs,
    interface indexes, timers)."""
    links = sorted(
        (x["ifname"], x.get("master"), x.get("operstate"), (x.get("linkinfo") or {}).get("info_kind"))
        for x in ip_json("-d", "link", "show", netns=netns)
    )
    addrs = sorted(
        (x["ifname"], a["local"], a["prefixlen"], a.get("broadcast"), flags(a))
        for x in ip_json("address", "show", netns=netns)
        for a in x.get("addr_info", [])
        if a.get("scope") != "link"
    )
    routes = sorted(
        json.dumps({k: v for k, v in r.items() if k != "expires"}, sort_keys=True)  # a router's renew them
        for family in ("-4", "-6")
        for r in ip_json(family, "route", "show", "table", "all", netns=netns)
        if r.get("table") != "local"
    )
    rules = [ip_json(family, "rule", "show", netns=netns) for family in ("-4", "-6")]
    ports_ipv6 = sorted(  # the bridge ports: none may have an IPv6 link-local address
        (x["ifname"], a["local"])
        for x in ip_json("-6", "address", "show", netns=netns)
        for a in x.get("addr_info", [])
        if x["ifname"].startswith(prefix)
    )
    inside = {}
    for ns in ours(prefix):
        inside[ns] = {
            "links": sorted((x["ifname"], x.get("operstate")) for x in ip_json("link", "show", netns=ns)),
            "addresses": sorted(
                (x["ifname"], a["local"], a["prefixlen"])
                for x in ip_json("-4", "address", "show", netns=ns)
                for a in x.get("addr_info", [])
            ),
            "routes": sorted(json.dumps(r, sort_keys=True) for r in ip_json("-4", "route", "show", netns=ns)),
            "ipv6": sorted(
                (x["ifname"], a["local"])
                for x in ip_json("-6", "address", "show", netns=ns)
                for a in x.get("addr_info", [])
            ),
            "ports": sh("cat", "/proc/sys/net/ipv4/ip_local_port_range", netns=ns).stdout.split(),
            "resolv.conf": Path(f"/etc/netns/{ns}/resolv.conf").exists(),
        }
    return {
        "links": links, "addresses": addrs, "routes": routes, "rules": rules, "ports_ipv6": ports_ipv6,
        "namespaces": inside,
    }  # fmt: skip


def leftovers(prefix: str, netns: str) -> list[str]:
    """What a removed setup could leave behind: namespaces, links, processes, files."""
    left = [f"namespace {n}" for n in ours(prefix)]
    left += [f"link {x['ifname']}" for x in ip_json("link", "show", netns=netns) if x["ifname"].startswith(prefix)]
    for pattern in (f"/etc/netns/{prefix}*", f"/var/lib/dhcpcd/{prefix}-t*"):
        left += [f"file {p}" for p in Path("/").glob(pattern.lstrip("/"))]
    # dhcpcd's pid files are in the /run of the host it ran on (a lab host's own)
    run = sh("sh", "-c", f"ls -d /run/dhcpcd/{prefix}-t* 2>/dev/null || true", netns=netns).stdout.split()
    left += [f"file {p}" for p in run]
    if Path(f"/run/multiip/{prefix}").exists():
        left.append(f"dir /run/multiip/{prefix}")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"/run/multiip/{prefix}/" in cmdline or f"{prefix}-t" in cmdline:
            left.append(f"process {proc.name}: {cmdline.replace(chr(0), ' ')}")
    return left


def reaches(netns: str, ip: str, port: int) -> bool:
    """One TCP connection from a namespace to ip:port, within 3 s, closed with a reset: a TIME_WAIT left on
    its random port would make a later `hold` that binds that port fail (EADDRINUSE)."""
    code = (
        "import socket,struct,sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); s.close()"
    )
    return sh(sys.executable, "-c", code, ip, str(port), netns=netns, check=False).returncode == 0


def processes(netns: str, name: str) -> list[list[str]]:
    """The argv of every process called ``name`` whose network namespace is ``netns``."""
    target = Path(f"/run/netns/{netns}").stat().st_ino
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != name or (proc / "ns/net").stat().st_ino != target:
                continue
            found.append((proc / "cmdline").read_bytes().decode().rstrip("\0").split("\0"))
        except OSError:
            continue
    return found


def uplink_state(netns: str, dev: str = "eth0") -> dict[str, Any]:
    """Everything an uplink carries, as `ip` shows it (lifetimes aside): addresses with their flags and labels,
    the routes of every table but the kernel's local one (multipath, over nexthop objects), the nexthop
    objects, the rules, the MTU."""
    addrs = sorted(
        (a["family"], a["local"], a["prefixlen"], a.get("broadcast"), a.get("label"), flags(a))
        for x in ip_json("-d", "address", "show", "dev", dev, netns=netns)
        for a in x.get("addr_info", [])
    )
    routes = sorted(
        json.dumps({k: v for k, v in r.items() if k != "expires"}, sort_keys=True)
        for family in ("-4", "-6")
        for r in ip_json(family, "route", "show", "table", "all", netns=netns)
        if r.get("table") != "local" and json.dumps(r).count(f'"dev": "{dev}"')  # the kernel's, from the addresses
    )
    nexthops = sorted(json.dumps(n, sort_keys=True) for n in ip_json("nexthop", "show", netns=netns))
    rules = [ip_json(family, "rule", "show", netns=netns) for family in ("-4", "-6")]
    mtu = ip_json("link", "show", "dev", dev, netns=netns)[0]["mtu"]
    return {"addresses": addrs, "routes": routes, "nexthops": nexthops, "rules": rules, "mtu": mtu}


HOST_LIMITS = ("net/ipv4/neigh/default/gc_thresh3", "net/core/netdev_max_backlog")  # what a setup checks


def fake_sysctls(directory: Path, values: dict[str, str]) -> Path:
    """A stand-in for /proc/sys holding ``values`` (key: path under it), for MULTIIP_SYSCTL_DIR."""
    for key, value in values.items():
        (directory / key).parent.mkdir(parents=True, exist_ok=True)
        (directory / key).write_text(value + "\n")
    return directory


def ipvlan_works(netns: str) -> bool:
    """Can this kernel make an ipvlan on netns's eth0? (One throwaway link in a throwaway namespace.)"""
    probe = (
        "ip netns add mipvprobe; ip link add link eth0 name p0 netns mipvprobe type ipvlan mode l2; r=$?; "
        "ip netns del mipvprobe; exit $r"
    )
    return sh("sh", "-c", probe, netns=netns, check=False).returncode == 0


@contextlib.contextmanager
def running_lab(check_down: bool = True, **settings: Any) -> Iterator[labmod.Lab]:
    """A lab made with these lab.make_lab settings, up for the block and taken down after it whatever
    happened; the same settings become `lab up`'s options, so the two cannot differ."""
    the_lab = labmod.make_lab(**settings)
    try:
        given = [(k.replace("_", "-"), v) for k, v in settings.items() if v is not False]
        flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in given]
        multiip("lab", "up", *flags)
        yield the_lab
    except BaseException:
        multiip("lab", "down", "--name", the_lab.name, check=False)  # the error in flight is the one to see
        raise
    multiip("lab", "down", "--name", the_lab.name, check=check_down)
