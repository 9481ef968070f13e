"""Service status: the placement joined with what regions report, as users read it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from federation.model.service import (
    Assignment,
    Condition,
    Phase,
    PlacementRecord,
    ServiceRecord,
    ServiceReport,
)


def _ready(report: ServiceReport | None, generation: int) -> int:
    return report.ready_count(generation) if report is not None else 0


NO_COMPLIANT_FAILOVER_REGION = "NoCompliantFailoverRegion"
COMMAND_NOT_ALLOWED = "CommandNotAllowed"
SECRET_WITHHELD = "SecretWithheld"


def _refused(report: ServiceReport | None) -> str | None:
    return report.refused if report is not None else None


def _withheld(report: ServiceReport | None) -> str | None:
    return report.withheld if report is not None else None


def survivability(allowed_regions: Sequence[str]) -> Condition | None:
    """The condition of a service that residency confines to one region: it cannot
    survive the loss of that region. None when it can (or when nowhere is allowed,
    which `NoCompliantRegion` already says)."""
    if len(allowed_regions) != 1:
        return None
    return Condition(
        type="Survivability",
        reason=NO_COMPLIANT_FAILOVER_REGION,
        message=(
            f"residency allows only {allowed_regions[0]}: the service cannot fail over "
            "if that region is lost"
        ),
    )


def _phase(
    record: ServiceRecord, placement: PlacementRecord, ready_total: int, lost: bool
) -> Phase:
    spec = record.spec
    rollout = placement.rollout
    placed = sum(placement.regions.values())
    if (
        rollout is not None
        and rollout.to_generation == record.generation
        and rollout.state in ("failed", "rolled_back")
    ):
        return Phase.FAILED
    if placement.generation != record.generation:
        # The controller has not acted on this spec yet: the placement shown is the
        # previous generation's, so it says nothing about health (a scale-up is not
        # Degraded, a scale to zero is not Running yet).
        return Phase.DEGRADED if lost else Phase.PROGRESSING
    if spec.replicas == 0:
        return Phase.RUNNING
    if placed == 0:
        return Phase.PENDING
    if placed < spec.replicas or lost:
        return Phase.DEGRADED
    if (
        ready_total < spec.replicas
        or placement.draining
        or (rollout is not None and rollout.state == "progressing")
    ):
        return Phase.PROGRESSING
    return Phase.RUNNING


def service_phase(
    record: ServiceRecord,
    placement: PlacementRecord | None,
    assignments: Mapping[str, Assignment],
    reports: Mapping[str, ServiceReport],
    alive: Set[str],
) -> Phase:
    """The phase `service_status` shows, without building the rest of the status
    (the controller counts services by phase on every pass)."""
    if placement is None:
        return Phase.PENDING if record.spec.replicas else Phase.RUNNING
    ready_total = 0
    lost = False
    for region, a in assignments.items():
        if a.draining:
            continue
        if region in alive:
            ready_total += _ready(reports.get(region), a.runtime.generation)
        else:
            lost = True
    return _phase(record, placement, ready_total, lost)


def service_status(
    record: ServiceRecord,
    placement: PlacementRecord | None,
    assignments: Mapping[str, Assignment],
    reports: Mapping[str, ServiceReport],
    alive: Set[str],
) -> dict[str, Any]:
    """Phase, per-region desired/ready/version, conditions and residency evidence.
    `reports`: what each region reports of this service."""
    spec = record.spec
    regions: dict[str, dict[str, Any]] = {}
    for region, a in sorted(assignments.items()):
        ready = _ready(reports.get(region), a.runtime.generation)
        regions[region] = {
            "desired": a.replicas,
            # A lost region's last report is not evidence that anything runs there now.
            "ready": ready if region in alive else 0,
            "version": a.runtime.version,
            "draining": a.draining,
            "reachable": region in alive,
        }
    active = {r: v for r, v in regions.items() if not v["draining"]}
    ready_total = sum(v["ready"] for v in active.values())
    conditions: list[Condition] = []
    if placement is None:
        phase = Phase.PENDING if spec.replicas else Phase.RUNNING
        conditions.append(
            Condition(
                type="Scheduled", reason="Waiting", message="not yet placed by the controller"
            )
        )
    else:
        conditions.append(
            Condition(type="Scheduled", reason=placement.reason, message=placement.message)
        )
        rollout = placement.rollout
        if rollout is not None and rollout.to_generation == record.generation:
            reason = {
                "progressing": "RolloutProgressing",
                "complete": "RolloutComplete",
                "failed": "RolloutFailed",
                "rolled_back": "RolloutFailed",
            }[rollout.state]
            message = rollout.message or f"{rollout.from_version} -> {rollout.to_version}"
            if rollout.state == "rolled_back":
                message += f"; rolled back to {rollout.from_version}"
            conditions.append(Condition(type="Rollout", reason=reason, message=message))
        lost = [r for r, v in active.items() if not v["reachable"]]
        if lost:
            conditions.append(
                Condition(
                    type="Available",
                    reason="RegionUnreachable",
                    message=f"replicas left in unreachable region(s): {', '.join(lost)}",
                )
            )
        refused = [
            (r, m)
            for r in sorted(active)
            if r in alive and (m := _refused(reports.get(r))) is not None
        ]
        if refused:
            conditions.append(
                Condition(
                    type="Runnable",
                    reason=COMMAND_NOT_ALLOWED,
                    message="; ".join(m for _, m in refused),
                )
            )
        withheld = [
            f"{r}: {m}"
            for r in sorted(regions)
            if r in alive and (m := _withheld(reports.get(r))) is not None
        ]
        if withheld:
            conditions.append(
                Condition(type="Secrets", reason=SECRET_WITHHELD, message="; ".join(withheld))
            )
        phase = _phase(record, placement, ready_total, bool(lost))
    evidence = placement.evidence if placement else None
    allowed = set(evidence.allowed_regions) if evidence else set()
    single = survivability(sorted(allowed)) if spec.replicas else None
    if single is not None:
        conditions.append(single)
    return {
        "phase": phase.value,
        "observed_generation": placement.generation if placement else 0,
        "replicas": {"desired": spec.replicas, "ready": ready_total},
        "placements": {
            r: {k: v[k] for k in ("desired", "ready", "version", "draining")}
            for r, v in regions.items()
        },
        "conditions": [c.model_dump() for c in conditions],
        "residency": {
            "compliant": all(r in allowed for r in active)
            and not (placement and placement.draining),
            "allowed_regions": sorted(allowed),
            "policies": dict(evidence.policies) if evidence else {},
            "countries": dict(evidence.countries) if evidence else {},
        },
        "decided_at": placement.decided_at.isoformat() if placement else None,
    }
