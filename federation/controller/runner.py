"""Runs the election and, while this replica leads, the reconcile loop.

Level-triggered: a watch on the whole prefix only marks the world dirty; each pass
reads the world afresh, plans every service and writes what changed. Every write is
one etcd transaction per service that compares the leader key, the service's
revision and the placement's revision, so neither a deposed leader nor a decision
made from a stale read can land. Each transaction also appends one audit entry
listing the decisions it writes (federation.store.audit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from federation.controller.observe import PassObserver
from federation.controller.plan import ServicePlan, plan
from federation.store import Compacted, Cond, Conflict, Op, Store, StoreError, keys
from federation.store.audit import Change
from federation.store.election import LeaderElection
from federation.store.world import World, read_world
from federation.telemetry import metrics
from federation.telemetry.setup import tracer

if TYPE_CHECKING:
    from federation.drills.runner import DrillRunner

log = logging.getLogger(__name__)

# Keys whose changes do not call for a new pass: the election's own key, and
# heartbeats (capacity changes are picked up by the periodic resync).
_QUIET = (
    keys.LEADER,
    keys.HEARTBEATS,
    keys.PLACEMENTS,
    keys.ASSIGNMENTS,
    keys.TOKENS,
    keys.AUDIT,
    keys.AUDIT_HEAD,
)
# Drill progress too: a drill's cordons are region writes, which do call for a pass.
_QUIET_DRILLS = (keys.DRILLS, keys.DRILL_LOCKS)
_WRITE_CONCURRENCY = 4
_TXN_LIMIT = 120  # etcd's --max-txn-ops is 128; keep a margin
_FIXED_CONDS = 2  # the leader fence and the audit head
_FIXED_OPS = 2  # the audit entry and the audit head


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
    ) -> None:
        self.store = store
        self.election = election
        self.region_ttl = region_ttl
        self.resync_s = resync_s
        self.busy_resync_s = busy_resync_s
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.passes = 0
        self._stopping = False
        self.last_sentences: list[str] = []
        self.drills: DrillRunner | None = None
        self.observe = PassObserver(region_ttl=region_ttl)

    async def start(self) -> None:
        # Imported here: drills build on this package's planner (a cycle at import time).
        from federation.drills.runner import DrillRunner

        self.drills = DrillRunner(self.store, self.election)
        self._tasks = [
            asyncio.create_task(self.election.run(), name="controller-election"),
            asyncio.create_task(self._guard(self._loop), name="controller-reconcile"),
            asyncio.create_task(self._guard(self.drills.run), name="controller-drills"),
        ]

    async def stop(self) -> None:
        """Stop reconciling and hand leadership over at once."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.election.resign()

    def poke(self) -> None:
        """Ask for a pass soon (used by the API after writes it knows matter)."""
        self._dirty.set()

    async def _guard(self, body: Callable[[], Awaitable[None]]) -> None:
        # An eternal task must never die quietly: log and restart it.
        while True:
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller loop crashed; restarting in 1 s")
                await asyncio.sleep(1)

    async def _loop(self) -> None:
        watcher: asyncio.Task[None] | None = None
        try:
            while True:
                if not self.election.is_leader:
                    self.observe.stopped_leading()
                    if watcher is not None:
                        watcher.cancel()
                        watcher = None
                    self.election.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await self.election.changed.wait()
                    continue
                if watcher is None or watcher.done():
                    watcher = asyncio.create_task(self._watch(), name="controller-watch")
                self._dirty.clear()
                busy = False
                try:
                    busy = await self.reconcile()
                except StoreError as exc:
                    log.warning("reconcile pass failed: %s", exc)
                    busy = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.busy_resync_s if busy else self.resync_s):
                        await self._dirty.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
                # Bounded: a gRPC stream must not be able to hold a shutdown hostage.
                await asyncio.wait([watcher], timeout=2)

    async def _watch(self) -> None:
        """Mark the world dirty on any relevant change; re-establish on errors."""
        while not self._stopping:
            try:
                start = await self.store.revision() + 1
                self._dirty.set()
                async for batch in self.store.watch("", start_revision=start):
                    if any(not e.key.startswith(_QUIET + _QUIET_DRILLS) for e in batch):
                        self._dirty.set()
            except (Compacted, StoreError) as exc:
                log.info("controller watch restarting: %s", exc)
                await asyncio.sleep(0.5)

    async def reconcile(self) -> bool:
        """One pass: read, plan, write. Returns True when something is still moving
        (a grace period, a drain or a rollout) and the next pass should come soon."""
        started = time.perf_counter()
        with tracer().start_as_current_span("controller.reconcile"):
            try:
                busy = await self._reconcile()
            except Exception:
                metrics.reconcile_passes.add(1, {"outcome": "failed"})
                raise
        metrics.reconcile_passes.add(1, {"outcome": "ok"})
        metrics.reconcile_duration.record(time.perf_counter() - started)
        return busy

    async def _reconcile(self) -> bool:
        world = await read_world(self.store)
        now = datetime.now(UTC)
        planning = time.perf_counter()
        # In a thread: planning is CPU-bound and pure, and the API shares this loop.
        plans = await asyncio.to_thread(plan, world, now, region_ttl=self.region_ttl)
        metrics.scheduling_duration.record(time.perf_counter() - planning)
        changed = [p for p in plans.values() if p.changed]
        # Never written: a plan that breaks residency (counted and logged as a bug).
        wrong = {p.service for p in self.observe.violations(changed)}
        changed = [p for p in changed if p.service not in wrong]
        self.observe.planned(world, plans, len(changed))
        self.observe.continue_traces(world, changed)
        semaphore = asyncio.Semaphore(_WRITE_CONCURRENCY)

        async def write(batch: list[ServicePlan]) -> list[str]:
            async with semaphore:
                with self.observe.writing(batch):
                    return await self._write_batch(batch)

        try:
            results = await asyncio.gather(*(write(b) for b in self._batches(changed)))
        finally:
            self.observe.end_spans()
        self.observe.written(plans)
        sentences = [sentence for result in results for sentence in result]
        sentences.extend(await self._collect_orphans(world))
        self.passes += 1
        self.last_sentences = list(sentences)
        for sentence in sentences:
            log.info("controller: %s", sentence)
        return any(
            p.record.draining
            or (p.record.rollout is not None and p.record.rollout.state == "progressing")
            or (p.decision is not None and bool(p.decision.kept))
            for p in plans.values()
        )

    def _parts(self, p: ServicePlan) -> tuple[list[Cond], list[Op]]:
        """The conditions and operations that write one service's decision."""
        conditions = [
            Cond.at_revision(keys.service(p.service), p.service_revision),
            Cond.at_revision(keys.placement(p.service), p.placement_revision),
        ]
        ops = [Op.put(keys.placement(p.service), p.record.model_dump(mode="json"))]
        ops += [
            Op.put(keys.assignment(region, p.service), a.model_dump(mode="json"))
            for region, a in sorted(p.put.items())
        ]
        ops += [Op.delete(keys.assignment(region, p.service)) for region in p.delete]
        if p.consume_rebalance:
            ops.append(Op.delete(keys.rebalance(p.service)))
        return conditions, ops

    def _batches(self, plans: list[ServicePlan]) -> list[list[ServicePlan]]:
        """Group services into transactions within etcd's limit on operations per txn
        (128 by default): one commit for many services is what makes a mass failover
        fast, since every etcd commit is a disk sync."""
        batches: list[list[ServicePlan]] = []
        current: list[ServicePlan] = []
        n_conds = n_ops = 0
        for p in plans:
            conds, ops = self._parts(p)
            if current and (
                n_conds + len(conds) > _TXN_LIMIT - _FIXED_CONDS
                or n_ops + len(ops) > _TXN_LIMIT - _FIXED_OPS
            ):
                batches.append(current)
                current, n_conds, n_ops = [], 0, 0
            current.append(p)
            n_conds += len(conds)
            n_ops += len(ops)
        if current:
            batches.append(current)
        return batches

    async def _write_batch(self, batch: list[ServicePlan]) -> list[str]:
        if not self.election.is_leader:
            return [f"{p.service}: not written, no longer leader" for p in batch]
        conditions: list[Cond] = [self.election.fence()]
        ops: list[Op] = []
        for p in batch:
            conds, more = self._parts(p)
            conditions += conds
            ops += more
        try:
            ok, _, _ = await self.store.txn(conditions, ops, audit=self._audit(batch))
        except Conflict:
            ok = False  # the audit head kept moving: as if the write lost a race
        if ok:
            return [p.sentence for p in batch]
        if len(batch) > 1:
            # One stale service fails the whole batch: write them one by one instead.
            results = await asyncio.gather(*(self._write_batch([p]) for p in batch))
            return [sentence for result in results for sentence in result]
        self._dirty.set()
        return [
            f"{batch[0].service}: write lost a race (leader, service or placement moved); "
            "replanning"
        ]

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

    async def _collect_orphans(self, world: World) -> list[str]:
        """Placements and assignments of services that no longer exist."""
        orphans = {name for name in world.placements if name not in world.services}
        orphans |= {svc for (_, svc) in world.assignments if svc not in world.services}
        sentences = []
        for name in sorted(orphans):
            ops = [Op.delete(keys.placement(name))]
            ops += [
                Op.delete(keys.assignment(region, svc))
                for (region, svc) in world.assignments
                if svc == name
            ]
            ok, _, _ = await self.store.txn(
                [self.election.fence(), Cond.absent(keys.service(name))], ops
            )
            if ok:
                sentences.append(f"{name}: service deleted; placement and assignments removed")
        return sentences
