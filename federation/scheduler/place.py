"""Placement: filter the regions, rank them, assign replicas; explain every region.

Data flow: (service spec, regions with free capacity, residency verdicts, current
placement) -> filter (residency, explicit allow-list, state, capacity) -> rank
(prefer, current, free capacity counting the service's own replicas, name) -> assign
-> Decision, whose explanation (one line per region) is built on first use.

Assignment keeps what can be kept: replicas stay in regions that are still eligible
(so a region coming back does not pull replicas home unless `failback: auto` or a
rebalance asks), then spreads new replicas over at least `min_regions` regions,
one region at a time in rank order, never past `max_per_region` or free capacity.
Replicas in a lost region stay assigned during `failover.grace_s`. A scale-down
takes replicas from the lowest-ranked regions first (lost regions lowest), without
going below `min_regions` regions while there are replicas enough.
Residency is a filter, never a score: nothing is placed in a rejected region,
whatever that costs in availability.

Cost: `place_all` shares one pool of regions between services and, for a service
with many candidate regions, walks a ranking of the regions by free capacity kept
across services, so a service costs about what it places, not O(regions). The
explanation, which is O(regions), is only built when read.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from federation.model.service import ServiceSpec

Outcome = Literal["chosen", "kept", "eligible", "rejected"]

# Reasons, as they appear in service conditions.
PLACED = "Placed"
NO_COMPLIANT_REGION = "NoCompliantRegion"
INSUFFICIENT_CAPACITY = "InsufficientCapacity"
SPREAD_UNSATISFIED = "SpreadUnsatisfied"
SCALED_TO_ZERO = "ScaledToZero"

# Up to this many candidate regions a service sorts them outright; above, it walks
# the pool's shared ranking. Both give the same order (tests check it).
_SORT_BELOW = 8

_NO_VERDICTS: Mapping[str, Verdict] = {}
_NO_REPLICAS: Mapping[str, int] = {}

# (preferred?, stays?, -free cpu counting own replicas, name): lower ranks first.
RankKey = tuple[int, int, float, str]


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """A region as the scheduler sees it. `cpu_free`/`memory_free` exclude every
    service's placed replicas; `unreachable_for` is seconds since the lease was lost."""

    name: str
    country: str | None
    labels: Mapping[str, str]
    state: Literal["ready", "unreachable", "cordoned"]
    cpu_free: float
    memory_free: int
    unreachable_for: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The residency verdict for one region (from `residency.evaluate`)."""

    allowed: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RegionChoice:
    """One line of the explanation: what happened to one region, and why."""

    region: str
    country: str | None
    outcome: Outcome
    replicas: int
    reasons: tuple[str, ...]
    compliant: bool = True


@dataclass(frozen=True, eq=False)
class Decision:
    """Replicas per region for one service, with the explanation of every region.

    `explanation` is the list of lines or a function that builds it; `regions` builds
    it on first use and keeps it. The inputs of `place` must not be changed while an
    unread explanation may still need them."""

    service: str
    placement: dict[str, int]
    desired: int
    reason: str
    message: str
    explanation: list[RegionChoice] | Callable[[], list[RegionChoice]] = field(
        default_factory=list, repr=False
    )
    # Known without building the explanation (None: derive them from it).
    allowed: frozenset[str] | None = field(default=None, repr=False)
    held: Mapping[str, int] | None = field(default=None, repr=False)

    @property
    def regions(self) -> list[RegionChoice]:
        """One line per region, sorted by region name."""
        lines = self.explanation
        if callable(lines):
            lines = lines()
            object.__setattr__(self, "explanation", lines)
        return lines

    @property
    def placed(self) -> int:
        return sum(self.placement.values())

    @property
    def allowed_regions(self) -> list[str]:
        """Regions residency allows, whatever their state or capacity (sorted)."""
        if self.allowed is not None:
            return sorted(self.allowed)
        return [c.region for c in self.regions if c.compliant]

    @property
    def kept(self) -> dict[str, int]:
        """Replicas left assigned in lost regions during their failover grace."""
        if self.held is not None:
            return dict(self.held)
        return {c.region: c.replicas for c in self.regions if c.outcome == "kept"}

    def _key(self) -> tuple[Any, ...]:
        return (self.service, self.placement, self.desired, self.reason, self.message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self._key() == other._key() and self.regions == other.regions

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Decision(service={self.service!r}, placement={self.placement!r}, "
            f"desired={self.desired!r}, reason={self.reason!r}, message={self.message!r})"
        )


def _fits(cpu_free: float, memory_free: int, spec: ServiceSpec) -> int:
    """How many replicas of `spec` fit into the given free capacity."""
    cpu = math.floor(cpu_free / spec.resources.cpu + 1e-9)
    mem = memory_free // spec.resources.memory_mb
    return max(0, min(cpu, mem))


class _Pool:
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


class _Service:
    """One service against a pool: its filters, room and rank per region."""

    def __init__(
        self,
        spec: ServiceSpec,
        pool: _Pool,
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
        room = _fits(
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


def _decide(
    spec: ServiceSpec,
    pool: _Pool,
    verdicts: Mapping[str, Verdict],
    current: Mapping[str, int],
    rebalance: bool,
) -> Decision:
    fresh = rebalance or spec.placement.failback == "auto"
    info = pool.info
    svc = _Service(spec, pool, pool.cpu, pool.mem, current, fresh)
    allowed = {n for n, v in verdicts.items() if v.allowed}
    allowed &= pool.names
    allow_list = set(spec.placement.regions)
    candidates = allowed & pool.ready
    if allow_list:
        candidates &= allow_list

    # Replicas left in lost regions within their grace (never more than max_per_region).
    kept: dict[str, int] = {}
    for name, here in current.items():
        if (
            here > 0
            and name in allowed
            and (not allow_list or name in allow_list)
            and info[name].state == "unreachable"
            and svc.grace(info[name]) is not None
        ):
            kept[name] = here if svc.limit is None else min(here, svc.limit)
    # Regions ranked ahead of or apart from the plain free-capacity order.
    special = {n for n in current if n in candidates and current[n] > 0}
    special |= svc.prefer & candidates

    def ranking() -> Iterator[tuple[RankKey, str]]:
        if len(candidates) <= _SORT_BELOW:
            yield from sorted((svc.rank(n), n) for n in candidates)
            return
        # Merge the few special regions into the pool's ranking of all the others.
        ahead = sorted((svc.rank(n), n) for n in special)
        plain = candidates - special
        i = 0
        for neg, name in pool.ranked:
            if name in plain:
                key = (1, 1, neg, name)
                while i < len(ahead) and ahead[i][0] < key:
                    yield ahead[i]
                    i += 1
                yield key, name
        yield from ahead[i:]

    stays = [] if fresh else sorted(n for n in current if n in candidates and current[n] > 0)
    target = _assign(spec, svc, kept, stays, ranking())
    placed = sum(target.values())
    reason, message = _outcome(spec, placed, target, allowed, bool(candidates))
    cpu_now, mem_now = pool.snapshot()
    # The explanation keeps its own copies of the small inputs; `verdicts` is shared.
    explain = partial(
        _explain, spec, pool, cpu_now, mem_now, verdicts, dict(current), fresh, dict(target)
    )
    held = {n: target[n] for n in kept if n in target}
    return Decision(
        spec.name, target, spec.replicas, reason, message, explain, pool.intern(allowed), held
    )


def _assign(
    spec: ServiceSpec,
    svc: _Service,
    kept: Mapping[str, int],
    stays: Sequence[str],
    ranking: Iterator[tuple[RankKey, str]],
) -> dict[str, int]:
    """Replicas per region: keep, scale down, then spread and fill in rank order."""
    target: dict[str, int] = dict(kept)
    caps: dict[str, int] = {}
    # The eligible regions in `target`, as (rank, name), in rank order.
    active: list[tuple[RankKey, str]] = []
    for name in stays:
        room = svc.room(name)
        if room >= 1:
            caps[name] = room
            target[name] = min(svc.current[name], room)
            active.append((svc.rank(name), name))
    active.sort()

    surplus = sum(target.values()) - spec.replicas
    if surplus > 0:
        # Lost regions rank lowest, then the eligible ones from the bottom up; keep
        # one replica per region while the spread needs it.
        wanted = min(spec.placement.min_regions, spec.replicas)
        lowest_first = sorted(kept, reverse=True) + [n for _, n in reversed(active)]
        for name in lowest_first:
            if surplus <= 0:
                break
            floor = 1 if len(target) <= wanted else 0
            take = min(surplus, target[name] - floor)
            if take > 0:
                target[name] -= take
                surplus -= take
                if target[name] == 0:
                    del target[name]
        return target

    def unused() -> Iterator[tuple[RankKey, str]]:
        for key, name in ranking:
            if name not in target:
                room = svc.room(name)
                if room >= 1:
                    caps[name] = room
                    yield key, name

    remaining = spec.replicas - sum(target.values())
    more = unused()
    # Reach min_regions first (one replica per new region), then round-robin.
    while remaining > 0 and len(target) < spec.placement.min_regions:
        nxt = next(more, None)
        if nxt is None:
            break
        target[nxt[1]] = 1
        bisect.insort(active, nxt)
        remaining -= 1
    while remaining > 0:
        open_ = [n for _, n in active if target[n] < caps[n]]
        if not open_:
            nxt = next(more, None)
            if nxt is None:
                break
            target[nxt[1]] = 0
            bisect.insort(active, nxt)
            continue
        for name in open_:
            if remaining == 0:
                break
            target[name] += 1
            remaining -= 1
    return {n: c for n, c in target.items() if c > 0}


def _outcome(
    spec: ServiceSpec,
    placed: int,
    target: Mapping[str, int],
    allowed: Collection[str],
    any_ready: bool,
) -> tuple[str, str]:
    if spec.replicas == 0:
        return SCALED_TO_ZERO, "replicas is 0"
    if placed < spec.replicas:
        short = f"{placed} of {spec.replicas} replicas placed"
        if not allowed:
            classes = ", ".join(spec.data_classes) or "public"
            return (
                NO_COMPLIANT_REGION,
                f"{short}: no region is allowed for data classes [{classes}]",
            )
        if not any_ready:
            return (
                NO_COMPLIANT_REGION,
                f"{short}: no allowed region is ready (allowed: {', '.join(sorted(allowed))})",
            )
        return (
            INSUFFICIENT_CAPACITY,
            f"{short}: allowed regions are full or at max_per_region",
        )
    wanted = min(spec.placement.min_regions, spec.replicas)
    if len(target) < wanted:
        return (
            SPREAD_UNSATISFIED,
            f"all {placed} replicas placed in {len(target)} region(s); "
            f"min_regions is {spec.placement.min_regions}",
        )
    return PLACED, f"{placed} replicas in {len(target)} region(s)"


def _explain(
    spec: ServiceSpec,
    pool: _Pool,
    cpu_free: Sequence[float],
    memory_free: Sequence[int],
    verdicts: Mapping[str, Verdict],
    current: Mapping[str, int],
    fresh: bool,
    target: Mapping[str, int],
) -> list[RegionChoice]:
    """One line per region for a decision already taken, from the capacity it saw."""
    cpu = dict(zip(pool.info, cpu_free, strict=True))
    mem = dict(zip(pool.info, memory_free, strict=True))
    svc = _Service(spec, pool, cpu, mem, current, fresh)
    res = spec.resources
    allow_list = set(spec.placement.regions)
    lines: dict[str, RegionChoice] = {}
    rooms: dict[str, int] = {}
    for name, region in pool.info.items():
        verdict = verdicts.get(name)

        def rejected(*why: str, compliant: bool = True) -> RegionChoice:
            return RegionChoice(name, region.country, "rejected", 0, why, compliant)  # noqa: B023

        if verdict is None or not verdict.allowed:
            why = verdict.reasons if verdict else ("no residency verdict for this region",)
            lines[name] = rejected("residency: " + "; ".join(why), compliant=False)
        elif allow_list and name not in allow_list:
            lines[name] = rejected("not in placement.regions")
        elif region.state == "unreachable":
            here = current.get(name, 0)
            grace = svc.grace(region) if here > 0 else None
            if grace is None:
                lines[name] = rejected("unreachable: region lease expired")
            elif target.get(name, 0) > 0:
                count = target[name]
                lines[name] = RegionChoice(
                    name,
                    region.country,
                    "kept",
                    count,
                    (f"unreachable; {count} replica(s) left in place: {grace}",),
                )
            else:
                lines[name] = rejected(
                    f"unreachable; its {here} replica(s) dropped by a scale-down"
                )
        elif region.state == "cordoned":
            lines[name] = rejected("cordoned")
        else:
            room = svc.room(name)
            if room < 1:
                lines[name] = rejected(
                    f"insufficient capacity: a replica needs cpu {res.cpu:g}, "
                    f"memory {res.memory_mb} MB; free cpu {cpu[name]:g}, memory {mem[name]} MB"
                )
            else:
                rooms[name] = room
    order = sorted(rooms, key=svc.rank)
    for position, name in enumerate(order, 1):
        country = pool.info[name].country
        if target.get(name, 0) > 0:
            chosen = f"allowed; rank {position}; room for {rooms[name]} replica(s)"
            lines[name] = RegionChoice(name, country, "chosen", target[name], (chosen,))
        else:
            spare = f"allowed; rank {position}; not needed"
            lines[name] = RegionChoice(name, country, "eligible", 0, (spare,))
    return [lines[name] for name in pool.info]


def place(
    spec: ServiceSpec,
    regions: Sequence[RegionInfo],
    verdicts: Mapping[str, Verdict],
    current: Mapping[str, int],
    *,
    rebalance: bool = False,
) -> Decision:
    """Decide how many replicas of `spec` run in which region. Pure and deterministic:
    the same inputs give the same decision, whatever their order."""
    return _decide(spec, _Pool(regions), verdicts, current, rebalance)


def place_all(
    specs: Sequence[ServiceSpec],
    regions: Sequence[RegionInfo],
    verdicts: Mapping[str, Mapping[str, Verdict]],
    current: Mapping[str, Mapping[str, int]],
    *,
    rebalance: frozenset[str] = frozenset(),
) -> dict[str, Decision]:
    """Place many services against one shared pool of free capacity.

    `regions` carry free capacity net of every service's *current* placement; each
    service gets its own usage back while it is placed, and what it takes is
    charged before the next. Services already placed go first, so a newcomer cannot
    evict them; within that, by name, so the result is deterministic.
    """
    pool = _Pool(regions)
    decisions: dict[str, Decision] = {}
    ordered = sorted(specs, key=lambda s: (0 if current.get(s.name) else 1, s.name))
    for spec in ordered:
        mine = current.get(spec.name, _NO_REPLICAS)
        decision = _decide(
            spec, pool, verdicts.get(spec.name, _NO_VERDICTS), mine, spec.name in rebalance
        )
        decisions[spec.name] = decision
        cpu, memory = spec.resources.cpu, spec.resources.memory_mb
        for name in mine.keys() | decision.placement.keys():
            delta = decision.placement.get(name, 0) - mine.get(name, 0)
            if delta:
                pool.charge(name, delta * cpu, delta * memory)
    return decisions
