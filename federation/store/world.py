"""Everything the controller decides from, read in one pass, and the services' records.

The reads are several Range calls, not one revision. That is safe because every
controller write compares what it was decided from (the service's and placement's
revisions, the leader key): a decision based on a stale read fails in etcd and the
next pass decides again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from datetime import UTC, datetime

from pydantic import ValidationError

from federation.model.region import HeartbeatRecord, RegionRecord
from federation.model.service import Assignment, PlacementRecord, ServiceRecord, ServiceReport
from federation.planning.world import World
from federation.residency.snapshot import Snapshot
from federation.store import keys
from federation.store import policies as store_policies
from federation.store.etcd import Entry, Store
from federation.store.mirror import Mirror

log = logging.getLogger(__name__)


def _tail(key: str, prefix: str) -> str:
    return key.removeprefix(prefix)


async def read_world(store: Store) -> World:
    """Read services, placements, assignments, regions, liveness, reports and policies.

    The reads are awaited here; the parsing (pydantic validation of every record, the
    bulk of the cost with thousands of services) runs in a worker thread so the API
    sharing this event loop keeps answering meanwhile."""
    raw: dict[str, list[Entry]] = {}
    services, revision = await store.scan(keys.SERVICES)
    raw[keys.SERVICES] = services
    for prefix in (
        keys.PLACEMENTS,
        keys.ASSIGNMENTS,
        keys.REGIONS,
        keys.ALIVE,
        keys.HEARTBEATS,
        keys.REPORTS,
        keys.REBALANCE,
    ):
        raw[prefix], _ = await store.scan(prefix)
    residency = await store_policies.snapshot(store)
    world = await asyncio.to_thread(_parse, raw)
    world.revision = revision
    world.residency = residency
    world.read_at = datetime.now(UTC)
    return world


def _parse(raw: dict[str, list[Entry]]) -> World:
    world = World()
    for entry in raw[keys.SERVICES]:
        try:
            world.services[_tail(entry.key, keys.SERVICES)] = (
                ServiceRecord.model_validate(entry.value),
                entry.revision,
            )
        except ValidationError:
            # Written only through the validated API; a bad record is left alone, loudly.
            log.error("stored service %s does not validate; skipped", entry.key)
    for entry in raw[keys.PLACEMENTS]:
        world.placements[_tail(entry.key, keys.PLACEMENTS)] = (
            PlacementRecord.model_validate(entry.value),
            entry.revision,
        )
    for entry in raw[keys.ASSIGNMENTS]:
        region, _, service = _tail(entry.key, keys.ASSIGNMENTS).partition("/")
        world.assignments[(region, service)] = Assignment.model_validate(entry.value)
    for entry in raw[keys.REGIONS]:
        record = RegionRecord.model_validate(entry.value)
        world.regions[record.name] = record
        world.region_revisions[record.name] = entry.revision
    world.alive = {_tail(e.key, keys.ALIVE) for e in raw[keys.ALIVE]}
    world.heartbeats = {
        _tail(e.key, keys.HEARTBEATS): HeartbeatRecord.model_validate(e.value)
        for e in raw[keys.HEARTBEATS]
    }
    for entry in raw[keys.REPORTS]:
        region, slash, service = _tail(entry.key, keys.REPORTS).partition("/")
        if not slash:
            continue  # a whole-region report of older servers: ignored (keys.REPORTS)
        try:
            world.reports[(region, service)] = ServiceReport.model_validate(entry.value)
        except ValidationError:
            log.error("stored report %s does not validate; skipped", entry.key)
    world.rebalance = {_tail(e.key, keys.REBALANCE) for e in raw[keys.REBALANCE]}
    return world


# What a server mirrors (federation.store.mirror): everything the controller plans from
# and the API's service reads show, and the tokens every request presents. The small
# ones keep their parsed form.
MIRRORED = (
    keys.SERVICES,
    keys.PLACEMENTS,
    keys.ASSIGNMENTS,
    keys.REBALANCE,
    keys.REGIONS,
    keys.ALIVE,
    keys.HEARTBEATS,
    keys.REPORTS,
    keys.POLICIES,
    keys.GROUPS,
    keys.RESIDENCY_FENCE,
    keys.TOKENS,
    # Sealed (no value in clear): delivery reads them without a round trip to etcd.
    keys.SECRETS,
    # Followed for its seq: a server alarms when the head goes back (store.audit.monitor).
    keys.AUDIT_HEAD,
)
MIRROR_CACHED = (keys.REGIONS, keys.HEARTBEATS, keys.TOKENS, keys.SECRETS)
# The big ones, one key per service (or per service and region): held deflated.
MIRROR_PACKED = (keys.SERVICES, keys.PLACEMENTS, keys.ASSIGNMENTS)
# Keyed region first: a region's report is compared, as bytes, with what it reported
# before (each of those keys is a few dozen bytes: held as they are).
MIRROR_GROUPED = (keys.REPORTS,)


def world_of(mirror: Mirror, names: Collection[str], residency: Snapshot) -> World:
    """The world as the mirror holds it, with only `names` among services, placements,
    assignments and reports (regions, liveness and policies in full). No etcd reads;
    the services' records are parsed here (call it in a worker thread for many)."""
    world = World(residency=residency, revision=mirror.revision)
    for record, revision in mirror.all(keys.REGIONS, RegionRecord).values():
        world.regions[record.name] = record
        world.region_revisions[record.name] = revision
    world.alive = set(mirror.tails(keys.ALIVE))
    world.heartbeats = {t: r for t, (r, _) in mirror.all(keys.HEARTBEATS, HeartbeatRecord).items()}
    regions = list(mirror.tails(keys.REGIONS))
    for name in names:
        service = mirror.get(keys.SERVICES, name, ServiceRecord)
        if service is not None:
            world.services[name] = service
        placement = mirror.get(keys.PLACEMENTS, name, PlacementRecord)
        if placement is not None:
            world.placements[name] = placement
        # Assignments are keyed by region first; probing each region is O(regions)
        # per service instead of a scan of every assignment.
        for region in regions:
            got = mirror.get(keys.ASSIGNMENTS, f"{region}/{name}", Assignment)
            if got is not None:
                world.assignments[(region, name)] = got[0]
                report = mirror.get(keys.REPORTS, f"{region}/{name}", ServiceReport)
                if report is not None:
                    world.reports[(region, name)] = report[0]
        if mirror.has(keys.REBALANCE, name):
            world.rebalance.add(name)
    return world


def capacity_used(mirror: Mirror) -> tuple[dict[str, float], dict[str, int]]:
    """Capacity every placement holds per region (placed and draining replicas times
    the service's resources), from the mirror's JSON without building models: what a
    view of one service (explain) plans against, at any size of world."""
    cpu: dict[str, float] = {}
    memory: dict[str, int] = {}
    for name in mirror.tails(keys.PLACEMENTS):
        placement, service = mirror.json(keys.PLACEMENTS, name), mirror.json(keys.SERVICES, name)
        if not isinstance(placement, dict) or not isinstance(service, dict):
            continue
        resources = service.get("spec", {}).get("resources", {})
        counts = dict(placement.get("regions", {}))
        for region, drain in placement.get("draining", {}).items():
            counts[region] = counts.get(region, 0) + drain.get("replicas", 0)
        for region, n in counts.items():
            cpu[region] = cpu.get(region, 0.0) + n * float(resources.get("cpu", 0.0))
            memory[region] = memory.get(region, 0) + n * int(resources.get("memory_mb", 0))
    return cpu, memory
