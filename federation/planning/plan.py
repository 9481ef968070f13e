"""Planning (pure): from the world as read, what every service's placement and
assignments should be now. The controller writes the result; `explain` and policy
`dry_run` show it without writing.

Per service: residency verdicts (cached per data-class set) -> scheduler decision
(all services against one capacity pool) -> make-before-break for regions residency
no longer allows (drain) -> rollout of a new version region by region -> the
assignments each region must hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from federation.model.service import (
    Assignment,
    Draining,
    Evidence,
    PlacementRecord,
    RolloutState,
    Runtime,
    ServiceSpec,
)
from federation.planning.world import World
from federation.residency.evaluate import Evaluation, evaluate
from federation.scheduler import Decision, RegionInfo, Verdict, place_all


@dataclass
class ServicePlan:
    """What to write for one service, and what was decided, as a sentence."""

    service: str
    service_revision: int
    placement_revision: int
    record: PlacementRecord
    assignments: dict[str, Assignment]
    changed: bool
    put: dict[str, Assignment] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    consume_rebalance: bool = False
    decision: Decision | None = None
    evaluation: Evaluation | None = None

    @property
    def sentence(self) -> str:
        where = ", ".join(f"{r}={n}" for r, n in sorted(self.record.regions.items())) or "nowhere"
        return f"{self.service}: {self.record.reason} ({where}); {self.record.message}"


# Capacity used per region (cpu, memory), when the caller keeps it for the whole world
# and plans only some services (federation.controller.ledger).
Used = tuple[Mapping[str, float], Mapping[str, int]]


def region_infos(
    world: World, now: datetime, *, region_ttl: float, used: Used | None = None
) -> list[RegionInfo]:
    """Regions with their state and free capacity net of every current placement
    (`used`, if given; else summed over the world's placements)."""
    used_cpu: Mapping[str, float]
    used_mem: Mapping[str, int]
    if used is not None:
        used_cpu, used_mem = used
    else:
        used_cpu, used_mem = _used(world)
    infos = []
    for name, record in world.regions.items():
        beat = world.heartbeats.get(name)
        cap_cpu = beat.capacity.cpu if beat else 0.0
        cap_mem = beat.capacity.memory_mb if beat else 0
        unreachable_for: float | None = None
        if name not in world.alive:
            state = "unreachable"
            lost_at = world.lost_at.get(name)
            if lost_at is None and beat is not None:
                # The record changes only with what the region claims: the loss is no
                # earlier than this, so a world without `lost_at` errs towards acting.
                lost_at = beat.at + timedelta(seconds=region_ttl)
            unreachable_for = (now - lost_at).total_seconds() if lost_at else float("inf")
            unreachable_for = max(0.0, unreachable_for)
        elif record.cordon is not None:
            state = "cordoned"
        else:
            state = "ready"
        infos.append(
            RegionInfo(
                name=name,
                country=record.country,
                labels=record.labels,
                state=state,  # type: ignore[arg-type]
                cpu_free=cap_cpu - used_cpu.get(name, 0.0),
                memory_free=cap_mem - used_mem.get(name, 0),
                unreachable_for=unreachable_for,
                allow_exec=tuple(beat.allow_exec)
                if beat is not None and beat.allow_exec is not None
                else None,
            )
        )
    return infos


def _used(world: World) -> tuple[dict[str, float], dict[str, int]]:
    used_cpu: dict[str, float] = {}
    used_mem: dict[str, int] = {}
    for name, (placed, _) in world.placements.items():
        service = world.services.get(name)
        if service is None:
            continue
        res = service[0].spec.resources
        counts = dict(placed.regions)
        for region, drain in placed.draining.items():
            counts[region] = counts.get(region, 0) + drain.replicas
        for region, count in counts.items():
            used_cpu[region] = used_cpu.get(region, 0.0) + count * res.cpu
            used_mem[region] = used_mem.get(region, 0) + count * res.memory_mb
    return used_cpu, used_mem


def evaluations(world: World, now: datetime) -> dict[str, Evaluation]:
    """Residency evaluation per service, computed once per distinct data-class set."""
    policies = world.residency.all_policies()
    groups = world.residency.valid_groups()
    exempted = {e.service for p in world.residency.valid_policies() for e in p.exemptions}
    regions = list(world.regions.values())
    cache: dict[tuple[tuple[str, ...], str | None], Evaluation] = {}
    result: dict[str, Evaluation] = {}
    for name, (record, _) in world.services.items():
        classes = tuple(sorted(record.spec.data_classes))
        key = (classes, name if name in exempted else None)
        if key not in cache:
            cache[key] = evaluate(
                data_classes=classes,
                service=key[1],
                regions=regions,
                policies=policies,
                groups=groups,
                now=now,
            )
        result[name] = cache[key]
    return result


def _verdicts(evaluation: Evaluation) -> dict[str, Verdict]:
    return {v.region: Verdict(v.allowed, tuple(v.reasons)) for v in evaluation.verdicts}


def ready_count(world: World, region: str, service: str, generation: int) -> int:
    """Instances of `service` at `generation` that `region` reports ready."""
    report = world.reports.get((region, service))
    return report.ready_count(generation) if report is not None else 0


def plan(
    world: World,
    now: datetime,
    *,
    region_ttl: float,
    rebalance: frozenset[str] = frozenset(),
    used: Used | None = None,
) -> dict[str, ServicePlan]:
    """Plan every service of `world`. Pure: the same world and `now` give the same
    plans. With `used`, the world may hold only some services: capacity is net of
    `used` (every service's placement), and the others keep where they are."""
    infos = region_infos(world, now, region_ttl=region_ttl, used=used)
    states = {r.name: r.state for r in infos}
    evals = evaluations(world, now)
    specs = [record.spec for record, _ in world.services.values()]
    current = {name: dict(record.regions) for name, (record, _) in world.placements.items()}
    wanted_rebalance = frozenset(rebalance | world.rebalance)
    # Services with the same data classes share an evaluation: convert each one once.
    converted: dict[int, dict[str, Verdict]] = {}
    for ev in evals.values():
        if id(ev) not in converted:
            converted[id(ev)] = _verdicts(ev)
    decisions = place_all(
        specs,
        infos,
        {name: converted[id(ev)] for name, ev in evals.items()},
        current,
        rebalance=wanted_rebalance,
    )
    # Each service's assignments, found once: not a scan of all of them per service.
    held: dict[str, dict[str, Assignment]] = {}
    for (region, svc), a in world.assignments.items():
        held.setdefault(svc, {})[region] = a
    plans: dict[str, ServicePlan] = {}
    for name, (service, service_rev) in world.services.items():
        prev, prev_rev = world.placements.get(name, (None, 0))
        plans[name] = _plan_service(
            world,
            held.get(name, {}),
            now,
            service.spec,
            service.generation,
            service.secret_versions,
            service_rev,
            prev,
            prev_rev,
            decisions[name],
            evals[name],
            states,
            consume_rebalance=name in world.rebalance,
        )
    return plans


def _plan_service(
    world: World,
    existing: Mapping[str, Assignment],
    now: datetime,
    spec: ServiceSpec,
    generation: int,
    secret_versions: dict[str, int],
    service_rev: int,
    prev: PlacementRecord | None,
    prev_rev: int,
    decision: Decision,
    evaluation: Evaluation,
    states: Mapping[str, str],
    *,
    consume_rebalance: bool,
) -> ServicePlan:
    name = spec.name
    target = Runtime.of(spec, generation, secret_versions)
    deadline = timedelta(seconds=spec.rollout.progress_deadline_s)
    compliant = set(decision.allowed_regions)

    # Make-before-break: regions residency no longer allows keep their replicas until
    # the new placement is ready, or the rollout deadline passes, whichever is first.
    draining: dict[str, Draining] = {}
    if prev is not None:
        for region, drain in prev.draining.items():
            if region not in compliant and states.get(region) != "unreachable":
                draining[region] = drain
        for region, count in prev.regions.items():
            if (
                region not in decision.placement
                and region not in compliant
                and region not in draining
                and states.get(region) in ("ready", "cordoned")
            ):
                draining[region] = Draining(replicas=count, since=now)
    all_ready = all(
        ready_count(world, r, name, existing[r].runtime.generation if r in existing else -1) >= n
        for r, n in decision.placement.items()
    )
    draining = {r: d for r, d in draining.items() if not all_ready and now - d.since < deadline}

    # Rollout: regions whose assignment runs another version move region by region.
    rollout = prev.rollout.model_copy(deep=True) if prev and prev.rollout else None
    runtimes: dict[str, Runtime] = {}
    behind: list[str] = []
    for region in sorted(decision.placement):
        held = existing.get(region)
        if held is None or held.draining or held.runtime.rollout_key() == target.rollout_key():
            runtimes[region] = target
        else:
            runtimes[region] = held.runtime
            behind.append(region)
    if behind and (rollout is None or rollout.to_generation != generation):
        # A new rollout; one superseded mid-way still returns to what ran before it.
        old = existing[behind[0]].runtime
        if rollout is not None and rollout.state == "progressing":
            old = rollout.from_runtime
        rollout = RolloutState(
            from_version=old.version,
            to_version=target.version,
            from_generation=old.generation,
            to_generation=generation,
            from_runtime=old,
            started_at=now,
        )
    if rollout is not None and rollout.to_generation == generation:
        if rollout.state == "progressing":
            in_progress = []
            for region in sorted(rollout.region_started):
                if region not in decision.placement or region in rollout.done:
                    continue
                if ready_count(world, region, name, generation) >= decision.placement[region]:
                    rollout.done.append(region)
                elif now - rollout.region_started[region] > deadline:
                    rollout.state = (
                        "rolled_back" if spec.rollout.on_failure == "rollback" else "failed"
                    )
                    rollout.message = (
                        f"region {region} did not report version {target.version} ready "
                        f"within {spec.rollout.progress_deadline_s:g} s"
                    )
                    break
                else:
                    in_progress.append(region)
            if rollout.state == "progressing":
                for region in behind:
                    if len(in_progress) >= spec.rollout.max_parallel_regions:
                        break
                    if region in rollout.region_started:
                        continue
                    rollout.region_started[region] = now
                    runtimes[region] = target
                    in_progress.append(region)
                if not in_progress and not [r for r in behind if runtimes[r] != target]:
                    rollout.state = "complete"
                    rollout.message = f"all regions run version {target.version}"
        if rollout.state == "rolled_back":
            runtimes = {region: rollout.from_runtime for region in decision.placement}
        elif rollout.state == "failed":
            for region in decision.placement:
                if region not in rollout.region_started:
                    runtimes[region] = rollout.from_runtime

    assignments: dict[str, Assignment] = {
        region: Assignment(service=name, region=region, replicas=count, runtime=runtimes[region])
        for region, count in decision.placement.items()
    }
    for region, drain in draining.items():
        held = existing.get(region)
        assignments[region] = Assignment(
            service=name,
            region=region,
            replicas=drain.replicas,
            runtime=held.runtime if held else target,
            draining=True,
        )

    countries = {r: world.regions[r].country for r in assignments if r in world.regions}
    bound = evaluation.bound_policies
    stored = world.residency.policies
    evidence = Evidence(
        countries=dict(sorted(countries.items())),
        policies={p: stored[p].revision for p in sorted(bound) if p in stored},
        groups={g: s.revision for g, s in sorted(world.residency.groups.items())},
        allowed_regions=sorted(evaluation.allowed_regions),
    )
    reason, message = decision.reason, decision.message
    if draining:
        message += "; draining " + ", ".join(
            f"{r} ({d.replicas}, no longer allowed by residency)"
            for r, d in sorted(draining.items())
        )
    record = PlacementRecord(
        service=name,
        generation=generation,
        regions=dict(sorted(decision.placement.items())),
        desired=spec.replicas,
        reason=reason,
        message=message,
        evidence=evidence,
        decided_at=now,
        draining=draining,
        rollout=rollout,
    )
    if prev is not None and prev.regions == record.regions and prev.draining == record.draining:
        record.decided_at = prev.decided_at
    changed = prev is None or prev.model_dump() != record.model_dump()
    put = {
        region: a
        for region, a in assignments.items()
        if existing.get(region) is None or not existing[region].same_work(a)
    }
    delete = sorted(set(existing) - set(assignments))
    return ServicePlan(
        service=name,
        service_revision=service_rev,
        placement_revision=prev_rev,
        record=record,
        assignments=assignments,
        changed=changed or bool(put) or bool(delete) or consume_rebalance,
        put=put,
        delete=delete,
        consume_rebalance=consume_rebalance,
        decision=decision,
        evaluation=evaluation,
    )


def impact(before: World, after: World, now: datetime, *, region_ttl: float) -> dict[str, Any]:
    """What a residency change would do to deployed services: plan the world as it is
    and as it would be, and list every service whose placement or outcome differs."""
    old = plan(before, now, region_ttl=region_ttl)
    new = plan(after, now, region_ttl=region_ttl)
    services: list[dict[str, Any]] = []
    for name in sorted(new):
        was, will = old[name].record, new[name].record
        if was.regions == will.regions and was.reason == will.reason:
            continue
        placed = sum(will.regions.values())
        if placed == 0 and will.desired > 0:
            outcome = "pending"
        elif placed < will.desired:
            outcome = "degraded"
        else:
            outcome = "moves"
        stopped = sorted(set(was.regions) - set(will.regions))
        services.append(
            {
                "service": name,
                "outcome": outcome,
                "from": was.regions,
                "to": will.regions,
                "stopped_in": stopped,
                "reason": will.reason,
                "message": will.message,
            }
        )
    return {
        "services": services,
        "moves": sum(1 for s in services if s["outcome"] == "moves"),
        "pending": sum(1 for s in services if s["outcome"] == "pending"),
        "degraded": sum(1 for s in services if s["outcome"] == "degraded"),
        "unaffected": len(new) - len(services),
    }
