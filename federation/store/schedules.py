"""Drill schedules, their runs and on-demand run requests in etcd.

`drill-schedules/{name}` holds the operator's document; writes are audited and take
`If-Match`. `drill-runs/{schedule}/{id}` holds each practice run (deleted with its schedule),
written by the leader only (its txns compare the leader key), at most `MAX_HISTORY` per schedule:
the oldest are deleted in the txn that stores a new one. The txn that stores a
SUCCEEDED run also sets `practice-success/{region}` for each of its regions, which
no pruning deletes. `drill-run-requests/{name}`
is an operator's on-demand run, created if absent (one pending per schedule) and
deleted by the leader in the txn that records the run it started.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from federation.model.schedule import MAX_HISTORY, DrillSchedule, Outcome, PracticeRun
from federation.store import audit, keys
from federation.store.audit import Change
from federation.store.errors import AlreadyExists, Conflict
from federation.store.etcd import Cond, Op, Store


async def get(store: Store, name: str) -> tuple[DrillSchedule, int] | None:
    """One schedule and its revision."""
    entry = await store.get(keys.drill_schedule(name))
    if entry is None:
        return None
    return DrillSchedule.model_validate(entry.value), entry.revision


async def list_all(store: Store) -> tuple[list[tuple[DrillSchedule, int]], int]:
    """Every schedule that validates (by name), and the read's revision."""
    entries, revision = await store.scan(keys.DRILL_SCHEDULES)
    found = []
    for e in entries:
        try:
            found.append((DrillSchedule.model_validate(e.value), e.revision))
        except ValidationError:
            continue  # written by no server of ours; never run what does not validate
    return found, revision


async def put(
    store: Store, schedule: DrillSchedule, *, if_match: int | None, actor: str
) -> tuple[int, bool]:
    """Create or replace (CAS on `if_match`); returns (revision, created). Conflict or
    AlreadyExists when `if_match` does not hold."""
    key = keys.drill_schedule(schedule.name)
    value = schedule.model_dump(mode="json")
    details = {"regions": schedule.regions, "windows": schedule.windows}
    if if_match == 0:
        change = Change("drill-schedule.put", key, actor=actor, details=details)
        return await audit.create(store, key, value, change=change), True
    current = await store.get(key)
    if if_match is not None and (current is None or current.revision != if_match):
        raise Conflict(key, if_match, current.revision if current else None)
    change = Change("drill-schedule.put", key, actor=actor, details=details)
    if current is None:
        try:
            return await audit.create(store, key, value, change=change), True
        except AlreadyExists as exc:
            raise Conflict(key, None, exc.actual) from None
    revision = await audit.replace(store, key, value, change=change, revision=current.revision)
    return revision, False


async def delete(store: Store, name: str, *, if_match: int | None, actor: str) -> int | None:
    """Delete the schedule, its runs and any pending on-demand request, in one txn
    (one range delete: under any op limit). None when there is no such schedule."""
    key = keys.drill_schedule(name)
    current = await store.get(key)
    if current is None:
        return None
    change = Change("drill-schedule.delete", key, actor=actor)
    return await audit.delete(
        store,
        key,
        change=change,
        revision=if_match if if_match is not None else current.revision,
        also=[Op.delete(keys.drill_run_request(name)), Op.delete_prefix(keys.drill_runs(name))],
    )


async def delete_orphan_runs(store: Store, name: str, *, conditions: Sequence[Cond]) -> bool:
    """Delete the runs of schedule `name` if it does not exist (runs stored before
    their schedule's delete took them along); False when it exists or a condition
    failed."""
    conds = [*conditions, Cond.absent(keys.drill_schedule(name))]
    ok, _, _ = await store.txn(conds, [Op.delete_prefix(keys.drill_runs(name))])
    return ok


