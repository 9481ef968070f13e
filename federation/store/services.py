"""Services in etcd: the operator's spec (with its generation) and what hangs off it.

Reads and writes only: how a service is shown, with its status, is `federation.api.views`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime

from federation.model.service import (
    PlacementRecord,
    RegionReport,
    ServiceRecord,
    ServiceSpec,
    by_service,
)
from federation.store import audit, keys
from federation.store.audit import Change
from federation.store.errors import Conflict
from federation.store.etcd import Cond, Op, Store
from federation.store.mirror import Mirror
from federation.store.txn import JSON, TXN_LIMIT
from federation.telemetry.setup import current_carrier


class ServiceNotFound(LookupError):
    """No service of that name."""


async def get(store: Store, name: str) -> tuple[ServiceRecord, int] | None:
    """The stored service and its revision."""
    entry = await store.get(keys.service(name))
    if entry is None:
        return None
    return ServiceRecord.model_validate(entry.value), entry.revision


async def apply(
    store: Store,
    spec: ServiceSpec,
    *,
    if_match: int | None,
    mirror: Mirror | None = None,
    secret_versions: Mapping[str, int] | None = None,
) -> tuple[ServiceRecord, int, bool, bool]:
    """Create or update a service (CAS on its revision). Idempotent: the same spec again
    writes nothing. Returns (record, revision, created, changed).

    With a `mirror`, the current record is taken from it, saving a round trip when a
    write follows: the write's CAS checks what the mirror said. The mirror may lag a
    write through another replica by a few ms, so a CAS that fails, and an answer of
    "unchanged" (which writes nothing to check), are decided again on etcd's word."""
    if mirror is not None:
        current = mirror.get(keys.SERVICES, spec.name, ServiceRecord)
        if current is None or current[0].spec != spec:
            with contextlib.suppress(Conflict):
                return await _apply(store, spec, if_match, current, secret_versions)
    return await _apply(store, spec, if_match, await get(store, spec.name), secret_versions)


async def _apply(
    store: Store,
    spec: ServiceSpec,
    if_match: int | None,
    current: tuple[ServiceRecord, int] | None,
    secret_versions: Mapping[str, int] | None = None,
) -> tuple[ServiceRecord, int, bool, bool]:
    now = datetime.now(UTC)
    versions = dict(secret_versions or {})
    if current is None:
        if if_match is not None and if_match != 0:
            raise Conflict(keys.service(spec.name), if_match, None)
        record = ServiceRecord(
            spec=spec,
            generation=1,
            created_at=now,
            updated_at=now,
            trace=current_carrier(),
            secret_versions=versions,
        )
        revision = await audit.create(
            store,
            keys.service(spec.name),
            record.model_dump_json(),
            change=Change("service.put", keys.service(spec.name), details=_details(record)),
        )
        return record, revision, True, True
    existing, revision = current
    if if_match is not None and if_match != revision:
        raise Conflict(keys.service(spec.name), if_match, revision)
    if existing.spec == spec:
        return existing, revision, False, False
    record = ServiceRecord(
        spec=spec,
        generation=existing.generation + 1,
        created_at=existing.created_at,
        updated_at=now,
        trace=current_carrier(),  # the controller's placement joins this request's trace
        secret_versions=versions,
    )
    new_revision = await audit.replace(
        store,
        keys.service(spec.name),
        record.model_dump_json(),
        revision=revision,
        change=Change("service.put", keys.service(spec.name), details=_details(record)),
    )
    return record, new_revision, False, True


def _details(record: ServiceRecord) -> JSON:
    """What the audit entry of a service's write keeps: its data classes, so residency
    evidence (federation.residency.evidence) knows, from the log alone, which services
    carried a class when."""
    return {"generation": record.generation, "data_classes": sorted(record.spec.data_classes)}


async def delete(store: Store, name: str, *, if_match: int | None) -> None:
    """Delete a service with its placement and assignments, in one txn."""
    entry = await store.get(keys.service(name))
    if entry is None:
        raise ServiceNotFound(name)
    placement = await store.get(keys.placement(name))
    regions: set[str] = set()
    if placement is not None:
        record = PlacementRecord.model_validate(placement.value)
        regions = set(record.regions) | set(record.draining)
    ops = [Op.delete(keys.placement(name)), Op.delete(keys.rebalance(name))]
    ops += [Op.delete(keys.assignment(r, name)) for r in sorted(regions)]
    await audit.delete(
        store,
        keys.service(name),
        revision=if_match if if_match is not None else entry.revision,
        also=ops,
        change=Change("service.delete", keys.service(name), details={"regions": sorted(regions)}),
    )


async def request_rebalance(store: Store, name: str) -> None:
    """Ask the controller to place the service afresh (ignoring where it runs now)."""
    ok, _, _ = await audit.txn(
        store,
        [Cond.exists(keys.service(name))],
        [Op.put(keys.rebalance(name), {"requested_at": datetime.now(UTC).isoformat()})],
        Change("service.rebalance", keys.service(name)),
    )
    if not ok:
        raise ServiceNotFound(name)


async def put_report(
    store: Store, region: str, report: RegionReport, *, mirror: Mirror | None = None
) -> tuple[int, int]:
    """Store what a region reports it runs, per service (`keys.report`), writing only
    the services whose counts changed and deleting those it no longer reports; only
    while the region exists (LookupError when it does not). Returns (the store's
    revision after the writes, or the mirror's when none were needed; how many keys
    were written or deleted).

    Agents send their whole report again every few seconds even when nothing changed:
    that writes nothing. What is stored is taken from `mirror` (synced with this
    process's writes; a report written meanwhile through another replica reaches it
    within milliseconds, and the agent's next report settles any difference), else
    read. The changes go in txns of at most TXN_LIMIT ops, each comparing that the
    region exists, so one report of any size fits etcd's request limits."""
    wanted = {
        name: counts.model_dump_json().encode() for name, counts in by_service(report).items()
    }
    if mirror is not None:
        if not mirror.has(keys.REGIONS, region):
            raise LookupError(region)
        held = {}
        for tail in mirror.under(keys.REPORTS, region):
            raw = mirror.raw(keys.REPORTS, tail)
            if raw is not None:
                held[tail.partition("/")[2]] = raw[0]
        legacy = mirror.has(keys.REPORTS, region)
        revision = mirror.revision
    else:
        entries, revision = await store.scan_raw(keys.reports(region))
        held = {key.rpartition("/")[2]: raw for key, raw, _ in entries}
        legacy = await store.get_raw(keys.REPORTS + region) is not None
    ops = [
        Op.put_raw(keys.report(region, name), raw.decode())
        for name, raw in sorted(wanted.items())
        if held.get(name) != raw
    ]
    ops += [Op.delete(keys.report(region, name)) for name in sorted(held.keys() - wanted.keys())]
    if legacy:  # the whole-region report of servers before (keys.REPORTS)
        ops.append(Op.delete(keys.REPORTS + region))
    if not ops and mirror is None and await store.get_raw(keys.region(region)) is None:
        raise LookupError(region)
    for start in range(0, len(ops), TXN_LIMIT - 1):
        ok, revision, _ = await store.txn(
            [Cond.exists(keys.region(region))], ops[start : start + TXN_LIMIT - 1]
        )
        if not ok:
            raise LookupError(region)
    return revision, len(ops)
