"""The controller's writes: each service's decision as etcd conditions and operations,
batched into fenced, audited transactions.

Every transaction compares the leader key, the residency fence the plans were made
under, and each service's and placement's revision, so neither a deposed leader nor
a decision made from a stale read can land. Batches fill etcd's limit on operations
per transaction: one commit for many services is what makes a mass failover fast,
since every etcd commit is a disk sync. One stale service fails its whole batch, so
a failed batch is written again one service at a time. Each transaction also appends
one audit entry listing the decisions it writes (federation.store.audit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from federation.controller.observe import PassObserver
from federation.planning.plan import ServicePlan
from federation.store import TXN_LIMIT, Cond, Conflict, Op, Store, audit, keys
from federation.store.audit import Change
from federation.store.election import LeaderElection
from federation.store.mirror import Mirror

_WRITE_CONCURRENCY = 4
_FIXED_CONDS = 3  # the leader fence, the residency fence and the audit head
_FIXED_OPS = 2  # the audit entry and the audit head

Parts = tuple[list[Cond], list[Op]]


@dataclass(frozen=True, slots=True)
class Written:
    """What became of one service's plan."""

    plan: ServicePlan
    revision: int  # of the transaction that wrote it; 0 when not written
    outcome: Literal["written", "lost a race", "not leader"]
    sentence: str


def parts_of(p: ServicePlan) -> Parts:
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


def batches(plans: list[ServicePlan], parts: dict[str, Parts]) -> list[list[ServicePlan]]:
    """Group services into transactions within etcd's limit on operations per txn."""
    found: list[list[ServicePlan]] = []
    current: list[ServicePlan] = []
    n_conds = n_ops = 0
    for p in plans:
        conds, ops = parts[p.service]
        if current and (
            n_conds + len(conds) > TXN_LIMIT - _FIXED_CONDS
            or n_ops + len(ops) > TXN_LIMIT - _FIXED_OPS
        ):
            found.append(current)
            current, n_conds, n_ops = [], 0, 0
        current.append(p)
        n_conds += len(conds)
        n_ops += len(ops)
    if current:
        found.append(current)
    return found


class Writer:
    """Writes the controller leader's decisions, fenced by its election."""

    def __init__(self, store: Store, election: LeaderElection) -> None:
        self.store = store
        self.election = election

    async def write(
        self, plans: list[ServicePlan], fence: int, observe: PassObserver
    ) -> list[Written]:
        """Write `plans` (a few transactions at a time), made under the residency
        fence's revision `fence`: a policy or group written since fails the txn."""
        semaphore = asyncio.Semaphore(_WRITE_CONCURRENCY)
        # Built once: sizing the batches and writing them need the same operations.
        parts = {p.service: parts_of(p) for p in plans}

        async def write(batch: list[ServicePlan]) -> list[Written]:
            async with semaphore:
                with observe.writing(batch):
                    return await self._write_batch(batch, fence, parts)

        try:
            results = await asyncio.gather(*(write(b) for b in batches(plans, parts)))
        finally:
            observe.end_spans()
        return [row for result in results for row in result]

    async def _write_batch(
        self, batch: list[ServicePlan], fence: int, parts: dict[str, Parts]
    ) -> list[Written]:
        if not self.election.is_leader:
            return [
                Written(p, 0, "not leader", f"{p.service}: not written, no longer leader")
                for p in batch
            ]
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
            return [Written(p, revision, "written", p.sentence) for p in batch]
        if len(batch) > 1:
            results = await asyncio.gather(*(self._write_batch([p], fence, parts) for p in batch))
            return [row for result in results for row in result]
        sentence = (
            f"{batch[0].service}: write lost a race "
            "(leader, service, placement or policies moved); replanning"
        )
        return [Written(batch[0], 0, "lost a race", sentence)]

    def _audit(self, batch: list[ServicePlan]) -> Change:
        """One audit entry per transaction: each service's decision and its evidence
        (the evidence itself is in the placement record this txn writes)."""
        decisions = {
            p.service: {
                "regions": p.record.regions,
                "draining": sorted(p.record.draining),
                # Residency evidence reads these back from the log alone.
                "draining_replicas": {r: d.replicas for r, d in p.record.draining.items()},
                "data_classes": p.evaluation.data_classes if p.evaluation else None,
                "countries": p.record.evidence.countries,
                "policies": p.record.evidence.policies,
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

    async def collect_orphans(self, names: Iterable[str], mirror: Mirror) -> list[str]:
        """Remove the placements and assignments of services that no longer exist;
        returns the services whose leftovers went."""
        regions = list(mirror.tails(keys.REGIONS))
        removed = []
        for name in sorted(names):
            ops = [Op.delete(keys.placement(name))]
            ops += [
                Op.delete(keys.assignment(region, name))
                for region in regions
                if mirror.has(keys.ASSIGNMENTS, f"{region}/{name}")
            ]
            # Assignments of regions deleted since: found by their keys.
            ops += [
                Op.delete(keys.ASSIGNMENTS + tail)
                for tail in mirror.tails(keys.ASSIGNMENTS)
                if tail.endswith("/" + name) and tail.partition("/")[0] not in regions
            ]
            ok, _, _ = await self.store.txn(
                [self.election.fence(), Cond.absent(keys.service(name))], ops
            )
            if ok:
                removed.append(name)
        return removed
