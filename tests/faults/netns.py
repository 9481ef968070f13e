"""Hosts as Linux network namespaces, for partitions between live processes.

Each etcd member, server and region agent gets a namespace of its own (`fedf-NAME`)
with one veth pair to a bridge (`fedf-br`) in the host namespace; addresses are taken
from 10.231.0.0/24, used nowhere but here (the bridge is .1, so the test process
reaches every host, as a client would). Processes run inside with `ip netns exec`.

Faults, all reversible:
- `isolate(h)`: h's link taken down (host side): h is cut from everything, its
  packets vanish silently, and it stays alive: a region that lost its WAN uplink.
- `cut(a, b)`: blackhole routes on both sides: a and b no longer reach each other,
  everyone else still reaches both (a server cut from etcd, clients still on it).

What this kernel lacks: `sch_netem` (and every tc classifier and action), so there is
no packet delay, jitter or loss here; `latency.py` adds delay as a TCP relay instead.

One run at a time holds `LOCK`; a run starts by removing whatever a crashed earlier
run left (its namespaces, their processes, the bridge), and `close()` removes all it
made, also when the test failed. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PREFIX = "fedf-"
BRIDGE = "fedf-br"
SUBNET = "10.231.0"
LOCK = Path("/run/federation-netfaults.lock")


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None. iproute2 is a system package:
    installed here when missing and we are root (as the bubblewrap fixture does)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        install = ["apt-get", "install", "-y", "--no-install-recommends", "iproute2"]
        # A fresh machine may have no package lists yet: update once, then try again.
        for argv in (install, ["apt-get", "update"], install):
            subprocess.run(argv, check=False, capture_output=True, timeout=300)
            if argv is install and shutil.which("ip") is not None:
                break
    if shutil.which("ip") is None:
        return "network namespaces need iproute2 (`ip`)"
    return None


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; its output."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address on the bridge, the host side of its veth."""

    name: str
    ns: str
    address: str
    veth: str

    def wrap(self) -> list[str]:
        """The argv prefix that runs a command inside this host."""
        return ["ip", "netns", "exec", self.ns]


@dataclass
class Network:
    """The namespaces of one test; see the module docstring."""

    hosts: dict[str, Host] = field(default_factory=dict)
    _cuts: set[tuple[str, str]] = field(default_factory=set)
    _lock: IO[str] | None = None

    def open(self) -> None:
        """Take the lock, remove a crashed run's leftovers, make the bridge."""
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(LOCK, "w")  # noqa: SIM115 - held until close()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        remove_leftovers()
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")

    def add(self, name: str) -> Host:
        """A new namespace `name` on the bridge, its loopback and link up."""
        index = len(self.hosts) + 10
        host = Host(name, f"{PREFIX}{name}", f"{SUBNET}.{index}", f"{PREFIX}v{index}")
        ip("netns", "add", host.ns)
        self.hosts[name] = host
        ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        ip("link", "set", host.veth, "master", BRIDGE, "up")
        ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    def isolate(self, host: Host) -> None:
        """Take `host`'s link down: nothing reaches it, nothing leaves it."""
        ip("link", "set", host.veth, "down")

    def rejoin(self, host: Host) -> None:
        ip("link", "set", host.veth, "up")

    def cut(self, a: Host, b: Host) -> None:
        """`a` and `b` no longer reach each other (both directions)."""
        for one, other in ((a, b), (b, a)):
            ip("-n", one.ns, "route", "add", "blackhole", f"{other.address}/32")
            self._cuts.add((one.ns, other.address))

    def heal(self, a: Host, b: Host) -> None:
        for one, other in ((a, b), (b, a)):
            if (one.ns, other.address) in self._cuts:
                ip("-n", one.ns, "route", "del", "blackhole", f"{other.address}/32")
                self._cuts.discard((one.ns, other.address))

    def heal_all(self) -> None:
        for ns, address in list(self._cuts):
            ip("-n", ns, "route", "del", "blackhole", f"{address}/32", check=False)
        self._cuts.clear()
        for host in self.hosts.values():
            self.rejoin(host)

    def close(self) -> None:
        """Remove every namespace and the bridge (processes inside are killed)."""
        try:
            remove_leftovers()
        finally:
            self.hosts.clear()
            if self._lock is not None:
                self._lock.close()
                self._lock = None


def remove_leftovers() -> None:
    """Kill what runs in our namespaces and delete them, their veths and the bridge."""
    for line in ip("netns", "list", check=False).splitlines():
        ns = line.split()[0] if line.split() else ""
        if not ns.startswith(PREFIX):
            continue
        for pid in ip("netns", "pids", ns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "del", ns, check=False)
    for line in ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(": ")
        if len(parts) > 1 and parts[1].split("@")[0].startswith(PREFIX):
            ip("link", "del", parts[1].split("@")[0], check=False)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A `Network`, removed whole afterwards whatever happened."""
    net = Network()
    try:
        net.open()
        yield net
    finally:
        net.close()