async def request_run(store: Store, name: str, *, by: str, at: datetime) -> int:
    """Ask the leader for an on-demand run (audited). AlreadyExists when one is
    pending; Conflict when the schedule is gone."""
    key = keys.drill_run_request(name)
    ok, revision, entries = await audit.txn(
        store,
        [Cond.absent(key), Cond.exists(keys.drill_schedule(name))],
        [Op.put(key, {"by": by, "at": at.isoformat()})],
        Change("drill-schedule.run", keys.drill_schedule(name), actor=by),
        read_on_failure=[key],
    )
    if not ok:
        if entries and entries[0] is not None:
            raise AlreadyExists(key, entries[0].revision)
        raise Conflict(keys.drill_schedule(name), None, None)
    return revision


async def requests(store: Store) -> dict[str, tuple[dict[str, Any], int]]:
    """Pending on-demand requests by schedule name, with their revisions."""
    entries, _ = await store.scan(keys.DRILL_RUN_REQUESTS)
    return {e.key.removeprefix(keys.DRILL_RUN_REQUESTS): (e.value, e.revision) for e in entries}


async def runs(store: Store, schedule: str | None = None) -> list[tuple[PracticeRun, int]]:
    """The runs of one schedule (or of all), oldest first, with revisions."""
    prefix = keys.drill_runs(schedule) if schedule else keys.DRILL_RUNS
    entries, _ = await store.scan(prefix)
    found = []
    for e in entries:
        try:
            found.append((PracticeRun.model_validate(e.value), e.revision))
        except ValidationError:
            continue  # not ours to follow: a run that does not validate is history only
    found.sort(key=lambda item: (item[0].started_at, item[0].id))
    return found


async def run(store: Store, schedule: str, run_id: str) -> tuple[PracticeRun, int] | None:
    """One run as etcd holds it now, with its revision (None: gone or not ours)."""
    entry = await store.get(keys.drill_run(schedule, run_id))
    if entry is None:
        return None
    try:
        return PracticeRun.model_validate(entry.value), entry.revision
    except ValidationError:
        return None


async def last_successes(store: Store) -> dict[str, float]:
    """Each region's last SUCCEEDED practice run's end, as POSIX time."""
    entries, _ = await store.scan(keys.PRACTICE_SUCCESS)
    found = {}
    for e in entries:
        try:
            found[e.key.removeprefix(keys.PRACTICE_SUCCESS)] = datetime.fromisoformat(
                str(e.value["at"])
            ).timestamp()
        except (KeyError, TypeError, ValueError):
            continue  # written by no server of ours
    return found


async def write_run(
    store: Store,
    run: PracticeRun,
    revision: int | None,
    *,
    conditions: Sequence[Cond] = (),
    also: Sequence[Op] = (),
    audit_change: Change | None = None,
) -> int:
    """Store `run` (create when `revision` is None, else CAS on it) with `conditions`
    (the leader fence) and `also` in the same txn; a new run deletes the oldest beyond
    MAX_HISTORY. Conflict when anything moved."""
    key = keys.drill_run(run.schedule, run.id)
    conds = [*conditions]
    ops = [Op.put(key, run.model_dump(mode="json")), *also]
    if run.outcome is Outcome.SUCCEEDED and run.ended_at is not None:
        # Runs are pruned (BLOCKED retries push old ones out); a region's last
        # success must not go with them.
        success = {"at": run.ended_at.isoformat(), "schedule": run.schedule, "run": run.id}
        ops += [Op.put(keys.practice_success(r), success) for r in run.regions]
    if revision is None:
        conds.append(Cond.absent(key))
        entries, _ = await store.scan(keys.drill_runs(run.schedule))
        ordered = sorted(entries, key=lambda e: e.key)
        for old in ordered[: max(0, len(ordered) - MAX_HISTORY + 1)]:
            ops.append(Op.delete(old.key))
    else:
        conds.append(Cond.at_revision(key, revision))
    if audit_change is None:
        ok, written, _ = await store.txn(conds, ops)
    else:
        ok, written, _ = await audit.txn(store, conds, ops, audit_change)
    if not ok:
        raise Conflict(key, revision, None)
    return written
