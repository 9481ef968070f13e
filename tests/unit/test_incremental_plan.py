"""The controller plans a few services at a time against capacity the ledger keeps for
all of them (`plan(..., used=...)`). Property: however the services arrive in chunks,
the placements never overcommit a region, and a full pass over the result (what the
periodic resync does) moves nothing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.model.region import HeartbeatRecord, RegionRecord
from federation.model.service import PlacementRecord, ServiceRecord, ServiceSpec
from federation.planning.plan import plan
from federation.planning.world import World

NOW = datetime(2026, 11, 26, tzinfo=UTC)
REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US", "ch-zrh-1": "CH"}

services_st = st.lists(
    st.fixed_dictionaries(
        {
            "replicas": st.integers(0, 5),
            "cpu": st.sampled_from([0.5, 1.0, 1.5, 2.5]),
            "min_regions": st.integers(1, 3),
            "max_per_region": st.one_of(st.none(), st.integers(1, 3)),
            "prefer": st.lists(st.sampled_from(sorted(REGIONS)), max_size=2, unique=True),
        }
    ),
    min_size=1,
    max_size=14,
)


def base_world(capacity: dict[str, float]) -> World:
    world = World()
    for name, country in REGIONS.items():
        world.regions[name] = RegionRecord(name=name, country=country, created_at=NOW)
        world.heartbeats[name] = HeartbeatRecord.model_validate(
            {
                "at": NOW.isoformat(),
                "capacity": {"cpu": capacity[name], "memory_mb": 1_000_000},
                "allocated": {"cpu": 0, "memory_mb": 0},
            }
        )
        world.alive.add(name)
    return world


def record(i: int, s: dict[str, Any]) -> ServiceRecord:
    spec = ServiceSpec.model_validate(
        {
            "name": f"svc-{i:02d}",
            "command": ["run"],
            "replicas": s["replicas"],
            "resources": {"cpu": s["cpu"], "memory_mb": 1},
            "placement": {
                "min_regions": s["min_regions"],
                "max_per_region": s["max_per_region"],
                "prefer": s["prefer"],
            },
        }
    )
    return ServiceRecord(spec=spec, generation=1, created_at=NOW, updated_at=NOW)


def used(
    services: dict[str, ServiceRecord], placed: dict[str, PlacementRecord]
) -> tuple[dict[str, float], dict[str, int]]:
    cpu: dict[str, float] = {}
    memory: dict[str, int] = {}
    for name, p in placed.items():
        res = services[name].spec.resources
        for region, n in p.regions.items():
            cpu[region] = cpu.get(region, 0.0) + n * res.cpu
            memory[region] = memory.get(region, 0) + n * res.memory_mb
    return cpu, memory


@settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=services_st,
    capacity=st.fixed_dictionaries({r: st.sampled_from([2.0, 4.0, 8.0]) for r in REGIONS}),
    cuts=st.lists(st.integers(1, 13), max_size=5),
)
def test_chunked_planning_matches_a_full_pass(
    specs: list[dict[str, Any]], capacity: dict[str, float], cuts: list[int]
) -> None:
    services = {f"svc-{i:02d}": record(i, s) for i, s in enumerate(specs)}
    names = sorted(services)
    bounds = sorted({0, len(names), *(c for c in cuts if c < len(names))})
    placed: dict[str, PlacementRecord] = {}
    for start, end in itertools.pairwise(bounds):
        world = base_world(capacity)
        for name in names[start:end]:
            world.services[name] = (services[name], 1)
        plans = plan(world, NOW, region_ttl=10, used=used(services, placed))
        for name, p in plans.items():
            placed[name] = p.record

    cpu, _ = used(services, placed)
    for region, total in cpu.items():
        assert total <= capacity[region] + 1e-9, f"{region} overcommitted: {total}"

    full = base_world(capacity)
    for name in names:
        full.services[name] = (services[name], 1)
        full.placements[name] = (placed[name], 1)
    again = plan(full, NOW, region_ttl=10)
    for name in names:
        assert again[name].record.regions == placed[name].regions, name
        assert again[name].record.reason == placed[name].reason, name
