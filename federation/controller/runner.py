"""The reconcile loop: while this replica leads, plan what changed and write it.

Level-triggered, but incremental. The server's mirror of the store (one watch,
federation.store.mirror) tells the controller which keys changed; a pass plans the
services those changes touch (their spec, placement, assignments or rebalance request,
a lost region's services, services whose ready counts a report changed), plus the
ones still moving (grace periods, drains, rollouts). Capacity, phases and residency
rejections of all the others come from the ledger (federation.controller.ledger). A
full pass plans everything: on taking the lead, after a re-list, when regions or
residency policies change, and every `full_resync_s` anyway, so nothing missed can
last. Passes plan and write in chunks, parsed and planned in worker threads, so a
pass over 100,000 services neither holds them all in memory nor stalls the API.

Writes go through federation.controller.writes (batched, fenced by the leader key
and every revision the plans were made from, audited). Each pass returns what it did
as one sentence (federation.controller.summary), which `run` logs.

The election that says whether this replica leads is run by the server beside the
controller (federation.api.app), not by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from federation.controller.ledger import Held, Ledger, holding
from federation.controller.observe import PassObserver
from federation.controller.summary import PassSummary
from federation.controller.writes import Writer, Written
from federation.model.region import HeartbeatRecord
from federation.model.service import PlacementRecord, ServiceRecord
from federation.model.status import service_phase
from federation.planning.plan import ServicePlan, plan
from federation.planning.world import World
from federation.residency.evaluate import Evaluation
from federation.residency.snapshot import Snapshot
from federation.runtime import release_memory
from federation.scheduler import PLACED, SCALED_TO_ZERO
from federation.store import Store, StoreError, keys
from federation.store import policies as store_policies
from federation.store.election import LeaderElection
from federation.store.mirror import Mirror
from federation.store.world import (
    MIRROR_CACHED,
    MIRROR_GROUPED,
    MIRROR_PACKED,
    MIRRORED,
    world_of,
)
from federation.telemetry import metrics
from federation.telemetry.setup import tracer

log = logging.getLogger(__name__)

T = TypeVar("T")

_CHUNK = 500  # services parsed and planned at a time (bounds the memory a pass needs)
# Changes to these mean "plan everything": region identity, cordons and membership,
# and residency. A region's loss is handled on its own (its services, not all).
_EVERYTHING = (keys.REGIONS, keys.POLICIES, keys.GROUPS, keys.RESIDENCY_FENCE)


class Controller:
    """The reconcile loop of one server replica; it acts only while `election` says
    this replica leads. Run it with `run()`, stop it with `finish()` (or cancel)."""

    def __init__(
        self,
        store: Store,
        election: LeaderElection,
        *,
        region_ttl: float,
        resync_s: float = 5.0,
        busy_resync_s: float = 0.5,
        full_resync_s: float = 60.0,
        mirror: Mirror | None = None,
        chunk: int = _CHUNK,
    ) -> None:
        self.store = store
        self.election = election
        self.region_ttl = region_ttl
        self.resync_s = resync_s
        self.busy_resync_s = busy_resync_s
        self.full_resync_s = full_resync_s
        self._full_every = full_resync_s
        self.chunk = chunk
        self._own_mirror = mirror is None
        self.mirror = mirror or Mirror(
            store, MIRRORED, cached=MIRROR_CACHED, packed=MIRROR_PACKED, grouped=MIRROR_GROUPED
        )
        self.mirror.subscribe(self._changed)
        self.ledger = Ledger()
        self.writer = Writer(store, election)
        self._finishing = False
        self._dirty = asyncio.Event()
        self._names: set[str] = set()  # services some change touched since the last pass
        self._lost: set[str] = set()  # regions whose lease went since the last pass
        self._lost_at: dict[str, datetime] = {}  # and when (see `_note_lost`)
        self._full = True
        self._last_full = 0.0
        self._busy: set[str] = set()
        self._busy_due = 0.0
        self._written: dict[str, int] = {}  # service -> revision of this pass's write
        # service -> revisions of changes to what the controller writes, since the last
        # pass: its own writes' echoes, or someone else's change
        self._maybe_echo: dict[str, set[int]] = {}
        self._capacity: dict[str, tuple[float, int]] = {}
        self._residency: Snapshot | None = None
        self.passes = 0
        self.full_passes = 0
        self.last_planned = 0
        self.planned_total = 0  # services planned, over all passes
        self.last_sentences: list[str] = []  # the last pass's, one per service written
        self.last_summary = PassSummary("incremental")
        self.observe = PassObserver(region_ttl=region_ttl)

    def finish(self) -> None:
        """Ask `run` to return once the pass under way (if any) is written (the
        graceful stop: its writes land whole, and their sentence is logged)."""
        self._finishing = True
        self._dirty.set()
        self.election.changed.set()

    @property
    def moving(self) -> bool:
        """Is something still in motion (a grace period, a drain or a rollout)? Then
        the next pass comes after `busy_resync_s`, not `resync_s`."""
        return bool(self._busy)

    async def close(self) -> None:
        """Stop the mirror this controller made itself, if it made one."""
        if self._own_mirror:
            await self.mirror.stop()

    def poke(self) -> None:
        """Ask for a pass soon (used by the API after writes it knows matter)."""
        self._dirty.set()

    def _changed(self, key: str, revision: int) -> None:
        """The mirror applied a change: note what it touches (no I/O, no parsing)."""
        if not self.election.is_leader:
            # Whoever leads next starts from a full pass, with policies read afresh.
            self._full = True
            self._residency = None
            return
        if key == "" or key.startswith(_EVERYTHING):
            self._full = True
            self._residency = None
        elif key.startswith(keys.SERVICES):
            self._names.add(key.removeprefix(keys.SERVICES))
        elif key.startswith((keys.PLACEMENTS, keys.REBALANCE, keys.ASSIGNMENTS)):
            # What the controller writes itself. The echo of a write can arrive before
            # the write's answer does, so whether it was one is decided at the next
            # pass's start, when every answer is in (`_echoes_settled`).
            name = key.rsplit("/", 1)[1]
            if self._written.get(name) == revision:
                return
            self._maybe_echo.setdefault(name, set()).add(revision)
        elif key.startswith(keys.ALIVE):
            region = key.removeprefix(keys.ALIVE)
            if self.mirror.has(keys.ALIVE, region):
                self._full = True  # back (or new): failback and waiting services
                self._lost_at.pop(region, None)
            else:
                self._lost.add(region)
                # etcd deletes the key when the lease expires; the watch brings it
                # within milliseconds: failover grace counts from here.
                self._lost_at.setdefault(region, datetime.now(UTC))
        elif key.startswith(keys.REPORTS):
            # reports/{region}/{service}, written only when its counts change.
            _, slash, service = key.removeprefix(keys.REPORTS).partition("/")
            if not slash:
                return
            self._names.add(service)
        else:
            return  # heartbeats: capacity is compared on every pass
        self._dirty.set()

    async def run(self) -> None:
        """Reconcile while this replica leads, until `finish()`; log each pass's
        sentence (INFO when it wrote or tried to, DEBUG when it had nothing to do)."""
        while not self._finishing:
            if not self.election.is_leader:
                self.observe.stopped_leading()
                self._full = True
                self.election.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self.election.changed.wait()
                continue
            self._dirty.clear()
            try:
                sentence = await self.reconcile()
            except StoreError as exc:
                log.warning("reconcile pass failed: %s", exc)
                self._full = True
                busy = True
            else:
                busy = self.moving
                level = logging.INFO if self.last_summary.acted else logging.DEBUG
                log.log(level, "controller: %s", sentence)
            if self._finishing:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.busy_resync_s if busy else self.resync_s):
                    await self._dirty.wait()

    async def reconcile(self) -> str:
        """One pass: plan and write what changed (or everything, on a full pass).
        Returns what it did, as a sentence (`last_summary` holds its counts)."""
        started = time.perf_counter()
        with tracer().start_as_current_span("controller.reconcile"):
            try:
                summary = await self._reconcile()
            except Exception:
                metrics.reconcile_passes.add(1, {"outcome": "failed"})
                raise
        took = time.perf_counter() - started
        kind = summary.kind
        if kind == "full":
            # A full pass costs O(services): spread them out so that they take at
            # most a twentieth of the controller's time, however big the world.
            self._full_every = max(self.full_resync_s, 20 * took)
        metrics.reconcile_passes.add(1, {"outcome": "ok", "kind": kind})
        metrics.reconcile_duration.record(took, {"kind": kind})
        return summary.sentence

    async def _reconcile(self) -> PassSummary:
        await self.mirror.sync()
        # Every echo of earlier writes has been applied by now.
        self._echoes_settled()
        now = datetime.now(UTC)
        full = self._full or time.monotonic() - self._last_full >= self._full_every
        if self._residency is None or full:
            self._residency = store_policies.snapshot_of(self.mirror)
        residency = self._residency
        freed = False
        grew = self._capacity_grew()  # compared with the last pass, then remembered
        if full:
            services = set(self.mirror.tails(keys.SERVICES))
            self._full = False
            self._names, self._lost = set(), set()
            self._last_full = time.monotonic()
            self.full_passes += 1
            self.ledger.reset(await asyncio.to_thread(self._held_by_everyone, services))
            names = services
            orphans = self._orphans(services)
        else:
            names = set(self._names)
            self._names = set()
            if time.monotonic() >= self._busy_due:
                # Services in motion are looked at every busy_resync_s, not on every
                # pass a deploy's poke causes.
                names |= self._busy
                self._busy_due = time.monotonic() + self.busy_resync_s
            for region in self._lost:
                names |= self.ledger.placed_in(region) | self.ledger.waiting()
            self._lost = set()
            if grew:
                names |= self.ledger.waiting()
            gone = {n for n in names if not self.mirror.has(keys.SERVICES, n)}
            names -= gone
            # A deleted service's placement and assignments go in the delete's own txn;
            # leftovers (none are known to arise) are collected by the full passes.
            orphans = set()
            for name in gone:
                freed = self.ledger.drop(name) or freed
        summary = PassSummary("full" if full else "incremental", planned=len(names))
        base = world_of(self.mirror, (), residency)
        self._note_lost(base, now)
        self.observe.starting(base, self.ledger)
        summary.removed = await self.writer.collect_orphans(orphans, self.mirror)
        sentences = [
            f"{n}: service deleted; placement and assignments removed" for n in summary.removed
        ]
        busy: set[str] = set()
        changed_total = 0
        ordered = sorted(names)
        for start in range(0, len(ordered), self.chunk):
            chunk = ordered[start : start + self.chunk]
            world = await _off_loop(len(chunk), world_of, self.mirror, chunk, residency)
            world.lost_at = base.lost_at
            written, changed, chunk_busy, chunk_freed = await self._pass_chunk(world, now, summary)
            sentences += [row.sentence for row in written]
            changed_total += changed
            busy |= chunk_busy
            freed = freed or chunk_freed
        self._busy = {n for n in self._busy - names if self.mirror.has(keys.SERVICES, n)} | busy
        if freed:
            # Capacity came free: services waiting for some get another go at once.
            waiting = self.ledger.waiting() - names
            if waiting:
                self._names |= waiting
                self._dirty.set()
        if len(names) > self.chunk:
            release_memory()
        self.observe.planned(base, self.ledger, changed_total)
        self.observe.written(self.ledger)
        self.passes += 1
        self.last_planned = len(names)
        self.planned_total += len(names)
        self.last_sentences = sentences
        if log.isEnabledFor(logging.DEBUG):
            for sentence in sentences:
                log.debug("controller: %s", sentence)
        summary.moving = len(self._busy)
        self.last_summary = summary
        return summary

    def _echoes_settled(self) -> None:
        """Changes to placements and assignments that were not this controller's own
        writes touch their services; the echoes of its writes do not."""
        for name, revisions in self._maybe_echo.items():
            if revisions != {self._written.get(name)}:
                self._names.add(name)
        self._maybe_echo = {}
        self._written = {}

    async def _pass_chunk(
        self, world: World, now: datetime, summary: PassSummary
    ) -> tuple[list[Written], int, set[str], bool]:
        """Plan and write the services of `world`; update the ledger and `summary`.
        Returns what became of each write, how many changed, which services are still
        moving, and whether capacity came free."""
        planning = time.perf_counter()
        # In a thread: planning is CPU-bound and pure, and the API shares this loop.
        plans = await _off_loop(
            len(world.services),
            plan,
            world,
            now,
            region_ttl=self.region_ttl,
            used=(self.ledger.cpu_used, self.ledger.memory_used),
        )
        metrics.scheduling_duration.record(time.perf_counter() - planning)
        changed = [p for p in plans.values() if p.changed]
        # Never written: a plan that breaks residency (counted and logged as a bug).
        wrong = self.observe.violations(changed)
        summary.refuse(wrong)
        refused = {p.service for p in wrong}
        changed = [p for p in changed if p.service not in refused]
        self.observe.continue_traces(world, changed)
        written = await self.writer.write(changed, world.residency.fence, self.observe)
        summary.add(world, written)
        if any(row.outcome == "lost a race" for row in written):
            self._dirty.set()
            self._residency = None  # in case it was the policies that moved: read them again
        outcome = {row.plan.service: row.revision for row in written}
        busy: set[str] = set()
        freed = False
        for name, p in plans.items():
            service, _ = world.services[name]
            if p.changed and not outcome.get(name):
                # Not written (lost a race, or refused): planned again next pass.
                self._names.add(name)
                continue
            if p.changed:
                self._written[name] = outcome[name]
            freed = self.ledger.put(name, self._held(service, p, world)) or freed
            if _moving(p):
                busy.add(name)
        return written, len(changed), busy, freed

    def _held(self, service: ServiceRecord, p: ServicePlan, world: World) -> Held:
        """What the ledger keeps of a service after its plan was written (or stood)."""
        spec = service.spec
        reports = world.reports_of(p.service, p.assignments)
        phase = service_phase(service, p.record, p.assignments, reports, world.alive)
        evaluation: Evaluation | None = p.evaluation
        rejected = tuple(
            metrics.reason_kind(v.reasons[0] if v.reasons else "")
            for v in (evaluation.verdicts if evaluation is not None else ())
            if not v.allowed
        )
        return Held(
            cpu=spec.resources.cpu,
            memory_mb=spec.resources.memory_mb,
            regions=holding(p.record),
            phase=phase.value,
            rejected=rejected,
            waiting=p.record.reason not in (PLACED, SCALED_TO_ZERO),
        )

    def _held_by_everyone(self, services: Iterable[str]) -> list[tuple[str, Held]]:
        """Every service's capacity as stored (a full pass starts from it, so its first
        chunk already sees what the later chunks' services hold)."""
        found = []
        for name in services:
            service = self.mirror.get(keys.SERVICES, name, ServiceRecord)
            if service is None:
                continue
            placement = self.mirror.get(keys.PLACEMENTS, name, PlacementRecord)
            spec = service[0].spec
            found.append(
                (
                    name,
                    Held(
                        cpu=spec.resources.cpu,
                        memory_mb=spec.resources.memory_mb,
                        regions=holding(placement[0] if placement else None),
                    ),
                )
            )
        return found

    def _note_lost(self, world: World, now: datetime) -> None:
        """Give `world` the time each unreachable region was lost: as the watch saw it,
        else (a region already lost when this replica began to lead) now."""
        for region in world.regions:
            if region in world.alive:
                self._lost_at.pop(region, None)
            else:
                self._lost_at.setdefault(region, now)
        world.lost_at = self._lost_at

    def _capacity_grew(self) -> bool:
        """Did any region report more capacity than at the last pass? (Remembers.)"""
        grew = False
        now: dict[str, tuple[float, int]] = {}
        for region, (beat, _) in self.mirror.all(keys.HEARTBEATS, HeartbeatRecord).items():
            cap = (beat.capacity.cpu, beat.capacity.memory_mb)
            now[region] = cap
            was = self._capacity.get(region)
            if was is not None and (cap[0] > was[0] or cap[1] > was[1]):
                grew = True
        self._capacity = now
        return grew

    def _orphans(self, services: set[str]) -> set[str]:
        """Services that left a placement or assignments behind when deleted."""
        found = {n for n in self.mirror.tails(keys.PLACEMENTS) if n not in services}
        for tail in self.mirror.tails(keys.ASSIGNMENTS):
            name = tail.partition("/")[2]
            if name not in services:
                found.add(name)
        return found


# Below this many services, parsing and planning take a few ms: done on the loop, as a
# thread hand-off (and the GIL going back and forth) would cost more than it saves.
_INLINE = 64


async def _off_loop(size: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a worker thread when `size` says it is big."""
    if size <= _INLINE:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def _moving(p: ServicePlan) -> bool:
    """Still in motion: the next pass must look again soon, whatever changes."""
    return bool(
        p.record.draining
        or (p.record.rollout is not None and p.record.rollout.state == "progressing")
        or (p.decision is not None and p.decision.kept)
    )
