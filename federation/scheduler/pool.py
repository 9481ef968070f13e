"""Free capacity as the services of one scheduling call take it, and one service's
view of it: how many replicas fit in a region, how the region ranks, and whether its
replicas stay during a failover grace.

Both the placement (`scheduler.place`) and the explanation (`scheduler.explain`)
read regions through these, so the two cannot disagree on room or rank.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Mapping, Sequence

from federation.model.allowlist import admits_command
from federation.model.service import ServiceSpec
from federation.scheduler.decision import RegionInfo

# (preferred?, stays?, -free cpu counting own replicas, name): lower ranks first.
RankKey = tuple[int, int, float, str]


def fits(cpu_free: float, memory_free: int, spec: ServiceSpec) -> int:
    """How many replicas of `spec` fit into the given free capacity."""
    cpu = math.floor(cpu_free / spec.resources.cpu + 1e-9)
    mem = memory_free // spec.resources.memory_mb
    return max(0, min(cpu, mem))


class Pool:
    """The regions and their free capacity, shared by the services of one call.

    `ranked` holds (-cpu free, name) for the ready regions, sorted, and follows every
    charge, so a service can take the roomiest regions without sorting them all."""

    def __init__(self, regions: Sequence[RegionInfo]) -> None:
        by_name = {r.name: r for r in regions}
        self.info = {name: by_name[name] for name in sorted(by_name)}
        self.cpu = {name: r.cpu_free for name, r in self.info.items()}
        self.mem = {name: r.memory_free for name, r in self.info.items()}
        self.names = frozenset(self.info)
        self.ready = frozenset(n for n, r in self.info.items() if r.state == "ready")
        self.ranked = sorted((-self.cpu[n], n) for n in self.ready)
        # Regions with an allowlist: only these need the service's command judged.
        self.restricted = {
            n: r.allow_exec for n, r in self.info.items() if r.allow_exec is not None
        }
        self._labelled: dict[tuple[tuple[str, str], ...], frozenset[str]] = {}
        self._snapshot: tuple[tuple[float, ...], tuple[int, ...]] | None = None
        self._interned: dict[frozenset[str], frozenset[str]] = {}

    def labelled(self, labels: Mapping[str, str]) -> frozenset[str]:
        """Regions carrying every one of `labels`."""
        key = tuple(sorted(labels.items()))
        found = self._labelled.get(key)
        if found is None:
            found = frozenset(
                n for n, r in self.info.items() if all(r.labels.get(k) == v for k, v in key)
            )
            self._labelled[key] = found
        return found

    def refusing(self, command: Sequence[str] | None) -> frozenset[str]:
        """Regions whose allowlist does not admit `command`."""
        return frozenset(
            n for n, allow in self.restricted.items() if not admits_command(command, allow)
        )

    def intern(self, names: Collection[str]) -> frozenset[str]:
        """One shared frozenset per distinct set (services mostly share a few)."""
        key = frozenset(names)
        return self._interned.setdefault(key, key)

    def charge(self, name: str, cpu: float, memory: int) -> None:
        """Take capacity from a region (give it back with negative amounts)."""
        if name not in self.info:
            return
        old = self.cpu[name]
        self.cpu[name] = old - cpu
        self.mem[name] -= memory
        if name in self.ready:
            del self.ranked[bisect.bisect_left(self.ranked, (-old, name))]
            bisect.insort(self.ranked, (-self.cpu[name], name))
        self._snapshot = None

    def snapshot(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """Free cpu and memory now, in the order of `info` (shared until the next charge)."""
        if self._snapshot is None:
            self._snapshot = (tuple(self.cpu.values()), tuple(self.mem.values()))
        return self._snapshot


class ServiceFit:
    """One service against a pool: its filters, room and rank per region."""

    def __init__(
        self,
        spec: ServiceSpec,
        pool: Pool,
        cpu: Mapping[str, float],
        mem: Mapping[str, int],
        current: Mapping[str, int],
        fresh: bool,
    ) -> None:
        self.spec = spec
        self.cpu = cpu
        self.mem = mem
        self.current = current
        self.fresh = fresh
        self.limit = spec.placement.max_per_region
        prefer = set(spec.placement.prefer)
        if spec.placement.prefer_labels:
            prefer |= pool.labelled(spec.placement.prefer_labels)
        self.prefer = prefer

    def room(self, name: str) -> int:
        """Replicas that fit in `name`, counting this service's own replicas as free."""
        here = self.current.get(name, 0)
        res = self.spec.resources
        room = fits(
            self.cpu[name] + here * res.cpu, self.mem[name] + here * res.memory_mb, self.spec
        )
        return room if self.limit is None else min(room, self.limit)

    def rank(self, name: str) -> RankKey:
        here = self.current.get(name, 0)
        return (
            0 if name in self.prefer else 1,
            0 if here > 0 and not self.fresh else 1,
            -(self.cpu[name] + here * self.spec.resources.cpu),
            name,
        )

    def grace(self, region: RegionInfo) -> str | None:
        """Why replicas in this lost region stay assigned, or None when they move."""
        failover = self.spec.failover
        if not failover.enabled:
            return "failover disabled"
        lost = region.unreachable_for or 0.0
        if lost < failover.grace_s:
            return f"within failover grace ({lost:.1f} s of {failover.grace_s:g} s)"
        return None
