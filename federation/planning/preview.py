"""What a service change would do, decided now and written nowhere: the dry run of
`PUT /v1/services/{s}?dry_run=true`, and the rows the explain view shares with it.

Pure: it plans a copy of the world in which the stored spec is replaced by the
candidate, with the same `plan` the controller runs, so the answer is what the
controller would decide from the same state a moment later.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from federation.model.service import Runtime, ServiceRecord, ServiceSpec
from federation.planning.plan import ServicePlan, Used, plan
from federation.planning.world import World

JSON = dict[str, Any]


_ABSENT: Any = object()  # a key one side lacks: unlike a key that is there with null


def field_changes(before: Any, after: Any, path: str = "") -> list[JSON]:
    """Every leaf that differs between two JSON values, as `{"field", "from", "to"}`
    with a dotted path (`resources.cpu`, `command[1]`). A key only one side has is
    shown with None on the other; a list that changes length is one change."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[JSON] = []
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            changes += field_changes(before.get(key, _ABSENT), after.get(key, _ABSENT), sub)
        return changes
    if (
        isinstance(before, list)
        and isinstance(after, list)
        and len(before) == len(after)
        and before != after
    ):
        changes = []
        for i, (was, will) in enumerate(zip(before, after, strict=True)):
            changes += field_changes(was, will, f"{path}[{i}]")
        return changes
    if before is not _ABSENT and after is not _ABSENT and before == after:
        return []
    return [
        {
            "field": path,
            "from": None if before is _ABSENT else before,
            "to": None if after is _ABSENT else after,
        }
    ]


def region_rows(p: ServicePlan) -> list[JSON]:
    """Every region: chosen or rejected, with the scheduler's and residency's reasons."""
    assert p.decision is not None and p.evaluation is not None
    verdicts = {v.region: v for v in p.evaluation.verdicts}
    rows: list[JSON] = []
    for choice in p.decision.regions:
        verdict = verdicts.get(choice.region)
        rows.append(
            {
                "region": choice.region,
                "country": choice.country,
                "outcome": choice.outcome,
                "allowed": bool(verdict and verdict.allowed),
                "replicas": choice.replicas,
                "reasons": list(choice.reasons),
                "residency": list(verdict.reasons) if verdict else [],
            }
        )
    return rows


def _rollout_steps(world: World, spec: ServiceSpec, generation: int, p: ServicePlan) -> list[JSON]:
    """The waves a new runtime would reach the regions in: regions already running
    another version move `max_parallel_regions` at a time, each after the one before
    reports ready; regions new to the service start on the new version at once."""
    assert p.decision is not None
    target = Runtime.of(spec, generation).rollout_key()
    fresh, behind = [], []
    for region in sorted(p.decision.placement):
        held = world.assignments.get((region, spec.name))
        if held is None or held.draining:
            fresh.append(region)
        elif held.runtime.rollout_key() != target:
            behind.append(region)
    steps: list[JSON] = []
    if fresh:
        steps.append({"step": 1, "regions": fresh, "action": "start", "waits_for": None})
    width = spec.rollout.max_parallel_regions
    for start in range(0, len(behind), width):
        steps.append(
            {
                "step": len(steps) + 1,
                "regions": behind[start : start + width],
                "action": f"roll to version {spec.version}",
                "waits_for": "the step before reports ready" if steps else None,
            }
        )
    return steps


def preview(
    world: World,
    spec: ServiceSpec,
    now: datetime,
    *,
    region_ttl: float,
    used: Used | None = None,
) -> JSON:
    """The answer to a dry run of `spec`: the change (create, update or none) with its
    field-level diff against the stored spec, the placement the scheduler would decide
    now (from and to, every region chosen or rejected and why) and the rollout steps.
    `world` holds at least this service's stored record, placement and assignments (or
    none of them, for a new service); it is not modified."""
    stored = world.services.get(spec.name)
    before = stored[0].spec.model_dump(mode="json") if stored else None
    after = spec.model_dump(mode="json")
    generation = stored[0].generation if stored else 0
    changed = stored is None or stored[0].spec != spec
    candidate = ServiceRecord(
        spec=spec,
        generation=generation + 1 if changed else generation,
        created_at=stored[0].created_at if stored else now,
        updated_at=now,
    )
    services = dict(world.services)
    services[spec.name] = (candidate, stored[1] if stored else 0)
    p = plan(replace(world, services=services), now, region_ttl=region_ttl, used=used)[spec.name]
    assert p.decision is not None and p.evaluation is not None
    current, _ = world.placements.get(spec.name, (None, 0))
    return {
        "service": spec.name,
        "change": "create" if stored is None else "update" if changed else "none",
        "generation": {"from": generation or None, "to": candidate.generation},
        "diff": field_changes(before, after) if before is not None else [],
        "placement": {
            "from": dict(current.regions) if current else {},
            "to": dict(p.record.regions),
            "draining": {r: d.replicas for r, d in p.record.draining.items()},
            "reason": p.decision.reason,
            "message": p.decision.message,
        },
        "data_classes": p.evaluation.data_classes,
        "bound_policies": p.evaluation.bound_policies,
        "regions": region_rows(p),
        "rollout": _rollout_steps(world, spec, candidate.generation, p) if changed else [],
    }
