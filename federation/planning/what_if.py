"""The what-if of a drill (pure): cordon the target regions in a copy of the world and
run the controller's own planner on it.

Because it is the controller's `plan()`, capacity is counted across all services at
once, in the controller's order: two services cannot both claim the last free CPUs
of a region. Every service with replicas in a target region is classified:
`recoverable` (all replicas placed elsewhere, spread satisfied), `degraded` (some
placed, or all but with less spread than `min_regions`), `unrecoverable` (none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from federation.model.drill import DrillPlan, Outcome, ServiceOutcome
from federation.model.region import Cordon
from federation.planning.plan import plan
from federation.planning.world import World
from federation.scheduler import PLACED, SCALED_TO_ZERO


def in_targets(world: World, service: str, targets: Sequence[str]) -> dict[str, int]:
    """Replicas of `service` the controller has placed (or is draining) in `targets`."""
    placed = world.placements.get(service)
    if placed is None:
        return {}
    record = placed[0]
    found: dict[str, int] = {}
    for region in targets:
        count = record.regions.get(region, 0)
        drain = record.draining.get(region)
        count += drain.replicas if drain else 0
        if count > 0:
            found[region] = count
    return found


def cordoned(world: World, targets: Sequence[str], now: datetime, *, by: str) -> World:
    """A copy of `world` in which the target regions are cordoned (the rest shared)."""
    regions = dict(world.regions)
    for name in targets:
        record = regions[name]
        if record.cordon is None:
            cordon = Cordon(by=by, reason="what-if", at=now)
            regions[name] = record.model_copy(update={"cordon": cordon})
    return dataclasses.replace(world, regions=regions)


def what_if(
    world: World,
    targets: Sequence[str],
    now: datetime,
    *,
    region_ttl: float,
    by: str = "drill:plan",
) -> DrillPlan:
    """Classify every service with replicas in `targets` if those regions were
    cordoned now. Changes nothing; the same world and `now` give the same plan."""
    unknown = [t for t in targets if t not in world.regions]
    if unknown:
        raise KeyError(unknown[0])
    plans = plan(cordoned(world, targets, now, by=by), now, region_ttl=region_ttl)
    outcomes: list[ServiceOutcome] = []
    unaffected = 0
    for name in sorted(world.services):
        taken = in_targets(world, name, targets)
        p = plans[name]
        decision = p.decision
        if not taken or decision is None or decision.reason == SCALED_TO_ZERO:
            unaffected += 1
            continue
        to = {r: n for r, n in sorted(decision.placement.items()) if r not in targets}
        placed = sum(to.values())
        outcome: Outcome
        if placed == 0:
            outcome = "unrecoverable"
        elif placed < decision.desired or decision.reason != PLACED:
            outcome = "degraded"
        else:
            outcome = "recoverable"
        why: dict[str, list[str]] = {}
        if outcome != "recoverable":
            # Every region, as the scheduler saw it: the operator's "why not more?".
            why = {
                c.region: [f"{c.outcome} ({c.replicas})" if c.replicas else c.outcome, *c.reasons]
                for c in decision.regions
            }
        outcomes.append(
            ServiceOutcome(
                service=name,
                outcome=outcome,
                replicas=decision.desired,
                in_targets=taken,
                to=to,
                placed=placed,
                reason=decision.reason,
                message=decision.message,
                allowed_regions=decision.allowed_regions,
                why=why,
            )
        )
    return DrillPlan(regions=list(targets), at=now, services=outcomes, unaffected=unaffected)
