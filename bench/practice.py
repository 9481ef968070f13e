"""Practice schedule benchmark: `next_run` for the costliest schedules the API accepts.

`GET /v1/drill-schedules` computes every schedule's next run on the event loop, so one
must cost well under the few milliseconds a request may take (DESIGN section 10). Three
cases: `dates`, 28 allowed and 28 blocked windows and 366 blocked dates (no run
possible within the horizon, but a blocked date skips its day at once); `covered`, the
worst: 28 allowed windows each exactly covered by a blocked window and no blocked date,
so every day of the 400-day horizon has candidate instants; and `weekly`, the common
case, one weekly window in a time zone with daylight saving.

    .venv/bin/python bench/practice.py
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from federation.model.region import RegionRecord
from federation.model.schedule import DAYS, DrillSchedule
from federation.model.service import (
    Assignment,
    Runtime,
    ServiceRecord,
    ServiceSpec,
)
from federation.planning.practice import incident, next_run
from federation.planning.world import World

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def worst() -> DrillSchedule:
    windows = [f"{DAYS[i % 7]} {i % 24:02}:00-{i % 24:02}:30" for i in range(28)]
    blocked = [f"{DAYS[i % 7]} 00:00-24:00" for i in range(7)]
    blocked += [f"{DAYS[i % 7]} {i % 24:02}:10-{i % 24:02}:20" for i in range(21)]
    dates = [date(2026, 1, 1) + timedelta(days=i) for i in range(366)]
    return DrillSchedule(
        name="worst",
        regions=["eu-fr-1"],
        windows=windows,
        blocked_windows=blocked,
        blocked_dates=dates,
        time_zone="Europe/Berlin",
    )


def covered() -> DrillSchedule:
    """28 windows, each exactly covered by a blocked window, no blocked date: every
    day of the horizon has candidates, and each must be tried."""
    windows = [f"{DAYS[i % 7]} {i // 7 * 5:02}:00-{i // 7 * 5 + 4:02}:00" for i in range(28)]
    return DrillSchedule(
        name="covered",
        regions=["eu-fr-1"],
        windows=windows,
        blocked_windows=windows,
        time_zone="Europe/Berlin",
    )


def common() -> DrillSchedule:
    return DrillSchedule(
        name="weekly", regions=["eu-fr-1"], windows=["Tue 09:00-12:00"], time_zone="Europe/Paris"
    )


def timed(schedule: DrillSchedule, rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        next_run(schedule, NOW, [NOW - timedelta(days=2)])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, max(times) * 1000


def big_world(services: int, regions: int) -> World:
    """`services` services, each assigned in every one of `regions` regions."""
    world = World()
    names = [f"r-{i:03}" for i in range(regions)]
    for name in names:
        world.regions[name] = RegionRecord(name=name, country="DE", created_at=NOW)
        world.alive.add(name)
    for i in range(services):
        spec = ServiceSpec.model_validate({"name": f"svc-{i:04}", "command": ["run"]})
        record = ServiceRecord(spec=spec, generation=1, created_at=NOW, updated_at=NOW)
        world.services[spec.name] = (record, 1)
        runtime = Runtime.of(spec, 1)
        for region in names:
            world.assignments[(region, spec.name)] = Assignment(
                service=spec.name, region=region, replicas=1, runtime=runtime
            )
    return world


def timed_incident(world: World, rounds: int) -> tuple[float, float]:
    schedule = DrillSchedule(name="all", regions=["r-000"], windows=["Tue 09:00-12:00"])
    affected = set(world.services)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        incident(world, schedule, affected)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, max(times) * 1000


def main() -> None:
    for label, schedule, rounds in (
        ("dates", worst(), 20),
        ("covered", covered(), 20),
        ("weekly", common(), 200),
    ):
        median, slowest = timed(schedule, rounds)
        print(f"next_run {label:7}: median {median:.2f} ms, max {slowest:.2f} ms ({rounds} runs)")
    world = big_world(1000, 30)
    median, slowest = timed_incident(world, 5)
    print(
        f"incident 1,000 services x 30 regions: median {median:.1f} ms, max {slowest:.1f} ms"
        " (5 runs)"
    )


if __name__ == "__main__":
    main()
