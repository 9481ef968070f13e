"""Practice drills: the leader runs every drill schedule when it is due
(docs/drills.md#practice-runs).

While this replica leads, two loops read the schedules, their runs and pending
on-demand requests from etcd every second, apart so that a slow blocking check or
webhook of one schedule never delays another run's safety stop:

- following (every running run at once, each on its own): evaluate its outcome
  checks; a failure aborts the drill (its regions are uncordoned at once) and ends
  the run INTERRUPTED with the check and its value; a drill that ended gives
  SUCCEEDED (completed, no residency violation) or FAILED;
- starting (one schedule after another): for a schedule with no running run that is
  due (an on-demand request, or the clock inside an allowed window whose occurrence
  no run has used, and not right after a BLOCKED attempt): refuse during an incident
  (a region lost, a region cordoned or held by another drill, another drill or a
  rollout touching the same services) or on a failing blocking check (BLOCKED,
  retried `retry_s` later in the window); refuse when the drill plan leaves a service
  without compliant room (CAPACITY_CHECK_FAILED, nothing cordoned); else create the
  live drill and the RUNNING run in one leader-fenced txn, which the drill runner
  (federation.drills.runner) then drives.

Everything lives in etcd, so a new leader carries on every run where the old one
stopped. The clock is injected (`clock`), so tests move time instead of waiting for it;
the drill itself measures in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import aiohttp

from federation.drills import checks as practice_checks
from federation.drills.runner import abort
from federation.model.drill import DrillRecord, DrillRequest, DrillState, new_drill_id
from federation.model.schedule import CheckResult, DrillSchedule, Outcome, PracticeRun, new_run_id
from federation.planning.practice import blocked_reason, occurrence, preflight
from federation.store import Cond, Conflict, Op, Store, StoreError, keys
from federation.store import drills as store_drills
from federation.store import regions as store_regions
from federation.store import schedules as store_schedules
from federation.store.election import LeaderElection
from federation.store.envelope import KeyProvider
from federation.store.world import read_world
from federation.telemetry import metrics

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class PracticeScheduler:
    """Runs drill schedules while this replica leads; idle otherwise."""

    def __init__(
        self,
        store: Store,
        election: LeaderElection,
        *,
        clock: Clock = utc_now,
        keyring: KeyProvider | None = None,
        region_ttl: float = 10.0,
        poll_s: float = 1.0,
        report_url: str = "",
    ) -> None:
        self.store = store
        self.election = election
        self.clock = clock
        self.keyring = keyring
        self.region_ttl = region_ttl
        self.poll_s = poll_s
        self.report_url = report_url.rstrip("/")
        self._poked = asyncio.Event()
        # Runs one of the two loops is working on: the other leaves them alone.
        self._busy: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    def poke(self) -> None:
        """An on-demand run was asked for: look for runs to start now."""
        self._poked.set()

    async def run(self) -> None:
        """While leader: follow running runs every `poll_s`, and, apart from that (so a
        slow blocking check or webhook never delays a safety stop), start what is due
        every `poll_s` or when poked."""
        self._session = aiohttp.ClientSession()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._loop("follow", self.follow, None))
                tasks.create_task(self._loop("start", self.start_due, self._poked))
        finally:
            await self._session.close()

    async def _loop(
        self,
        name: str,
        step: Callable[[], Coroutine[Any, Any, list[str]]],
        wake: asyncio.Event | None,
    ) -> None:
        last: list[str] = []
        while True:
            if self.election.is_leader:
                try:
                    sentences = await step()
                except StoreError as exc:
                    sentences = [f"practice: {name} failed, retrying: {exc}"]
                except Exception:
                    log.exception("practice: %s crashed; retrying", name)
                    sentences = [f"practice: {name} crashed"]
                if sentences != last and sentences:
                    log.info("practice: %s", "; ".join(sentences))
                last = sentences
            elif wake is None:
                metrics.clear_practice()
            if wake is None:
                await asyncio.sleep(self.poll_s)
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await wake.wait()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def tick(self) -> list[str]:
        """One look at every schedule: follow, then start; what was done, as sentences."""
        return [*await self.follow(), *await self.start_due()]

    async def follow(self) -> list[str]:
        """Every running run followed at once (outcome checks, the drill's end), and
        events a previous leader did not get to send."""
        now = self.clock()
        schedules, _ = await store_schedules.list_all(self.store)
        by_name = {s.name: s for s, _ in schedules}
        runs = await store_schedules.runs(self.store)
        # Each region's last success, kept apart from the (pruned) runs.
        metrics.observe_practice(await store_schedules.last_successes(self.store), now.timestamp())
        looks = [
            self._guarded(run.schedule, self._look(by_name, run, revision))
            for run, revision in runs
            if run.outcome is Outcome.RUNNING or (run.schedule in by_name and self._unsent(run))
        ]
        done = await asyncio.gather(*looks, return_exceptions=True)
        return [
            s if isinstance(s, str) else f"practice: store error: {s}"
            for s in done
            if not isinstance(s, str) or s
        ]

    async def start_due(self) -> list[str]:
        """Each schedule with no running run that is due (or asked for), started or
        refused, one after another."""
        now = self.clock()
        schedules, _ = await store_schedules.list_all(self.store)
        runs = await store_schedules.runs(self.store)
        requests = await store_schedules.requests(self.store)
        active = {r.schedule for r, _ in runs if r.outcome is Outcome.RUNNING}
        sentences: list[str] = []
        names = {s.name for s, _ in schedules}
        for orphan in sorted({r.schedule for r, _ in runs} - names - active):
            fence = [self.election.fence()]
            if await store_schedules.delete_orphan_runs(self.store, orphan, conditions=fence):
                sentences.append(f"{orphan}: runs of the deleted schedule removed")
        for schedule, _ in schedules:
            if schedule.name in active:
                continue
            request = requests.get(schedule.name)
            mine = [r for r, _ in runs if r.schedule == schedule.name]
            if request is not None:
                start = self._start(schedule, "on-demand", now, request[1])
            elif self._due(schedule, now, mine):
                start = self._start(schedule, "schedule", now, None)
            else:
                continue
            sentences.append(await self._guarded(schedule.name, start))
        return sentences

    @staticmethod
    async def _guarded(name: str, step: Coroutine[Any, Any, str]) -> str:
        """One schedule's step; a failure of it is logged and counted, and the others
        go on (etcd being down still ends the tick)."""
        try:
            return await step
        except StoreError:
            raise
        except Exception:
            log.exception("practice: schedule %s: step failed; the others go on", name)
            metrics.practice_errors.add(1)
            return f"{name}: step failed (logged)"

    async def _look(
        self, by_name: dict[str, DrillSchedule], run: PracticeRun, revision: int
    ) -> str:
        if run.id in self._busy:
            return ""  # the start of it is reading its checks this moment
        self._busy.add(run.id)
        try:
            # Read again now that it is ours: the list may predate a start that has
            # since sent its events (they would go twice).
            current = await store_schedules.run(self.store, run.schedule, run.id)
            if current is None:
                return ""
            run, revision = current
            schedule = by_name.get(run.schedule)
            if schedule is not None and self._unsent(run):
                # What a previous leader did not get to send (it stopped in between).
                revision = await self._notify(schedule, run, revision)
            if run.outcome is Outcome.RUNNING:
                return await self._follow(schedule, run, revision)
            return ""
        finally:
            self._busy.discard(run.id)

    def _due(self, schedule: DrillSchedule, now: datetime, runs: list[PracticeRun]) -> bool:
        occ = occurrence(schedule, now)
        if not schedule.enabled or occ is None or blocked_reason(schedule, now) is not None:
            return False
        for run in runs:
            if run.trigger != "schedule" or occurrence(schedule, run.started_at) != occ:
                continue
            if run.outcome is not Outcome.BLOCKED:
                return False  # this occurrence has had its run
            if (now - run.started_at).total_seconds() < schedule.retry_s:
                return False
        return True

    async def _start(
        self, schedule: DrillSchedule, trigger: str, now: datetime, request_rev: int | None
    ) -> str:
        run_id = new_run_id(now)
        # The follow loop leaves the new run alone until its start is done (its events
        # sent, its first outcome reading taken): nothing is sent twice.
        self._busy.add(run_id)
        try:
            return await self._start_run(schedule, trigger, now, request_rev, run_id)
        finally:
            self._busy.discard(run_id)

    async def _start_run(
        self,
        schedule: DrillSchedule,
        trigger: str,
        now: datetime,
        request_rev: int | None,
        run_id: str,
    ) -> str:
        run = PracticeRun(
            id=run_id,
            schedule=schedule.name,
            trigger="on-demand" if trigger == "on-demand" else "schedule",
            regions=list(schedule.regions),
            outcome=Outcome.RUNNING,
            started_at=now,
            notify=bool(schedule.notifications.webhooks),
        )
        also = [Op.delete(keys.drill_run_request(schedule.name))] if request_rev else []
        world = await read_world(self.store)
        plan, reason = await asyncio.to_thread(preflight, world, schedule, self.region_ttl)
        affected = {s.service for s in plan.services}
        if reason is None:
            reason = await self._drill_overlap(schedule, affected)
        if reason is None:
            run.checks_before = await practice_checks.evaluate_all(
                self.session, list(schedule.blocking_checks), "blocking", now
            )
            failing = [c for c in run.checks_before if not c.ok]
            if failing:
                reason = "blocking check(s) failing: " + "; ".join(
                    f"{c.name} = {c.value} ({c.message})" for c in failing
                )
        if reason is not None:
            return await self._end_new(schedule, run, Outcome.BLOCKED, reason, also)
        short = [s for s in plan.services if s.outcome in ("unrecoverable", "degraded")]
        if short:
            run.services = [s.service for s in short]
            reason = "the drill plan leaves service(s) without compliant room: " + "; ".join(
                f"{s.service} ({s.reason}: {s.message})" for s in short
            )
            return await self._end_new(schedule, run, Outcome.CAPACITY_CHECK_FAILED, reason, also)
        started = datetime.now(UTC)
        drill = DrillRecord(
            id=new_drill_id(),
            regions=list(schedule.regions),
            state=DrillState.RUNNING,
            phase="cordoning",
            request=DrillRequest(
                regions=list(schedule.regions),
                mode="live",
                max_duration_s=schedule.duration_s,
                failback=schedule.fail_back,
            ),
            created_at=started,
            created_by=f"schedule:{schedule.name}",
            plan=plan,
            schedule=schedule.name,
            checks_before=run.checks_before,
        )
        drill.note(started, f"practice run {run.id} of schedule {schedule.name} ({trigger})")
        run.drill_id = drill.id
        run.message = f"drill {drill.id} started"
        run_key = keys.drill_run(schedule.name, run.id)
        try:
            await store_drills.create(
                self.store,
                drill,
                conditions=[self.election.fence(), Cond.absent(run_key)],
                also=[Op.put(run_key, run.model_dump(mode="json")), *also],
            )
        except store_drills.RegionHeld as exc:
            reason = f"region {exc.region} is in drill {exc.drill_id}"
            return await self._end_new(schedule, run, Outcome.BLOCKED, reason, also)
        except Conflict:
            return f"{schedule.name}: start lost a race (no longer leader?)"
        sentence = f"{schedule.name}: {run.id} started drill {drill.id} ({trigger})"
        await self._notify(schedule, run, None)
        # The outcome checks' first reading, at the start: a drill may end before the
        # next tick, and its report must still say what they were during it.
        entry = await self.store.get(run_key)
        if entry is not None:
            sentence += "; " + await self._follow(schedule, run, entry.revision)
        return sentence

    async def _drill_overlap(self, schedule: DrillSchedule, services: set[str]) -> str | None:
        held = await store_drills.holders(self.store)
        for region in schedule.regions:
            if region in held:
                return f"region {region} is in drill {held[region]}"
        drills, _ = await store_drills.list_all(self.store)
        for record, _ in drills:
            if record.state is not DrillState.RUNNING:
                continue
            theirs = set(record.services) | {s.service for s in record.plan.services}
            shared = sorted(theirs & services)
            if shared:
                return f"drill {record.id} touches the same service(s): {', '.join(shared)}"
        return None

    async def _end_new(
        self,
        schedule: DrillSchedule,
        run: PracticeRun,
        outcome: Outcome,
        reason: str,
        also: list[Op],
    ) -> str:
        run.outcome, run.message, run.ended_at = outcome, reason, run.started_at
        try:
            revision = await store_schedules.write_run(
                self.store, run, None, conditions=[self.election.fence()], also=also
            )
        except Conflict:
            return f"{schedule.name}: not recorded (no longer leader?)"
        metrics.practice_runs.add(1, {"outcome": outcome.value})
        await self._notify(schedule, run, revision)
        return f"{schedule.name}: {outcome.value}: {reason}"

    async def _follow(self, schedule: DrillSchedule | None, run: PracticeRun, revision: int) -> str:
        now = self.clock()
        found = await store_drills.get(self.store, run.drill_id or "")
        if found is None:
            return await self._finish(schedule, run, revision, Outcome.FAILED, "its drill is gone")
        drill, drill_rev = found
        if drill.state.terminal:
            if drill.state is DrillState.COMPLETED and not drill.violations:
                outcome = Outcome.SUCCEEDED
            elif drill.state is DrillState.ABORTED and any(not c.ok for c in run.checks_during):
                outcome = Outcome.INTERRUPTED
            else:
                outcome = Outcome.FAILED
            message = f"drill {drill.id} {drill.state.value}: {drill.outcome_message}"
            return await self._finish(schedule, run, revision, outcome, message)
        elsewhere = [r for r in await store_regions.lost(self.store) if r not in run.regions]
        if elsewhere:
            # A real outage: the drilled regions' capacity is needed now.
            reason = f"region {elsewhere[0]} is lost (unreachable) during the run"
            return await self._interrupt(schedule, run, revision, drill.id, reason)
        if schedule is None or not schedule.outcome_checks:
            return f"{run.schedule}: {run.id} running (drill {drill.id})"
        results = await practice_checks.evaluate_all(
            self.session, list(schedule.outcome_checks), "outcome", now
        )
        changed = practice_checks.record(run, results)
        failing = [c for c in results if not c.ok]
        if changed:
            try:
                revision = await store_schedules.write_run(
                    self.store, run, revision, conditions=[self.election.fence()]
                )
            except Conflict:
                return f"{run.schedule}: {run.id} write lost a race; rereading"
            await self._note_checks(drill, drill_rev, run.checks_during)
        if not failing:
            return f"{run.schedule}: {run.id} running (drill {drill.id}), outcome checks pass"
        reason = "outcome check(s) failed: " + "; ".join(
            f"{c.name} = {c.value} ({c.message})" for c in failing
        )
        return await self._interrupt(schedule, run, revision, drill.id, reason)

    async def _interrupt(
        self,
        schedule: DrillSchedule | None,
        run: PracticeRun,
        revision: int,
        drill_id: str,
        reason: str,
    ) -> str:
        if not self.election.is_leader:
            return f"{run.schedule}: {run.id} not aborted: no longer leader"
        await abort(self.store, drill_id, by=f"schedule:{run.schedule}", reason=reason)
        return await self._finish(
            schedule, run, revision, Outcome.INTERRUPTED, reason + "; aborted and failed back"
        )

    async def _note_checks(
        self, drill: DrillRecord, revision: int, during: list[CheckResult]
    ) -> None:
        """The checks seen during the run, into the drill's record (for its report);
        a lost race is retried on the next change."""
        drill.checks_during = list(during)
        with contextlib.suppress(Conflict):
            await store_drills.transition(
                self.store, drill, revision, conditions=[self.election.fence()]
            )

    async def _finish(
        self,
        schedule: DrillSchedule | None,
        run: PracticeRun,
        revision: int,
        outcome: Outcome,
        message: str,
    ) -> str:
        run.outcome, run.message, run.ended_at = outcome, message, self.clock()
        try:
            revision = await store_schedules.write_run(
                self.store, run, revision, conditions=[self.election.fence()]
            )
        except Conflict:
            return f"{run.schedule}: {run.id} write lost a race; rereading"
        metrics.practice_runs.add(1, {"outcome": outcome.value})
        if schedule is not None:
            await self._notify(schedule, run, revision)
        return f"{run.schedule}: {run.id} {outcome.value}: {message}"

    def _unsent(self, run: PracticeRun) -> bool:
        return run.notify and any(e not in run.notified for e in practice_checks.events(run))

    async def _notify(self, schedule: DrillSchedule, run: PracticeRun, revision: int | None) -> int:
        """Send the run's events not sent yet; mark them sent (attempted) in its record.
        Returns the record's revision after (0 when it is not known)."""
        webhooks = schedule.notifications.webhooks
        pending = [e for e in practice_checks.events(run) if e not in run.notified]
        if not webhooks or not pending or not run.notify:
            return revision or 0
        signing = [
            await practice_checks.signing_key(self.store, self.keyring, w.secret) for w in webhooks
        ]
        for event in pending:  # in order; each to every webhook at once
            body = practice_checks.event_body(event, run, self.report_url)
            await asyncio.gather(
                *(
                    practice_checks.deliver(self.session, webhook, key, body)
                    for webhook, key in zip(webhooks, signing, strict=True)
                )
            )
            run.notified.append(event)
        if revision is None:
            found = await self.store.get(keys.drill_run(run.schedule, run.id))
            revision = found.revision if found else None
        if revision is None:
            return 0
        try:
            return await store_schedules.write_run(
                self.store, run, revision, conditions=[self.election.fence()]
            )
        except Conflict:
            return revision  # the next write of this run fails too, and rereads
