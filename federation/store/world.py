"""Everything the controller decides from, read in one pass, and the services' records.

The reads are several Range calls, not one revision. That is safe because every
controller write compares what it was decided from (the service's and placement's
revisions, the leader key): a decision based on a stale read fails in etcd and the
next pass decides again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from federation.model.region import HeartbeatRecord, RegionRecord
from federation.model.service import Assignment, PlacementRecord, RegionReport, ServiceRecord
from federation.store import keys
from federation.store import policies as store_policies
from federation.store.etcd import Store

log = logging.getLogger(__name__)


@dataclass
class World:
    """The state the controller and the explain/impact views decide from."""

    services: dict[str, tuple[ServiceRecord, int]] = field(default_factory=dict)
    placements: dict[str, tuple[PlacementRecord, int]] = field(default_factory=dict)
    assignments: dict[tuple[str, str], Assignment] = field(default_factory=dict)
    regions: dict[str, RegionRecord] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    heartbeats: dict[str, HeartbeatRecord] = field(default_factory=dict)
    reports: dict[str, RegionReport] = field(default_factory=dict)
    residency: store_policies.Snapshot = field(default_factory=store_policies.Snapshot)
    rebalance: set[str] = field(default_factory=set)
    revision: int = 0
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _tail(key: str, prefix: str) -> str:
    return key.removeprefix(prefix)


async def read_world(store: Store) -> World:
    """Read services, placements, assignments, regions, liveness, reports and policies."""
    world = World()
    entries, world.revision = await store.scan(keys.SERVICES)
    for entry in entries:
        try:
            world.services[_tail(entry.key, keys.SERVICES)] = (
                ServiceRecord.model_validate(entry.value),
                entry.revision,
            )
        except ValidationError:
            # Written only through the validated API; a bad record is left alone, loudly.
            log.error("stored service %s does not validate; skipped", entry.key)
    entries, _ = await store.scan(keys.PLACEMENTS)
    for entry in entries:
        world.placements[_tail(entry.key, keys.PLACEMENTS)] = (
            PlacementRecord.model_validate(entry.value),
            entry.revision,
        )
    entries, _ = await store.scan(keys.ASSIGNMENTS)
    for entry in entries:
        region, _, service = _tail(entry.key, keys.ASSIGNMENTS).partition("/")
        world.assignments[(region, service)] = Assignment.model_validate(entry.value)
    entries, _ = await store.scan(keys.REGIONS)
    for entry in entries:
        record = RegionRecord.model_validate(entry.value)
        world.regions[record.name] = record
    entries, _ = await store.scan(keys.ALIVE)
    world.alive = {_tail(e.key, keys.ALIVE) for e in entries}
    entries, _ = await store.scan(keys.HEARTBEATS)
    world.heartbeats = {
        _tail(e.key, keys.HEARTBEATS): HeartbeatRecord.model_validate(e.value) for e in entries
    }
    entries, _ = await store.scan(keys.REPORTS)
    for entry in entries:
        try:
            world.reports[_tail(entry.key, keys.REPORTS)] = RegionReport.model_validate(entry.value)
        except ValidationError:
            log.error("stored report %s does not validate; skipped", entry.key)
    entries, _ = await store.scan(keys.REBALANCE)
    world.rebalance = {_tail(e.key, keys.REBALANCE) for e in entries}
    world.residency = await store_policies.snapshot(store)
    world.read_at = datetime.now(UTC)
    return world
