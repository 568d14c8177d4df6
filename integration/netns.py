"""A network namespace joined to the root one by a veth pair: a node that a test can cut off.

The namespace's end of the pair has 10.213.A.(B+2)/30, the root namespace's end
10.213.A.(B+1)/30 (a /30 no address of the host is in). Taking the root end down
is a network cut as the node inside sees it: its link stays up, its packets are
dropped, nothing errors quickly. Needs root (CAP_NET_ADMIN); `NetNs.create`
raises `NetNsUnavailable` when `ip netns add` is not permitted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import shutil
import subprocess
import uuid


class NetNsUnavailable(Exception):
    """Network namespaces cannot be made here (no `ip`, not root, no CAP_NET_ADMIN)."""


def _ip(*args: str) -> None:
    """Run `ip ARGS` (argv, no shell); raise with its stderr when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of every address of the root namespace."""
    done = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=20
    )
    nets: list[ipaddress.IPv4Network] = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    return nets


class NetNs:
    """A namespace `name`, a veth pair `host_if` (root side) / `peer_if` (inside)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name = f"hp-{tag}"
        self.host_if = f"hp{tag}h"  # interface names: 15 bytes at most
        self.peer_if = f"hp{tag}n"
        used = _used_networks()
        while True:
            net = ipaddress.IPv4Network(
                f"10.213.{random.randrange(256)}.{4 * random.randrange(64)}/30"
            )
            if not any(net.overlaps(u) for u in used):
                break
        self.host_ip = str(net.network_address + 1)
        self.peer_ip = str(net.network_address + 2)
        self._made = False

    @property
    def exec_prefix(self) -> list[str]:
        """The argv prefix that runs a command inside the namespace (`ip netns exec` execs it)."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> NetNs:
        """Make the namespace and the pair, addresses set, every link up."""
        if shutil.which("ip") is None:
            raise NetNsUnavailable("`ip` (iproute2) is not installed")
        done = subprocess.run(
            ["ip", "netns", "add", self.name], capture_output=True, text=True, timeout=20
        )
        if done.returncode != 0:
            raise NetNsUnavailable(
                "`ip netns add` is not permitted here (needs root: CAP_SYS_ADMIN and "
                f"CAP_NET_ADMIN): {done.stderr.strip()}"
            )
        self._made = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        _ip("link", "set", self.peer_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        inside = ["netns", "exec", self.name, "ip"]
        _ip(*inside, "addr", "add", f"{self.peer_ip}/30", "dev", self.peer_if)
        _ip(*inside, "link", "set", self.peer_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        return self

    def set_link(self, up: bool) -> None:
        """Take the root side of the pair down (the cut) or up again."""
        _ip("link", "set", self.host_if, "up" if up else "down")

    def delete(self) -> None:
        """Remove the pair (both ends go with one) and the namespace; never raises."""
        if not self._made:
            return
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            _ip("link", "del", self.host_if)
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            _ip("netns", "del", self.name)
        self._made = False
