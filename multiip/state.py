"""Discovery: what a setup looks like on the host now, read from the kernel and the state directory."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from multiip import execute
from multiip.plan import Target

# One process per namespace reads its links/addresses, default route and port range.
_PROBE = "ip -j address show; echo; ip -j -4 route show default; echo; cat /proc/sys/net/ipv4/ip_local_port_range"


@dataclass
class NamespaceStatus:
    name: str
    interface: str
    mac: str | None = None
    ipv4: str | None = None  # "198.18.3.7/15"
    gateway: str | None = None
    port_range: str | None = None  # "1024-65535"
    dhcp_client: str | None = None
    dhcp_pid: int | None = None
    dhcp_alive: bool = False
    lease_expires: str | None = None  # ISO 8601, UTC
    interfaces: list[dict[str, Any]] = field(default_factory=list)


def setup_env(target: Target) -> dict[str, str]:
    """KEY=VALUE pairs the setup script recorded, or {} if its state is gone."""
    path = target.state_dir / "setup.env"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def namespaces(target: Target) -> list[str]:
    """The target's namespaces present on this host, by index."""
    found = []
    for line in execute.capture(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.split() else ""
        i = target.index(name)
        if i is not None:
            found.append((i, name))
    return [name for _, name in sorted(found)]


def _decode_all(text: str) -> tuple[list[Any], str]:
    """Consecutive JSON documents at the start of text, and what follows them."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text) or text[pos] not in "[{":
            return docs, text[pos:]
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)


def _pid(path: Path, client: str) -> tuple[int | None, bool]:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None, False
    try:
        alive = Path(f"/proc/{pid}/comm").read_text().strip() == client
    except OSError:
        alive = False
    return pid, alive


def _lease_expiry(client: str, target: Target, ns: str) -> str | None:
    state = target.state_dir
    try:
        if client == "udhcpc":
            text = (state / f"{ns}.lease").read_text()
            m = re.search(r"^expires=(\d+)$", text, re.M)
            return datetime.fromtimestamp(int(m[1]), UTC).isoformat() if m else None
        if client == "dhclient":
            found = re.findall(r"expire \d+ (\d+/\d+/\d+ \d+:\d+:\d+);", (state / f"{ns}.leases").read_text())
            if found:
                return datetime.strptime(found[-1], "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC).isoformat()
    except OSError:
        return None
    return None


def _client_pid_file(client: str, target: Target, ns: str, interface: str) -> Path:
    if client == "dhcpcd":
        return Path(f"/run/dhcpcd/{interface}-4.pid")
    return target.state_dir / f"{ns}.pid"


def namespace_status(target: Target, ns: str, client: str | None) -> NamespaceStatus:
    i = target.index(ns)
    assert i is not None
    st = NamespaceStatus(name=ns, interface=target.inside(i))
    out = execute.capture(execute.in_netns(ns, ["sh", "-c", _PROBE]))
    docs, rest = _decode_all(out)
    links = docs[0] if docs else []
    routes = docs[1] if len(docs) > 1 else []
    for link in links:
        if link.get("ifname") == "lo":
            continue
        v4 = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("family") == "inet"]
        st.interfaces.append({"name": link.get("ifname"), "mac": link.get("address"), "ipv4": v4})
        if link.get("ifname") == st.interface:
            st.mac = link.get("address")
            st.ipv4 = v4[0] if v4 else None
    st.gateway = next((r.get("gateway") for r in routes if r.get("dst") == "default"), None)
    ports = rest.split()
    st.port_range = f"{ports[0]}-{ports[1]}" if len(ports) == 2 else None
    if client and client != "none":
        st.dhcp_client = client
        st.dhcp_pid, st.dhcp_alive = _pid(_client_pid_file(client, target, ns, st.interface), client)
        st.lease_expires = _lease_expiry(client, target, ns)
    return st


def status(target: Target) -> dict[str, Any]:
    env = setup_env(target)
    names = namespaces(target)
    client = env.get("DHCP")
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(lambda ns: namespace_status(target, ns, client), names))
    return {
        "prefix": target.prefix,
        "bridge": env.get("BRIDGE", target.bridge),
        "uplink": env.get("UPLINK", target.uplink) or None,
        "dhcp": client,
        "state": str(target.state_dir) if env else None,
        "namespaces": [asdict(r) for r in rows],
    }
