"""Runs the election and, while this replica leads, the reconcile loop.

Level-triggered: a watch on the whole prefix only marks the world dirty; each pass
reads the world afresh, plans every service and writes what changed. Every write is
one etcd transaction per service that compares the leader key, the service's
revision and the placement's revision, so neither a deposed leader nor a decision
made from a stale read can land.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from federation.controller.plan import ServicePlan, plan
from federation.store import Compacted, Cond, Op, Store, StoreError, keys
from federation.store.election import LeaderElection
from federation.store.world import World, read_world

log = logging.getLogger(__name__)

# Keys whose changes do not call for a new pass: the election's own key, and
# heartbeats (capacity changes are picked up by the periodic resync).
_QUIET = (keys.LEADER, keys.HEARTBEATS, keys.PLACEMENTS, keys.ASSIGNMENTS, keys.TOKENS)
_WRITE_CONCURRENCY = 16


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

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.election.run(), name="controller-election"),
            asyncio.create_task(self._guard(self._loop), name="controller-reconcile"),
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
                    if any(not e.key.startswith(_QUIET) for e in batch):
                        self._dirty.set()
            except (Compacted, StoreError) as exc:
                log.info("controller watch restarting: %s", exc)
                await asyncio.sleep(0.5)

    async def reconcile(self) -> bool:
        """One pass: read, plan, write. Returns True when something is still moving
        (a grace period, a drain or a rollout) and the next pass should come soon."""
        world = await read_world(self.store)
        now = datetime.now(UTC)
        plans = plan(world, now, region_ttl=self.region_ttl)
        changed = [p for p in plans.values() if p.changed]
        semaphore = asyncio.Semaphore(_WRITE_CONCURRENCY)

        async def write(p: ServicePlan) -> str:
            async with semaphore:
                return await self._write(p)

        sentences = await asyncio.gather(*(write(p) for p in changed))
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

    async def _write(self, p: ServicePlan) -> str:
        if not self.election.is_leader:
            return f"{p.service}: not written, no longer leader"
        conditions = [
            self.election.fence(),
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
        ok, _, _ = await self.store.txn(conditions, ops)
        if not ok:
            self._dirty.set()
            return (
                f"{p.service}: write lost a race (leader, service or placement moved); replanning"
            )
        return p.sentence

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
