"""A set of documents planned as one: what `federation plan` and `apply` show.

Pure. The caller hands in the world as stored and the documents (already validated
one by one) and gets back, for the whole set at once: each resource's action (create,
update, delete, none) with its field-level diff and the revision it was planned
against (which `apply` sends as `If-Match`), the placement moves of every service the
set changes or that residency changes move, the regions residency newly rejects, and
the warnings. The world after the set is the world before with every document in
place, so a new policy and the service that needs it are planned together, and a
region's new labels move the services that prefer them. Secrets' metadata is checked
against the stored secrets and never changes anything.

Problems that would make a write fail (a reference to a group that is in neither the
store nor the set, a data class no policy names, a group still named by something that
stays, a region that is not registered, a secret that is not stored as declared) are
returned as `problems`, each naming its document; a plan with problems has
no exit code but 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from federation.model.policy import Group, Policy
from federation.model.region import RegionLabels
from federation.model.schedule import DrillSchedule
from federation.model.secret import SecretDeclaration
from federation.model.service import ServiceRecord, ServiceSpec
from federation.model.status import NO_COMPLIANT_FAILOVER_REGION, survivability
from federation.planning.plan import ServicePlan, plan
from federation.planning.preview import field_changes
from federation.planning.world import World
from federation.residency.evaluate import empty_data_classes, unknown_data_classes
from federation.residency.groups import references_to_group, validate_group, validate_references
from federation.residency.snapshot import Snapshot, StoredGroup, StoredPolicy
from federation.scheduler.decision import INSUFFICIENT_CAPACITY, NO_COMPLIANT_REGION

JSON = dict[str, Any]

# The order `apply` writes in: what is named before what names it. Deletes go the
# other way round.
KINDS = ("region", "group", "policy", "secret", "service", "drill-schedule")
NO_ROOM = (NO_COMPLIANT_REGION, INSUFFICIENT_CAPACITY)

# Exit codes, as `terraform plan -detailed-exitcode`.
EXIT_NONE, EXIT_ERROR, EXIT_CHANGES, EXIT_NO_ROOM = 0, 1, 2, 3


@dataclass
class ChangeSet:
    """The documents of one plan, by kind and name, and what `--prune` selects."""

    groups: dict[str, Group] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    services: dict[str, ServiceSpec] = field(default_factory=dict)
    # Labels of registered regions; a region is never created or pruned from files.
    regions: dict[str, RegionLabels] = field(default_factory=dict)
    # Checked against the stored secrets, never written (values never go in files).
    secrets: dict[str, SecretDeclaration] = field(default_factory=dict)
    schedules: dict[str, DrillSchedule] = field(default_factory=dict)
    # Resources whose labels include all of these and that the set does not hold are
    # deleted; None: nothing is.
    prune: Mapping[str, str] | None = None


def _selected(labels: Mapping[str, str], selector: Mapping[str, str] | None) -> bool:
    return selector is not None and all(labels.get(k) == v for k, v in selector.items())


def _resource(kind: str, name: str, before: JSON | None, after: JSON | None, rev: int) -> JSON:
    if after is None:
        action = "delete"
    elif before is None:
        action = "create"
    else:
        action = "update" if before != after else "none"
    return {
        "kind": kind,
        "name": name,
        "action": action,
        # What apply sends as If-Match: 0 for a create (it must still be absent).
        "revision": rev,
        "diff": field_changes(before, after) if action == "update" else [],
    }


def _stored_labels(raw: JSON) -> Mapping[str, str]:
    labels = raw.get("labels")
    return labels if isinstance(labels, dict) else {}


def _policy_json(stored: StoredPolicy) -> JSON:
    """As the model shows it now (defaults of fields added since it was written filled
    in), so an unchanged document is not an update; a malformed one as stored."""
    policy = stored.policy
    return policy.model_dump(mode="json") if isinstance(policy, Policy) else stored.raw


def _group_json(stored: StoredGroup) -> JSON:
    return stored.group.model_dump(mode="json") if stored.group is not None else stored.raw


def _residency_after(snap: Snapshot, changes: ChangeSet, resources: list[JSON]) -> Snapshot:
    policies = dict(snap.policies)
    groups = dict(snap.groups)
    for name, group in sorted(changes.groups.items()):
        old = snap.groups.get(name)
        before = _group_json(old) if old else None
        after = group.model_dump(mode="json")
        resources.append(_resource("group", name, before, after, old.revision if old else 0))
        groups[name] = StoredGroup(name, group, None, old.revision if old else 0, after)
    for name, policy in sorted(changes.policies.items()):
        old_p = snap.policies.get(name)
        before = _policy_json(old_p) if old_p else None
        after = policy.model_dump(mode="json")
        resources.append(_resource("policy", name, before, after, old_p.revision if old_p else 0))
        policies[name] = StoredPolicy(name, policy, old_p.revision if old_p else 0, after)
    for name, stored_p in sorted(snap.policies.items()):
        if name not in changes.policies and _selected(_stored_labels(stored_p.raw), changes.prune):
            before = _policy_json(stored_p)
            resources.append(_resource("policy", name, before, None, stored_p.revision))
            del policies[name]
    for name, stored_g in sorted(snap.groups.items()):
        if name not in changes.groups and _selected(_stored_labels(stored_g.raw), changes.prune):
            before = _group_json(stored_g)
            resources.append(_resource("group", name, before, None, stored_g.revision))
            del groups[name]
    return dataclasses.replace(snap, policies=policies, groups=groups)


def _problems(after: Snapshot, changes: ChangeSet, deleted: set[tuple[str, str]]) -> list[JSON]:
    problems: list[JSON] = []
    valid_groups = after.valid_groups()
    for name, group in sorted(changes.groups.items()):
        for p in validate_group(group, valid_groups):
            problems.append({"kind": "group", "name": name, "field": p.field, "message": p.message})
    for name, policy in sorted(changes.policies.items()):
        for p in validate_references(policy, valid_groups):
            problems.append(
                {"kind": "policy", "name": name, "field": p.field, "message": p.message}
            )
    for kind, name in sorted(deleted):
        if kind != "group":
            continue
        for ref in references_to_group(name, policies=after.valid_policies(), groups=valid_groups):
            problems.append(
                {
                    "kind": "group",
                    "name": name,
                    "field": "prune",
                    "message": f"cannot delete: still named by {ref}",
                }
            )
    policies = after.all_policies()
    for name, spec in sorted(changes.services.items()):
        for data_class in unknown_data_classes(spec.data_classes, policies):
            i = spec.data_classes.index(data_class)
            problems.append(
                {
                    "kind": "service",
                    "name": name,
                    "field": f"data_classes.{i}",
                    "message": f"no policy, stored or in this set, names data class {data_class!r}",
                }
            )
    return problems


def _world_after(world: World, changes: ChangeSet, resources: list[JSON], now: datetime) -> World:
    services = dict(world.services)
    for name, spec in sorted(changes.services.items()):
        stored = world.services.get(name)
        before = stored[0].spec.model_dump(mode="json") if stored else None
        after = spec.model_dump(mode="json")
        resources.append(_resource("service", name, before, after, stored[1] if stored else 0))
        if stored is None or stored[0].spec != spec:
            generation = stored[0].generation + 1 if stored else 1
            record = ServiceRecord(
                spec=spec,
                generation=generation,
                created_at=stored[0].created_at if stored else now,
                updated_at=now,
            )
            services[name] = (record, stored[1] if stored else 0)
    placements = dict(world.placements)
    for name, (record, revision) in sorted(world.services.items()):
        if name not in changes.services and _selected(record.spec.labels, changes.prune):
            resources.append(
                _resource("service", name, record.spec.model_dump(mode="json"), None, revision)
            )
            del services[name]
            placements.pop(name, None)
    return dataclasses.replace(world, services=services, placements=placements)


@dataclass(frozen=True)
class StoredSecret:
    """What a plan knows of a stored secret: its metadata, never a value."""

    data_classes: tuple[str, ...]
    keys: tuple[str, ...]
    revision: int


def _regions_after(world: World, changes: ChangeSet, resources: list[JSON]) -> list[JSON]:
    """Each region document as a resource (its labels' diff), the regions of `world`
    relabelled in place; problems for regions that are not registered."""
    problems: list[JSON] = []
    for name, doc in sorted(changes.regions.items()):
        record = world.regions.get(name)
        if record is None:
            problems.append(
                {
                    "kind": "region",
                    "name": name,
                    "field": "name",
                    "message": f"region {name!r} is not registered: a region joins with "
                    "`federation region register` (its country and token), not from files",
                }
            )
            continue
        before = {"name": name, "labels": dict(sorted(record.labels.items()))}
        after = {"name": name, "labels": dict(sorted(doc.labels.items()))}
        revision = world.region_revisions.get(name, 0)
        resources.append(_resource("region", name, before, after, revision))
        world.regions[name] = record.model_copy(update={"labels": after["labels"]})
    return problems


def _secrets_checked(
    changes: ChangeSet, stored: Mapping[str, StoredSecret], resources: list[JSON]
) -> list[JSON]:
    """Each secret document checked against the stored secret: it must exist with
    every key the files list and exactly their data classes (where it may be delivered
    is what was reviewed). Keys the files do not list are left alone."""
    problems: list[JSON] = []

    def problem(name: str, field_: str, message: str) -> None:
        problems.append({"kind": "secret", "name": name, "field": field_, "message": message})

    for name, doc in sorted(changes.secrets.items()):
        found = stored.get(name)
        if found is None:
            problem(
                name,
                "name",
                f"secret {name!r} does not exist: set its values with `federation secret "
                f"set {name} --data-class ...` (values never go in files)",
            )
            continue
        declared = doc.model_dump(mode="json")  # checked, not written: never a change
        resources.append(_resource("secret", name, declared, declared, found.revision))
        missing = sorted(set(doc.keys) - set(found.keys))
        if missing:
            problem(name, "keys", f"secret {name!r} has no key {', '.join(missing)}")
        if sorted(doc.data_classes) != sorted(found.data_classes):
            problem(
                name,
                "data_classes",
                f"secret {name!r} is stored with data classes {list(found.data_classes)}, "
                f"the files say {doc.data_classes}: change it with `federation secret set`",
            )
    return problems


def _schedules_after(
    world: World,
    changes: ChangeSet,
    stored: Mapping[str, tuple[DrillSchedule, int]],
    resources: list[JSON],
) -> list[JSON]:
    """Each drill schedule document as a resource, and the stored schedules `--prune`
    selects as deletes; problems for a schedule naming a region that is not
    registered (its PUT would refuse it)."""
    problems: list[JSON] = []
    for name, schedule in sorted(changes.schedules.items()):
        old = stored.get(name)
        before = old[0].model_dump(mode="json") if old else None
        after = schedule.model_dump(mode="json")
        resources.append(_resource("drill-schedule", name, before, after, old[1] if old else 0))
        for i, region in enumerate(schedule.regions):
            if region not in world.regions:
                problems.append(
                    {
                        "kind": "drill-schedule",
                        "name": name,
                        "field": f"regions.{i}",
                        "message": f"no region named {region!r}",
                    }
                )
    for name, (schedule, revision) in sorted(stored.items()):
        if name not in changes.schedules and _selected(schedule.labels, changes.prune):
            before = schedule.model_dump(mode="json")
            resources.append(_resource("drill-schedule", name, before, None, revision))
    return problems


def _rejected(p: ServicePlan) -> dict[str, JSON]:
    assert p.evaluation is not None
    return {v.region: {"reasons": list(v.reasons)} for v in p.evaluation.verdicts if not v.allowed}


def _effects(
    world: World, before: dict[str, ServicePlan], after: dict[str, ServicePlan], touched: set[str]
) -> tuple[list[JSON], list[JSON], list[JSON], set[str]]:
    """Moves, new rejections, warnings about services, and the services left without
    room by this change."""
    moves: list[JSON] = []
    rejections: list[JSON] = []
    warnings: list[JSON] = []
    no_room: set[str] = set()
    countries = {name: r.country for name, r in world.regions.items()}
    for name in sorted(set(before) | set(after)):
        was, will = before.get(name), after.get(name)
        old = dict(was.record.regions) if was else {}
        new = dict(will.record.regions) if will else {}
        if old != new:
            moves.append(
                {
                    "service": name,
                    "regions": {
                        r: {"from": old.get(r, 0), "to": new.get(r, 0)}
                        for r in sorted(set(old) | set(new))
                        if old.get(r, 0) != new.get(r, 0)
                    },
                    "reason": will.record.reason if will else "Deleted",
                }
            )
        if will is None:
            continue
        assert will.decision is not None and will.evaluation is not None
        was_rejected = _rejected(was) if was else {}
        for region, verdict in sorted(_rejected(will).items()):
            if was is not None and region not in was_rejected:
                rejections.append(
                    {"service": name, "region": region, "country": countries.get(region), **verdict}
                )
        reason = will.decision.reason
        if reason in NO_ROOM and will.decision.desired > 0:
            new_here = name in touched or was is None or was.record.reason not in NO_ROOM
            if new_here:
                no_room.add(name)
            warnings.append(
                {
                    "code": reason,
                    "service": name,
                    "message": will.decision.message,
                    "caused_by_this_change": new_here,
                }
            )
        single = survivability(will.evaluation.allowed_regions)
        if single is not None and will.decision.desired > 0:
            warnings.append(
                {
                    "code": NO_COMPLIANT_FAILOVER_REGION,
                    "service": name,
                    "message": single.message,
                    "caused_by_this_change": name in touched,
                }
            )
    return moves, rejections, warnings, no_room


def plan_changes(
    world: World,
    changes: ChangeSet,
    now: datetime,
    *,
    region_ttl: float,
    secrets: Mapping[str, StoredSecret] | None = None,
    schedules: Mapping[str, tuple[DrillSchedule, int]] | None = None,
) -> JSON:
    """Plan `changes` against `world` (read in full: every service, region, policy and
    group), the stored `secrets` the set declares and the stored drill `schedules`
    (with their revisions). Returns the answer of `POST /v1/plan`; `world` is not
    modified."""
    resources: list[JSON] = []
    residency = _residency_after(world.residency, changes, resources)
    after_world = _world_after(world, changes, resources, now)
    after_world.residency = residency
    after_world.regions = dict(world.regions)
    problems = _regions_after(after_world, changes, resources)
    problems += _secrets_checked(changes, secrets or {}, resources)
    problems += _schedules_after(after_world, changes, schedules or {}, resources)
    deleted = {(r["kind"], r["name"]) for r in resources if r["action"] == "delete"}
    problems += _problems(residency, changes, deleted)
    order = {kind: i for i, kind in enumerate(KINDS)}
    resources.sort(key=lambda r: (r["action"] == "delete", order[r["kind"]], r["name"]))
    changed = [r for r in resources if r["action"] != "none"]
    answer: JSON = {
        "resources": resources,
        "summary": {
            action: sum(1 for r in resources if r["action"] == action)
            for action in ("create", "update", "delete", "none")
        },
        "problems": problems,
        "moves": [],
        "rejections": [],
        "warnings": [],
    }
    if problems:
        answer["exit_code"] = EXIT_ERROR
        return answer
    before_plans = plan(world, now, region_ttl=region_ttl)
    after_plans = plan(after_world, now, region_ttl=region_ttl)
    touched = {r["name"] for r in changed if r["kind"] == "service"}
    moves, rejections, warnings, no_room = _effects(world, before_plans, after_plans, touched)
    bound = {c for record, _ in after_world.services.values() for c in record.spec.data_classes}
    for name, policy in sorted(changes.policies.items()):
        if not bound & set(policy.data_classes):
            warnings.append(
                {
                    "code": "PolicyBindsNoService",
                    "policy": name,
                    "message": f"no service carries any of {', '.join(policy.data_classes)}",
                    "caused_by_this_change": True,
                }
            )
    snap = world.residency
    empty_before = {
        e.data_class for e in empty_data_classes(snap.all_policies(), snap.valid_groups(), now)
    }
    for empty in empty_data_classes(residency.all_policies(), residency.valid_groups(), now):
        warnings.append(
            {
                "code": "EmptyDataClass",
                "data_class": empty.data_class,
                "message": empty.message,
                "caused_by_this_change": empty.data_class not in empty_before,
            }
        )
    answer.update(moves=moves, rejections=rejections, warnings=warnings)
    answer["no_room"] = sorted(no_room)
    if not changed:
        answer["exit_code"] = EXIT_NONE
    else:
        answer["exit_code"] = EXIT_NO_ROOM if no_room else EXIT_CHANGES
    return answer
