"""Network namespaces as hosts: one per party, each with a veth pair into a bridge in the test's own
namespace, addresses on a private /24. Needs root (CAP_NET_ADMIN) and iproute2."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class NetnsUnavailable(Exception):
    """This machine cannot make network namespaces for the test (the message says why)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def why_unavailable() -> str:
    """'' if network namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces and veth pairs needs root (CAP_NET_ADMIN)"
    return ""


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 no route on this machine uses (a new one each run)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used = [ipaddress.ip_network(w, strict=False) for w in routes.split() if "/" in w]
    for _ in range(100):
        net = ipaddress.ip_network(
            f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(256)}.0/24"
        )
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsUnavailable("no free 10.x.y.0/24 subnet found")


@dataclass
class Hosts:
    """The namespaces made: each party's namespace, address and host-side link."""

    tag: str
    bridge: str
    subnet: ipaddress.IPv4Network
    namespaces: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def prefix(self, party: str) -> list[str]:
        """The command that runs a process inside `party`'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[party]]

    def cut(self, party: str) -> None:
        """Take `party`'s link down: nothing reaches it or leaves it."""
        _ip("link", "set", self.links[party], "down")

    def restore(self, party: str) -> None:
        """Bring `party`'s link back up."""
        _ip("link", "set", self.links[party], "up")


def _add_host(hosts: Hosts, i: int, party: str) -> None:
    ns, host_link, ns_link = f"cb{hosts.tag}-{i}", f"cb{hosts.tag}h{i}", f"cb{hosts.tag}n{i}"
    _ip("netns", "add", ns)
    hosts.namespaces[party] = ns
    _ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
    hosts.links[party] = host_link
    _ip("link", "set", ns_link, "netns", ns)
    _ip("link", "set", host_link, "master", hosts.bridge, "up")
    address = str(hosts.subnet.network_address + 2 + i)
    _ip("-n", ns, "addr", "add", f"{address}/{hosts.subnet.prefixlen}", "dev", ns_link)
    _ip("-n", ns, "link", "set", ns_link, "up")
    _ip("-n", ns, "link", "set", "lo", "up")
    hosts.addresses[party] = address


def _remove(hosts: Hosts) -> None:
    """Delete every namespace (their veth pairs go with them) and the bridge; errors ignored, so
    that a half-made set-up is cleaned up too."""
    for ns in hosts.namespaces.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    for link in hosts.links.values():
        subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
    subprocess.run(["ip", "link", "del", hosts.bridge], capture_output=True, timeout=10)


@contextmanager
def namespaces(parties: list[str]) -> Iterator[Hosts]:
    """A namespace per party on a new bridge (this namespace is .1 on it); all removed on exit,
    whatever happened. NetnsUnavailable if the kernel or the rights do not allow it."""
    reason = why_unavailable()
    if reason:
        raise NetnsUnavailable(reason)
    tag = secrets.token_hex(2)
    hosts = Hosts(tag, f"cb{tag}br", _free_subnet())
    try:
        try:
            _ip("link", "add", hosts.bridge, "type", "bridge")
            _ip("addr", "add", f"{hosts.subnet.network_address + 1}/24", "dev", hosts.bridge)
            _ip("link", "set", hosts.bridge, "up")
            for i, party in enumerate(parties):
                _add_host(hosts, i, party)
        except subprocess.CalledProcessError as e:
            raise NetnsUnavailable(f"`{' '.join(e.cmd)}` failed: {e.stderr.strip()}") from None
        yield hosts
    finally:
        _remove(hosts)
