"""`World`: everything a plan is decided from, as plain data.

The store fills it (`federation.store.world`: from etcd or from a server's mirror);
planning, drills' what-if and the API's explain and impact views read it. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from federation.model.region import HeartbeatRecord, RegionRecord
from federation.model.service import Assignment, PlacementRecord, RegionReport, ServiceRecord
from federation.residency.snapshot import Snapshot


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
    residency: Snapshot = field(default_factory=Snapshot)
    rebalance: set[str] = field(default_factory=set)
    revision: int = 0
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))
