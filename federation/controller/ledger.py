"""What the controller keeps about every service between passes, so a pass can plan
only the services that changed and still see the whole world's capacity and counts.

Per service, one small frozen record: the resources its placement holds per region
(placed plus draining replicas), its phase, and the rejection kinds of its residency
evaluation. The totals (capacity used per region, services per phase, rejections per
kind) are kept up to date as records are replaced, and rebuilt from scratch on every
full pass, so float drift and anything missed cannot last.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from federation.model.service import PlacementRecord


@dataclass(frozen=True, slots=True)
class Held:
    """One service as the last pass left it."""

    cpu: float
    memory_mb: int
    regions: tuple[tuple[str, int], ...]  # region -> replicas held (placed + draining)
    phase: str = ""
    rejected: tuple[str, ...] = ()  # one rejection kind per region residency rejects
    waiting: bool = False  # wants replicas it could not get (capacity may free up)

    def count_in(self, region: str) -> int:
        return next((n for r, n in self.regions if r == region), 0)


def holding(placement: PlacementRecord | None) -> tuple[tuple[str, int], ...]:
    """Replicas a placement holds per region, draining ones included."""
    if placement is None:
        return ()
    counts = dict(placement.regions)
    for region, drain in placement.draining.items():
        counts[region] = counts.get(region, 0) + drain.replicas
    return tuple(sorted((r, n) for r, n in counts.items() if n))


class Ledger:
    """Every service's `Held` record, and the totals over them."""

    def __init__(self) -> None:
        self.held: dict[str, Held] = {}
        self.cpu_used: defaultdict[str, float] = defaultdict(float)
        self.memory_used: Counter[str] = Counter()
        self.phases: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        # Shared copies of the tuples: 100,000 services mostly hold the same few.
        self._interned: dict[object, object] = {}

    def _intern(self, value: tuple[object, ...]) -> tuple[object, ...]:
        return self._interned.setdefault(value, value)  # type: ignore[return-value]

    def put(self, name: str, held: Held) -> bool:
        """Record `held` for `name`; True when it holds less than before (capacity freed)."""
        held = Held(
            held.cpu,
            held.memory_mb,
            self._intern(held.regions),  # type: ignore[arg-type]
            held.phase,
            self._intern(held.rejected),  # type: ignore[arg-type]
            held.waiting,
        )
        old = self.held.get(name)
        self._remove(old)
        self.held[name] = held
        for region, n in held.regions:
            self.cpu_used[region] += n * held.cpu
            self.memory_used[region] += n * held.memory_mb
        if held.phase:
            self.phases[held.phase] += 1
        for kind in held.rejected:
            self.rejections[kind] += 1
        return _freed(old, held)

    def drop(self, name: str) -> bool:
        """Forget `name` (deleted); True when it held capacity."""
        old = self.held.pop(name, None)
        self._remove(old)
        return _freed(old, None)

    def _remove(self, old: Held | None) -> None:
        if old is None:
            return
        for region, n in old.regions:
            self.cpu_used[region] -= n * old.cpu
            self.memory_used[region] -= n * old.memory_mb
        if old.phase:
            self.phases[old.phase] -= 1
        for kind in old.rejected:
            self.rejections[kind] -= 1

    def reset(self, entries: Iterable[tuple[str, Held]]) -> None:
        """Start again from `entries` (a full pass's view of every service)."""
        self.held = {}
        self.cpu_used = defaultdict(float)
        self.memory_used = Counter()
        self.phases = Counter()
        self.rejections = Counter()
        self._interned = {}
        for name, held in entries:
            self.put(name, held)

    def placed_in(self, region: str) -> set[str]:
        """Services holding replicas in `region`."""
        return {name for name, h in self.held.items() if any(r == region for r, _ in h.regions)}

    def waiting(self) -> set[str]:
        """Services that want replicas they could not get."""
        return {name for name, h in self.held.items() if h.waiting}


def _freed(old: Held | None, new: Held | None) -> bool:
    """Does `new` hold less cpu or memory than `old` in some region?"""
    if old is None:
        return False
    for region, n in old.regions:
        m = new.count_in(region) if new is not None else 0
        cpu = new.cpu if new is not None else 0.0
        memory = new.memory_mb if new is not None else 0
        if m * cpu < n * old.cpu or m * memory < n * old.memory_mb:
            return True
    return False
