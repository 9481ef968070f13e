"""Placement: filter the regions, rank them, assign replicas; explain every region.

Data flow: (service spec, regions with free capacity, residency verdicts, current
placement) -> filter (residency, explicit allow-list, the region's --allow-exec,
state, capacity) -> rank
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
from collections.abc import Collection, Iterator, Mapping, Sequence
from functools import partial

from federation.model.service import ServiceSpec
from federation.scheduler.decision import (
    COMMAND_NOT_ALLOWED,
    INSUFFICIENT_CAPACITY,
    NO_COMPLIANT_REGION,
    PLACED,
    SCALED_TO_ZERO,
    SPREAD_UNSATISFIED,
    Decision,
    RegionInfo,
    Verdict,
)
from federation.scheduler.explain import explain
from federation.scheduler.pool import Pool, RankKey, ServiceFit

# Up to this many candidate regions a service sorts them outright; above, it walks
# the pool's shared ranking. Both give the same order (tests check it).
_SORT_BELOW = 8

_NO_VERDICTS: Mapping[str, Verdict] = {}
_NO_REPLICAS: Mapping[str, int] = {}


def _decide(
    spec: ServiceSpec,
    pool: Pool,
    verdicts: Mapping[str, Verdict],
    current: Mapping[str, int],
    rebalance: bool,
) -> Decision:
    fresh = rebalance or spec.placement.failback == "auto"
    info = pool.info
    svc = ServiceFit(spec, pool, pool.cpu, pool.mem, current, fresh)
    allowed = {n for n, v in verdicts.items() if v.allowed}
    allowed &= pool.names
    allow_list = set(spec.placement.regions)
    candidates = allowed & pool.ready
    if allow_list:
        candidates &= allow_list
    # The region owner's allowlist is a filter like residency: never placed where the
    # agent would refuse to start the command.
    refusing = pool.refusing(spec.command) if pool.restricted else frozenset()
    candidates -= refusing

    # Replicas left in lost regions within their grace (never more than max_per_region).
    kept: dict[str, int] = {}
    for name, here in current.items():
        if (
            here > 0
            and name in allowed
            and name not in refusing
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
    reason, message = _outcome(
        spec, placed, target, allowed, bool(candidates), refusing & allowed & pool.ready
    )
    cpu_now, mem_now = pool.snapshot()
    # The explanation keeps its own copies of the small inputs; `verdicts` is shared.
    lines = partial(
        explain, spec, pool, cpu_now, mem_now, verdicts, dict(current), fresh, dict(target)
    )
    held = {n: target[n] for n in kept if n in target}
    return Decision(
        spec.name, target, spec.replicas, reason, message, lines, pool.intern(allowed), held
    )


def _assign(
    spec: ServiceSpec,
    svc: ServiceFit,
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
    refusing: Collection[str] = (),
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
        if not any_ready and refusing:
            shown = " ".join(spec.command) if spec.command else "(no command)"
            return (
                COMMAND_NOT_ALLOWED,
                f"{short}: command not allowed in region(s) {', '.join(sorted(refusing))}: {shown}",
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
    return _decide(spec, Pool(regions), verdicts, current, rebalance)


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
    pool = Pool(regions)
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
