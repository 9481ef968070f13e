"""Runs the election and, while this replica leads, the reconcile loop.

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

Every write is one etcd transaction per batch of services that compares the leader
key, each service's revision and its placement's revision, so neither a deposed
leader nor a decision made from a stale read can land. Each transaction also appends
one audit entry listing the decisions it writes (federation.store.audit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from federation.controller.ledger import Held, Ledger, holding
from federation.controller.observe import PassObserver
from federation.model.region import HeartbeatRecord
from federation.model.service import PlacementRecord, RegionReport, ServiceRecord
from federation.model.status import service_phase
from federation.planning.plan import ServicePlan, plan
from federation.planning.world import World
from federation.residency.evaluate import Evaluation
from federation.residency.snapshot import Snapshot
from federation.runtime import forever, release_memory
from federation.scheduler import PLACED, SCALED_TO_ZERO
from federation.store import TXN_LIMIT, Cond, Conflict, Op, Store, StoreError, audit, keys
from federation.store import policies as store_policies
from federation.store.audit import Change
from federation.store.election import LeaderElection
from federation.store.mirror import Mirror
from federation.store.world import MIRROR_CACHED, MIRROR_PACKED, MIRRORED, world_of
from federation.telemetry import metrics
from federation.telemetry.setup import tracer

if TYPE_CHECKING:
    from federation.drills.runner import DrillRunner

log = logging.getLogger(__name__)

T = TypeVar("T")

_WRITE_CONCURRENCY = 4
_FIXED_CONDS = 3  # the leader fence, the residency fence and the audit head
_FIXED_OPS = 2  # the audit entry and the audit head
_CHUNK = 500  # services parsed and planned at a time (bounds the memory a pass needs)
# Changes to these mean "plan everything": region identity, cordons and membership,
# and residency. A region's loss is handled on its own (its services, not all).
_EVERYTHING = (keys.REGIONS, keys.POLICIES, keys.GROUPS, keys.RESIDENCY_FENCE)


class Controller:
    """Owns the election and the reconcile loop; acts only while leader."""

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
        self.mirror = mirror or Mirror(store, MIRRORED, cached=MIRROR_CACHED, packed=MIRROR_PACKED)
        self.mirror.subscribe(self._changed)
        self.ledger = Ledger()
        self._dirty = asyncio.Event()
        self._names: set[str] = set()  # services some change touched since the last pass
        self._lost: set[str] = set()  # regions whose lease went since the last pass
        self._reported: set[str] = set()  # regions whose report changed
        self._full = True
        self._last_full = 0.0
        self._busy: set[str] = set()
        self._busy_due = 0.0
        self._written: dict[str, int] = {}  # service -> revision of this pass's write
        # service -> revisions of changes to what the controller writes, since the last
        # pass: its own writes' echoes, or someone else's change
        self._maybe_echo: dict[str, set[int]] = {}
        self._ready: dict[str, dict[tuple[str, int], int]] = {}  # region -> report index
        self._capacity: dict[str, tuple[float, int]] = {}
        self._residency: Snapshot | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.passes = 0
        self.full_passes = 0
        self.last_planned = 0
        self.planned_total = 0  # services planned, over all passes
        self.last_sentences: list[str] = []
        self.drills: DrillRunner | None = None
        self.observe = PassObserver(region_ttl=region_ttl)

    async def start(self) -> None:
        # Imported here: drills build on this package's planner (a cycle at import time).
        from federation.drills.runner import DrillRunner

        self.drills = DrillRunner(self.store, self.election)
        self._tasks = [
            asyncio.create_task(self.election.run(), name="controller-election"),
            asyncio.create_task(
                forever("controller loop", self._loop, log), name="controller-reconcile"
            ),
            asyncio.create_task(
                forever("drill runner", self.drills.run, log), name="controller-drills"
            ),
        ]

    async def stop(self) -> None:
        """Stop reconciling and hand leadership over at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._own_mirror:
            await self.mirror.stop()
        await self.election.resign()

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
            else:
                self._lost.add(region)
        elif key.startswith(keys.REPORTS):
            self._reported.add(key.removeprefix(keys.REPORTS))
        else:
            return  # heartbeats: capacity is compared on every pass
        self._dirty.set()

    async def _loop(self) -> None:
        while True:
            if not self.election.is_leader:
                self.observe.stopped_leading()
                self._full = True
                self.election.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self.election.changed.wait()
                continue
            self._dirty.clear()
            busy = False
            try:
                busy = await self.reconcile()
            except StoreError as exc:
                log.warning("reconcile pass failed: %s", exc)
                self._full = True
                busy = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.busy_resync_s if busy else self.resync_s):
                    await self._dirty.wait()

    async def reconcile(self) -> bool:
        """One pass: plan and write what changed (or everything, on a full pass).
        Returns True when something is still moving (a grace period, a drain or a
        rollout) and the next pass should come soon."""
        started = time.perf_counter()
        full_passes = self.full_passes
        with tracer().start_as_current_span("controller.reconcile"):
            try:
                busy = await self._reconcile()
            except Exception:
                metrics.reconcile_passes.add(1, {"outcome": "failed"})
                raise
        took = time.perf_counter() - started
        kind = "full" if self.full_passes > full_passes else "incremental"
        if kind == "full":
            # A full pass costs O(services): spread them out so that they take at
            # most a twentieth of the controller's time, however big the world.
            self._full_every = max(self.full_resync_s, 20 * took)
        metrics.reconcile_passes.add(1, {"outcome": "ok", "kind": kind})
        metrics.reconcile_duration.record(took, {"kind": kind})
        return busy

    async def _reconcile(self) -> bool:
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
            self._names, self._lost, self._reported = set(), set(), set()
            self._last_full = time.monotonic()
            self.full_passes += 1
            self.ledger.reset(await asyncio.to_thread(self._held_by_everyone, services))
            self._reports_changed(set(self.mirror.tails(keys.REPORTS)))
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
            names |= self._reports_changed(self._reported)
            self._reported = set()
            if grew:
                names |= self.ledger.waiting()
            gone = {n for n in names if not self.mirror.has(keys.SERVICES, n)}
            names -= gone
            # A deleted service's placement and assignments go in the delete's own txn;
            # leftovers (none are known to arise) are collected by the full passes.
            orphans = set()
            for name in gone:
                freed = self.ledger.drop(name) or freed
        base = await _off_loop(len(self._reported) + 1, world_of, self.mirror, (), residency)
        self.observe.starting(base, self.ledger)
        sentences = await self._collect_orphans(orphans)
        busy: set[str] = set()
        changed_total = 0
        ordered = sorted(names)
        for start in range(0, len(ordered), self.chunk):
            chunk = ordered[start : start + self.chunk]
            world = await _off_loop(len(chunk), world_of, self.mirror, chunk, residency)
            written, changed, chunk_busy, chunk_freed = await self._pass_chunk(world, now)
            sentences += written
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
        self.last_sentences = list(sentences)
        for sentence in sentences:
            log.info("controller: %s", sentence)
        return bool(self._busy)

    def _echoes_settled(self) -> None:
        """Changes to placements and assignments that were not this controller's own
        writes touch their services; the echoes of its writes do not."""
        for name, revisions in self._maybe_echo.items():
            if revisions != {self._written.get(name)}:
                self._names.add(name)
        self._maybe_echo = {}
        self._written = {}

    async def _pass_chunk(
        self, world: World, now: datetime
    ) -> tuple[list[str], int, set[str], bool]:
        """Plan and write the services of `world`; update the ledger. Returns the
        sentences, how many changed, which are still moving, and whether capacity
        came free."""
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
        wrong = {p.service for p in self.observe.violations(changed)}
        changed = [p for p in changed if p.service not in wrong]
        self.observe.continue_traces(world, changed)
        semaphore = asyncio.Semaphore(_WRITE_CONCURRENCY)
        # Built once: sizing the batches and writing them need the same operations.
        parts = {p.service: self._parts(p) for p in changed}

        async def write(batch: list[ServicePlan]) -> list[tuple[ServicePlan, int, str]]:
            async with semaphore:
                with self.observe.writing(batch):
                    return await self._write_batch(batch, world.residency.fence, parts)

        try:
            results = await asyncio.gather(*(write(b) for b in self._batches(changed, parts)))
        finally:
            self.observe.end_spans()
        outcome = {p.service: revision for r in results for p, revision, _ in r}
        sentences = [sentence for r in results for _, _, sentence in r]
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
        return sentences, len(changed), busy, freed

    def _held(self, service: ServiceRecord, p: ServicePlan, world: World) -> Held:
        """What the ledger keeps of a service after its plan was written (or stood)."""
        spec = service.spec
        phase = service_phase(service, p.record, p.assignments, world.reports, world.alive)
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

    def _reports_changed(self, regions: set[str]) -> set[str]:
        """Services whose ready counts changed in the reports of `regions`."""
        touched: set[str] = set()
        for region in regions:
            got = self.mirror.get(keys.REPORTS, region, RegionReport)
            index = dict(got[0].ready_index()) if got is not None else {}
            before = self._ready.get(region, {})
            for key in index.keys() ^ before.keys():
                touched.add(key[0])
            for key in index.keys() & before.keys():
                if index[key] != before[key]:
                    touched.add(key[0])
            self._ready[region] = index
        return touched

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

    def _parts(self, p: ServicePlan) -> tuple[list[Cond], list[Op]]:
        """The conditions and operations that write one service's decision."""
        conditions = [
            Cond.at_revision(keys.service(p.service), p.service_revision),
            Cond.at_revision(keys.placement(p.service), p.placement_revision),
        ]
        ops = [Op.put(keys.placement(p.service), p.record.model_dump_json())]
        ops += [
            Op.put(keys.assignment(region, p.service), a.model_dump_json())
            for region, a in sorted(p.put.items())
        ]
        ops += [Op.delete(keys.assignment(region, p.service)) for region in p.delete]
        if p.consume_rebalance:
            ops.append(Op.delete(keys.rebalance(p.service)))
        return conditions, ops

    def _batches(
        self, plans: list[ServicePlan], parts: dict[str, tuple[list[Cond], list[Op]]]
    ) -> list[list[ServicePlan]]:
        """Group services into transactions within etcd's limit on operations per txn
        (128 by default): one commit for many services is what makes a mass failover
        fast, since every etcd commit is a disk sync."""
        batches: list[list[ServicePlan]] = []
        current: list[ServicePlan] = []
        n_conds = n_ops = 0
        for p in plans:
            conds, ops = parts[p.service]
            if current and (
                n_conds + len(conds) > TXN_LIMIT - _FIXED_CONDS
                or n_ops + len(ops) > TXN_LIMIT - _FIXED_OPS
            ):
                batches.append(current)
                current, n_conds, n_ops = [], 0, 0
            current.append(p)
            n_conds += len(conds)
            n_ops += len(ops)
        if current:
            batches.append(current)
        return batches

    async def _write_batch(
        self,
        batch: list[ServicePlan],
        fence: int,
        parts: dict[str, tuple[list[Cond], list[Op]]],
    ) -> list[tuple[ServicePlan, int, str]]:
        """Write a batch in one txn: (plan, revision or 0 if not written, sentence).
        `fence` is the residency fence's revision the plans were made under: a policy
        or group written since fails the txn, and the services are planned again."""
        if not self.election.is_leader:
            return [(p, 0, f"{p.service}: not written, no longer leader") for p in batch]
        conditions: list[Cond] = [
            self.election.fence(),
            Cond.at_revision(keys.RESIDENCY_FENCE, fence),
        ]
        ops: list[Op] = []
        for p in batch:
            conds, more = parts[p.service]
            conditions += conds
            ops += more
        try:
            ok, revision, _ = await audit.txn(self.store, conditions, ops, self._audit(batch))
        except Conflict:
            ok, revision = False, 0  # the audit head kept moving: as if the write lost a race
        if ok:
            return [(p, revision, p.sentence) for p in batch]
        if len(batch) > 1:
            # One stale service fails the whole batch: write them one by one instead.
            results = await asyncio.gather(*(self._write_batch([p], fence, parts) for p in batch))
            return [row for result in results for row in result]
        self._dirty.set()
        self._residency = None  # in case it was the policies that moved: read them again
        sentence = (
            f"{batch[0].service}: write lost a race "
            "(leader, service, placement or policies moved); replanning"
        )
        return [(batch[0], 0, sentence)]

    def _audit(self, batch: list[ServicePlan]) -> Change:
        """One audit entry per transaction: each service's decision and its evidence
        (the evidence itself is in the placement record this txn writes)."""
        decisions = {
            p.service: {
                "regions": p.record.regions,
                "draining": sorted(p.record.draining),
                "reason": p.record.reason,
                "generation": p.record.generation,
                "placement_before": p.placement_revision,
            }
            for p in batch
        }
        return Change(
            "placement.decide",
            keys.PLACEMENTS,
            actor=f"controller:{self.election.identity}",
            details={"services": decisions},
        )

    async def _collect_orphans(self, names: Iterable[str]) -> list[str]:
        """Remove the placements and assignments of services that no longer exist."""
        regions = list(self.mirror.tails(keys.REGIONS))
        sentences = []
        for name in sorted(names):
            ops = [Op.delete(keys.placement(name))]
            ops += [
                Op.delete(keys.assignment(region, name))
                for region in regions
                if self.mirror.has(keys.ASSIGNMENTS, f"{region}/{name}")
            ]
            # Assignments of regions deleted since: found by their keys.
            ops += [
                Op.delete(keys.ASSIGNMENTS + tail)
                for tail in self.mirror.tails(keys.ASSIGNMENTS)
                if tail.endswith("/" + name) and tail.partition("/")[0] not in regions
            ]
            ok, _, _ = await self.store.txn(
                [self.election.fence(), Cond.absent(keys.service(name))], ops
            )
            if ok:
                sentences.append(f"{name}: service deleted; placement and assignments removed")
        return sentences


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
