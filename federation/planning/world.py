"""`World`: everything a plan is decided from, as plain data.

The store fills it (`federation.store.world`: from etcd or from a server's mirror);
planning, drills' what-if and the API's explain and impact views read it. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from federation.model.region import HeartbeatRecord, RegionRecord
from federation.model.service import Assignment, PlacementRecord, ServiceRecord, ServiceReport
from federation.residency.snapshot import Snapshot


@dataclass
class World:
    """The state the controller and the explain/impact views decide from."""

    services: dict[str, tuple[ServiceRecord, int]] = field(default_factory=dict)
    placements: dict[str, tuple[PlacementRecord, int]] = field(default_factory=dict)
    assignments: dict[tuple[str, str], Assignment] = field(default_factory=dict)
    regions: dict[str, RegionRecord] = field(default_factory=dict)
    # Region -> the mod revision of its record (what a write to it sends as If-Match).
    region_revisions: dict[str, int] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    heartbeats: dict[str, HeartbeatRecord] = field(default_factory=dict)
    # (region, service) -> what the region reports of the service
    reports: dict[tuple[str, str], ServiceReport] = field(default_factory=dict)
    residency: Snapshot = field(default_factory=Snapshot)
    rebalance: set[str] = field(default_factory=set)
    # Region -> when its liveness lease was seen to go (the controller's clock; empty
    # in a world read from etcd, where the last heartbeat record stands in).
    lost_at: dict[str, datetime] = field(default_factory=dict)
    revision: int = 0
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def reports_of(self, service: str, regions: Iterable[str]) -> dict[str, ServiceReport]:
        """What each of `regions` reports of `service` (those that report it)."""
        found = {}
        for region in regions:
            report = self.reports.get((region, service))
            if report is not None:
                found[region] = report
        return found
