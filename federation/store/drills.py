"""Live drills in etcd: the drill record, the per-region locks, and the state changes
that cordon or restore regions in the same transaction as the record.

One live drill at a time per region: `drill-locks/{region}` is created (create-if-
absent) with the drill and deleted in the transaction that ends it. A cordon or an
uncordon and the drill state that explains it land together or not at all, so a
drill can never end with a region it cordoned left behind, nor cordon unrecorded.
"""

from __future__ import annotations

from collections.abc import Sequence

from federation.model.drill import DrillRecord, drill_tag
from federation.model.region import Cordon, RegionRecord
from federation.store import audit as audit_log
from federation.store import keys
from federation.store.audit import Change
from federation.store.errors import Conflict
from federation.store.etcd import Cond, Op, Store
from federation.store.regions import RegionNotFound


class RegionHeld(Exception):
    """Another live drill holds one of the regions."""

    def __init__(self, region: str, drill_id: str) -> None:
        super().__init__(f"region {region} is in live drill {drill_id}")
        self.region = region
        self.drill_id = drill_id


async def create(
    store: Store, record: DrillRecord, *, conditions: Sequence[Cond] = (), also: Sequence[Op] = ()
) -> int:
    """Store a new live drill and lock its regions, in one txn (create-if-absent on the
    drill and on every region's lock), with `conditions` and `also` (a practice run's
    record, the leader fence) in the same txn. RegionHeld names a region another drill
    holds; Conflict when another condition failed."""
    locks = [keys.drill_lock(r) for r in record.regions]
    ok, revision, entries = await audit_log.txn(
        store,
        [Cond.absent(keys.drill(record.id)), *[Cond.absent(k) for k in locks], *conditions],
        [
            Op.put(keys.drill(record.id), record.model_dump(mode="json")),
            *[Op.put(k, {"drill": record.id}) for k in locks],
            *also,
        ],
        Change(
            "drill.create",
            keys.drill(record.id),
            actor=record.created_by,
            before_revision=0,
            details={"mode": record.mode, "regions": record.regions},
        ),
        read_on_failure=locks,
    )
    if not ok:
        for region, entry in zip(record.regions, entries, strict=True):
            if entry is not None:
                raise RegionHeld(region, str(entry.value.get("drill", "?")))
        raise Conflict(keys.drill(record.id), None, None)  # a condition, or an id clash
    return revision


async def get(store: Store, drill_id: str) -> tuple[DrillRecord, int] | None:
    """One drill and its revision (Range)."""
    entry = await store.get(keys.drill(drill_id))
    if entry is None:
        return None
    return DrillRecord.model_validate(entry.value), entry.revision


async def list_all(store: Store) -> tuple[list[tuple[DrillRecord, int]], int]:
    """Every stored drill with its revision, oldest first, and the read's revision."""
    entries, revision = await store.scan(keys.DRILLS)
    found = [(DrillRecord.model_validate(e.value), e.revision) for e in entries]
    found.sort(key=lambda item: (item[0].created_at, item[0].id))
    return found, revision


async def holders(store: Store) -> dict[str, str]:
    """Region -> id of the live drill holding it."""
    entries, _ = await store.scan(keys.DRILL_LOCKS)
    return {e.key.removeprefix(keys.DRILL_LOCKS): str(e.value.get("drill")) for e in entries}


async def transition(
    store: Store,
    record: DrillRecord,
    revision: int,
    *,
    cordon: Cordon | None = None,
    uncordon: bool = False,
    release: bool = False,
    conditions: Sequence[Cond] = (),
    audit: Change | None = None,
) -> int:
    """Write `record` (CAS on `revision`) and, in the same txn: cordon its regions with
    `cordon`, or lift the cordons this drill set (`uncordon`), and delete its region
    locks (`release`). `conditions` adds e.g. the leader fence. Conflict if anything
    moved; RegionNotFound if a region to cordon is gone."""
    tag = drill_tag(record.id)
    conds = [Cond.at_revision(keys.drill(record.id), revision), *conditions]
    ops = [Op.put(keys.drill(record.id), record.model_dump(mode="json"))]
    if cordon is not None or uncordon:
        for name in record.regions:
            entry = await store.get(keys.region(name))
            if entry is None:
                if cordon is not None:
                    raise RegionNotFound(name)
                continue
            region = RegionRecord.model_validate(entry.value)
            if cordon is not None and region.cordon is None:
                region.cordon = cordon
            elif uncordon and region.cordon is not None and region.cordon.by == tag:
                # Only our own cordon: an operator's cordon set meanwhile stays.
                region.cordon = None
            else:
                continue
            conds.append(Cond.at_revision(keys.region(name), entry.revision))
            ops.append(Op.put(keys.region(name), region.model_dump(mode="json")))
    if release:
        for name in record.regions:
            lock = await store.get(keys.drill_lock(name))
            if lock is not None and lock.value.get("drill") == record.id:
                ops.append(Op.delete(keys.drill_lock(name)))
    if audit is None:
        ok, new_revision, _ = await store.txn(conds, ops)
    else:
        ok, new_revision, _ = await audit_log.txn(store, conds, ops, audit.before(revision))
    if not ok:
        raise Conflict(keys.drill(record.id), revision, None)
    return new_revision
