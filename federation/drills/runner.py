"""The live drill state machine, driven by the leader replica only (the server starts
the `DrillRunner` beside the controller, federation.api.app; neither imports the other).

A drill record (`drills/{id}`) moves: running/cordoning -> running/evacuating ->
running/failback -> completed, or to aborted / failed from any of them. Each step
reads the drill and the world afresh, decides, and writes the record with a CAS on
its revision and the leader fence; cordons and uncordons go in the same transaction
(`store.drills.transition`). So a new leader (after a restart or a failover) finds
every running drill in etcd and carries on from where the record says it was, and
an abort from any API replica wins any race with the runner.

Evacuating: every 0.2 s, per affected service, the replicas ready outside the
target regions; a service has recovered when they reach its desired replicas (its
recovery time counts from the cordon). It settles as degraded or unrecoverable when
the controller has moved it off the targets and placed fewer replicas. Every
assignment of every service is checked against residency on each poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from federation.model.drill import (
    DrillRecord,
    DrillState,
    ServiceProgress,
    Violation,
    drill_tag,
)
from federation.model.region import Cordon
from federation.model.service import Assignment, Phase
from federation.model.status import service_status
from federation.planning.plan import evaluations, ready_count
from federation.planning.what_if import in_targets
from federation.planning.world import World
from federation.store import Cond, Conflict, Store, StoreError, keys
from federation.store import drills as store_drills
from federation.store.audit import Change
from federation.store.election import LeaderElection
from federation.store.regions import RegionNotFound
from federation.store.world import read_world

log = logging.getLogger(__name__)

ABORT_RETRIES = 10


def _seconds(start: datetime | None, now: datetime) -> float:
    return 0.0 if start is None else (now - start).total_seconds()


def _by_service(world: World) -> dict[str, dict[str, Assignment]]:
    index: dict[str, dict[str, Assignment]] = {}
    for (region, service), a in world.assignments.items():
        index.setdefault(service, {})[region] = a
    return index


def observe(record: DrillRecord, world: World, now: datetime) -> tuple[list[str], bool]:
    """Update every unsettled service's progress from `world`. Returns the events for
    the timeline (not each recovery: those are the report's table) and whether
    anything changed."""
    targets = set(record.regions)
    assigned = _by_service(world)
    events: list[str] = []
    recovered_before = sum(1 for p in record.services.values() if p.settled == "recovered")
    changed = False
    for name, progress in record.services.items():
        if progress.settled in ("recovered", "deleted"):
            continue
        found = world.services.get(name)
        if found is None:
            progress.settled = "deleted"
            events.append(f"{name}: deleted during the drill")
            continue
        service = found[0]
        progress.replicas = service.spec.replicas
        ready = 0
        for region, a in assigned.get(name, {}).items():
            if region in targets or a.draining or region not in world.alive:
                continue
            ready += min(a.replicas, ready_count(world, region, name, a.runtime.generation))
        placement = world.placements.get(name)
        before = progress.settled
        changed |= progress.ready_elsewhere != ready
        progress.ready_elsewhere = ready
        if placement is not None:
            progress.reason, progress.message = placement[0].reason, placement[0].message
        if ready >= progress.replicas:
            progress.settled = "recovered"
            progress.recovery_s = round(_seconds(record.cordoned_at, now), 3)
            changed = True
            continue
        moved_off = placement is not None and not (set(placement[0].regions) & targets)
        placed = sum(placement[0].regions.values()) if placement is not None else 0
        if moved_off and placed == 0:
            progress.settled = "unrecoverable"
        elif moved_off and ready >= placed:
            progress.settled = "degraded"
        else:
            progress.settled = None
        if progress.settled != before and progress.settled is not None:
            events.append(f"{name}: {progress.settled} ({progress.reason}: {progress.message})")
    recovered = sum(1 for p in record.services.values() if p.settled == "recovered")
    if recovered and not recovered_before:
        events.append("first service recovered")
    if recovered == len(record.services) and recovered > recovered_before:
        events.append(f"all {recovered} affected service(s) recovered")
    return events, changed or bool(events)


def check_residency(record: DrillRecord, world: World, now: datetime) -> list[str]:
    """Record every assignment (not draining) in a region residency rejects for its
    service; returns the new ones as events. Checks all services, not only the
    affected: a drill must not push anything anywhere it may not be."""
    seen = {(v.service, v.region) for v in record.violations}
    evals = evaluations(world, now)
    events: list[str] = []
    for (region, service), a in sorted(world.assignments.items()):
        evaluation = evals.get(service)
        if a.draining or evaluation is None or (service, region) in seen:
            continue
        verdict = next((v for v in evaluation.verdicts if v.region == region), None)
        if verdict is not None and verdict.allowed:
            continue
        country = world.regions[region].country if region in world.regions else None
        reasons = list(verdict.reasons) if verdict else ["region unknown to residency"]
        record.violations.append(
            Violation(service=service, region=region, country=country, at=now, reasons=reasons)
        )
        events.append(f"RESIDENCY VIOLATION: {service} assigned to {region} ({country})")
    return events


def restored(record: DrillRecord, world: World) -> bool:
    """The target regions are ready again and every affected service is Running."""
    tag = drill_tag(record.id)
    for name in record.regions:
        region = world.regions.get(name)
        if region is None or name not in world.alive:
            return False
        if region.cordon is not None and region.cordon.by == tag:
            return False
    assigned = _by_service(world)
    for name, progress in record.services.items():
        found = world.services.get(name)
        if found is None or progress.settled == "deleted":
            continue
        placement = world.placements.get(name)
        assignments = assigned.get(name, {})
        status = service_status(
            found[0],
            placement[0] if placement else None,
            assignments,
            world.reports_of(name, assignments),
            world.alive,
        )
        if status["phase"] != Phase.RUNNING.value:
            return False
    return True


def _end(record: DrillRecord, now: datetime, state: DrillState, message: str) -> None:
    record.state = state
    record.phase = "done"
    record.ended_at = now
    record.outcome_message = message
    record.note(now, f"drill {state.value}: {message}")


async def abort(store: Store, drill_id: str, *, by: str, reason: str = "") -> DrillRecord | None:
    """Abort a drill at once from any replica: the record says aborted, its cordons
    are lifted and its locks released in one txn. None if there is no such drill;
    the record as it stands if it had already ended."""
    for _ in range(ABORT_RETRIES):
        found = await store_drills.get(store, drill_id)
        if found is None:
            return None
        record, revision = found
        if record.state.terminal:
            return record
        now = datetime.now(UTC)
        was_cordoned = record.cordoned_at is not None and record.uncordoned_at is None
        if was_cordoned:
            record.uncordoned_at = now
        _end(
            record, now, DrillState.ABORTED, f"aborted by {by}" + (f": {reason}" if reason else "")
        )
        try:
            await store_drills.transition(
                store,
                record,
                revision,
                uncordon=True,
                release=True,
                audit=Change(
                    "drill.abort", keys.drill(drill_id), actor=by, details={"reason": reason}
                ),
            )
        except Conflict:
            continue  # the runner wrote meanwhile: read again and abort that
        return record
    raise Conflict(drill_id, None, None)


class DrillRunner:
    """Drives every running drill while this replica leads; idle otherwise."""

    def __init__(
        self,
        store: Store,
        election: LeaderElection,
        *,
        poll_s: float = 0.2,
        scan_s: float = 0.5,
        write_every_s: float = 0.5,
    ) -> None:
        self.store = store
        self.election = election
        self.poll_s = poll_s
        self.scan_s = scan_s
        self.write_every_s = write_every_s
        self._poked = asyncio.Event()
        self._ended: set[str] = set()
        self._last_write: dict[str, float] = {}

    def poke(self) -> None:
        """A drill was created: look for it now rather than at the next scan."""
        self._poked.set()

    async def run(self) -> None:
        """Start a task per running drill while leader; cancel them when not."""
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                if self.election.is_leader:
                    try:
                        records, _ = await store_drills.list_all(self.store)
                    except StoreError as exc:
                        log.warning("drills: cannot list drills: %s", exc)
                        records = []
                    for record, _ in records:
                        task = tasks.get(record.id)
                        if record.state is DrillState.RUNNING and (task is None or task.done()):
                            tasks[record.id] = asyncio.create_task(
                                self._drive(record.id), name=f"drill-{record.id}"
                            )
                else:
                    for task in tasks.values():
                        task.cancel()
                for drill_id in [d for d, t in tasks.items() if t.done()]:
                    del tasks[drill_id]
                self._poked.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.scan_s):
                        await self._poked.wait()
        finally:
            for task in tasks.values():
                task.cancel()
            if tasks:
                # Bounded: a stuck etcd call must not hold a shutdown hostage.
                await asyncio.wait(tasks.values(), timeout=2)

    async def _drive(self, drill_id: str) -> None:
        last = ""
        while self.election.is_leader and drill_id not in self._ended:
            try:
                sentence = await self.step(drill_id)
            except StoreError as exc:
                sentence = f"{drill_id}: step failed, retrying: {exc}"
            except Exception:
                log.exception("drill %s: step crashed; retrying in 1 s", drill_id)
                sentence = f"{drill_id}: step crashed"
                await asyncio.sleep(1)
            if sentence != last:
                log.info("drill: %s", sentence)
            last = sentence
            await asyncio.sleep(self.poll_s)

    async def step(self, drill_id: str) -> str:
        """One step of one drill; returns what it did, as a sentence."""
        found = await store_drills.get(self.store, drill_id)
        if found is None:
            self._ended.add(drill_id)
            return f"{drill_id}: no such drill"
        record, revision = found
        if record.state.terminal:
            self._ended.add(drill_id)
            return f"{drill_id}: {record.state.value}"
        if not self.election.is_leader:
            return f"{drill_id}: not leader, not acting"
        now = datetime.now(UTC)
        identity = self.election.identity
        resumed: list[str] = []
        if record.leader and record.leader != identity:
            # Noted until a write lands: every write of ours records us as the leader.
            resumed.append(
                f"resumed by leader {identity} (was {record.leader}); times measured "
                "across the gap are upper bounds"
            )
        record.leader = identity
        if record.phase == "cordoning":
            for event in resumed:
                record.note(now, event)
            return await self._cordon(record, revision, now)
        world = await read_world(self.store)
        events = resumed + check_residency(record, world, now)
        if record.phase == "evacuating":
            return await self._evacuate(record, revision, world, now, events)
        return await self._restore(record, revision, world, now, events)

    async def _write(
        self,
        record: DrillRecord,
        revision: int,
        sentence: str,
        *,
        cordon: Cordon | None = None,
        uncordon: bool = False,
        release: bool = False,
        force: bool = True,
    ) -> str:
        """Write the record (leader-fenced); unforced writes are throttled."""
        last = self._last_write.get(record.id, 0.0)
        if not force and time.monotonic() - last < self.write_every_s:
            return sentence
        fence: list[Cond] = [self.election.fence()]
        # The cordon and the end are audited: residency evidence names the drills that
        # moved a data class, and their windows, from the log alone.
        audit = None
        actor = f"controller:{self.election.identity}"
        details: dict[str, Any]
        if cordon is not None:
            details = {"regions": record.regions}
            audit = Change("drill.cordon", keys.drill(record.id), actor=actor, details=details)
        elif record.state.terminal:
            details = {"regions": record.regions, "state": str(record.state)}
            audit = Change("drill.end", keys.drill(record.id), actor=actor, details=details)
        try:
            await store_drills.transition(
                self.store,
                record,
                revision,
                cordon=cordon,
                uncordon=uncordon,
                release=release,
                conditions=fence,
                audit=audit,
            )
        except Conflict:
            return f"{record.id}: write lost a race (aborted, or no longer leader); rereading"
        self._last_write[record.id] = time.monotonic()
        if record.state.terminal:
            self._ended.add(record.id)
        return sentence

    async def _cordon(self, record: DrillRecord, revision: int, now: datetime) -> str:
        if _seconds(record.created_at, now) > record.request.max_duration_s:
            _end(record, now, DrillState.FAILED, "could not cordon within max_duration_s")
            return await self._write(record, revision, f"{record.id}: failed", release=True)
        world = await read_world(self.store)
        expected = {s.service: s.outcome for s in record.plan.services}
        record.services = {
            name: ServiceProgress(replicas=svc.spec.replicas, expected=expected.get(name))
            for name, (svc, _) in sorted(world.services.items())
            if svc.spec.replicas > 0 and in_targets(world, name, record.regions)
        }
        record.cordoned_at = now
        record.phase = "evacuating"
        regions = ", ".join(record.regions)
        record.note(now, f"cordoned {regions}; {len(record.services)} service(s) affected")
        cordon = Cordon(by=drill_tag(record.id), reason=f"failover drill {record.id}", at=now)
        try:
            return await self._write(
                record, revision, f"{record.id}: cordoned {regions}", cordon=cordon
            )
        except RegionNotFound as exc:
            record.cordoned_at = None
            _end(record, now, DrillState.FAILED, f"region {exc} no longer exists")
            return await self._write(record, revision, f"{record.id}: failed", release=True)

    async def _evacuate(
        self, record: DrillRecord, revision: int, world: World, now: datetime, events: list[str]
    ) -> str:
        observed, changed = observe(record, world, now)
        for event in events + observed:
            record.note(now, event)
        progress = record.services.values()
        surprises = [
            n
            for n, p in record.services.items()
            if p.settled == "unrecoverable" and n not in record.accepted_unrecoverable
        ]
        limit = record.request.abort_on.unrecoverable
        elapsed = _seconds(record.cordoned_at, now)
        reason = ""
        if len(surprises) > limit:
            reason = (
                f"{len(surprises)} unrecoverable service(s) ({', '.join(surprises)}) "
                f"exceed abort_on.unrecoverable={limit}"
            )
        elif elapsed > record.request.max_duration_s:
            waiting = sum(1 for p in progress if p.settled is None)
            reason = (
                f"max_duration_s ({record.request.max_duration_s:g} s) reached with "
                f"{waiting} service(s) not recovered"
            )
        if reason:
            record.uncordoned_at = now
            _end(record, now, DrillState.ABORTED, reason + "; regions uncordoned")
            return await self._write(
                record, revision, f"{record.id}: aborted: {reason}", uncordon=True, release=True
            )
        if all(p.settled is not None for p in progress):
            if record.request.failback:
                record.phase = "failback"
                record.uncordoned_at = now
                record.note(now, f"failback: uncordoned {', '.join(record.regions)}")
                return await self._write(
                    record, revision, f"{record.id}: evacuated; failing back", uncordon=True
                )
            _end(
                record,
                now,
                DrillState.COMPLETED,
                "evacuated; no failback requested, the regions stay cordoned",
            )
            return await self._write(record, revision, f"{record.id}: completed", release=True)
        recovered = sum(1 for p in progress if p.settled == "recovered")
        sentence = f"{record.id}: {recovered}/{len(record.services)} recovered"
        return await self._write(record, revision, sentence, force=changed or bool(events))

    async def _restore(
        self, record: DrillRecord, revision: int, world: World, now: datetime, events: list[str]
    ) -> str:
        for event in events:
            record.note(now, event)
        if restored(record, world):
            record.restored_at = now
            restore_s = _seconds(record.uncordoned_at, now)
            record.note(
                now, f"restored: regions ready, affected services Running ({restore_s:.2f} s)"
            )
            violations = len(record.violations)
            _end(record, now, DrillState.COMPLETED, f"{violations} residency violation(s)")
            return await self._write(record, revision, f"{record.id}: completed", release=True)
        if _seconds(record.uncordoned_at, now) > record.request.max_duration_s:
            _end(
                record,
                now,
                DrillState.FAILED,
                f"not restored within max_duration_s ({record.request.max_duration_s:g} s) "
                "after failback",
            )
            return await self._write(record, revision, f"{record.id}: failed", release=True)
        return await self._write(
            record, revision, f"{record.id}: waiting for the restore", force=bool(events)
        )
