"""Services in etcd: the operator's spec (with its generation) and what hangs off it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from federation.model.service import (
    Assignment,
    PlacementRecord,
    RegionReport,
    ServiceRecord,
    ServiceSpec,
)
from federation.model.status import service_status
from federation.store import keys
from federation.store.audit import Change
from federation.store.errors import Conflict
from federation.store.etcd import Cond, Op, Store
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
    store: Store, spec: ServiceSpec, *, if_match: int | None
) -> tuple[ServiceRecord, int, bool, bool]:
    """Create or update a service (CAS on its revision). Idempotent: the same spec again
    writes nothing. Returns (record, revision, created, changed)."""
    now = datetime.now(UTC)
    current = await get(store, spec.name)
    if current is None:
        if if_match is not None and if_match != 0:
            raise Conflict(keys.service(spec.name), if_match, None)
        record = ServiceRecord(
            spec=spec, generation=1, created_at=now, updated_at=now, trace=current_carrier()
        )
        revision = await store.create(
            keys.service(spec.name),
            record.model_dump(mode="json"),
            audit=Change("service.put", keys.service(spec.name), details={"generation": 1}),
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
    )
    new_revision = await store.replace(
        keys.service(spec.name),
        record.model_dump(mode="json"),
        revision=revision,
        audit=Change(
            "service.put", keys.service(spec.name), details={"generation": record.generation}
        ),
    )
    return record, new_revision, False, True


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
    await store.delete(
        keys.service(name),
        revision=if_match if if_match is not None else entry.revision,
        also=ops,
        audit=Change("service.delete", keys.service(name), details={"regions": sorted(regions)}),
    )


async def request_rebalance(store: Store, name: str) -> None:
    """Ask the controller to place the service afresh (ignoring where it runs now)."""
    ok, _, _ = await store.txn(
        [Cond.exists(keys.service(name))],
        [Op.put(keys.rebalance(name), {"requested_at": datetime.now(UTC).isoformat()})],
        audit=Change("service.rebalance", keys.service(name)),
    )
    if not ok:
        raise ServiceNotFound(name)


def view(
    record: ServiceRecord,
    revision: int,
    placement: PlacementRecord | None,
    assignments: dict[str, Assignment],
    reports: dict[str, RegionReport],
    alive: set[str],
) -> dict[str, Any]:
    """A service as the API shows it: spec fields, generation, status, revision."""
    return {
        **record.spec.model_dump(mode="json"),
        "generation": record.generation,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "status": service_status(record, placement, assignments, reports, alive),
        "revision": revision,
    }


async def list_views(store: Store, only: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Every service (or just `only`) with its status, and the store revision."""
    if only is not None:
        entry = await store.get(keys.service(only))
        if entry is None:
            raise ServiceNotFound(only)
        services = [entry]
        revision = entry.revision
        placement_entries = [e for e in [await store.get(keys.placement(only))] if e]
    else:
        services, revision = await store.scan(keys.SERVICES)
        placement_entries, _ = await store.scan(keys.PLACEMENTS)
    placements = {
        e.key.removeprefix(keys.PLACEMENTS): PlacementRecord.model_validate(e.value)
        for e in placement_entries
    }
    by_service: dict[str, dict[str, Assignment]] = {}
    reports: dict[str, RegionReport] = {}
    if only is not None:
        # One service: read only its own assignments and its regions' reports, so a
        # deploy's answer costs the same with 10 services or 100,000.
        placed = placements.get(only)
        regions = sorted(set(placed.regions) | set(placed.draining)) if placed else []
        for region in regions:
            entry = await store.get(keys.assignment(region, only))
            if entry is not None:
                by_service.setdefault(only, {})[region] = Assignment.model_validate(entry.value)
            report = await store.get(keys.report(region))
            if report is not None:
                reports[region] = RegionReport.model_validate(report.value)
    else:
        assignment_entries, _ = await store.scan(keys.ASSIGNMENTS)
        for e in assignment_entries:
            region, _, svc = e.key.removeprefix(keys.ASSIGNMENTS).partition("/")
            by_service.setdefault(svc, {})[region] = Assignment.model_validate(e.value)
        report_entries, _ = await store.scan(keys.REPORTS)
        reports = {
            e.key.removeprefix(keys.REPORTS): RegionReport.model_validate(e.value)
            for e in report_entries
        }
    alive_entries, _ = await store.scan(keys.ALIVE)
    alive = {e.key.removeprefix(keys.ALIVE) for e in alive_entries}
    views = []
    for entry in services:
        name = entry.key.removeprefix(keys.SERVICES)
        record = ServiceRecord.model_validate(entry.value)
        views.append(
            view(
                record,
                entry.revision,
                placements.get(name),
                by_service.get(name, {}),
                reports,
                alive,
            )
        )
    return views, revision


async def put_report(store: Store, region: str, report: RegionReport) -> int:
    """Store what a region reports it runs (only if the region still exists)."""
    ok, revision, _ = await store.txn(
        [Cond.exists(keys.region(region))],
        [Op.put(keys.report(region), report.model_dump(mode="json"))],
    )
    if not ok:
        raise LookupError(region)
    return revision
