"""Scheduler benchmark: `place_all` for many services over many regions, on one core.

Target (DESIGN section 10): 10,000 services over 100 regions in under 1 s.

Two passes are timed: the initial placement (every service new) and a steady-state
reconcile (the same services with the first pass as their current placement and the
regions' free capacity net of it), which is what the controller runs most often.
Inputs are generated from a fixed seed, so runs are comparable.

    .venv/bin/python bench/scheduler.py            # 10,000 services, 100 regions
    .venv/bin/python bench/scheduler.py --quick    # 500 services, 20 regions
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation.model.service import ServiceSpec
from federation.scheduler import RegionInfo, Verdict, place_all

EU = ["DE", "FR", "NL", "IE", "SE", "PL", "IT", "ES", "AT", "FI"]
OTHER = ["US", "CA", "IN", "JP", "BR", "GB", "CH", "AU", "SG", "ZA"]

# Data-class patterns: which countries each admits (None = anywhere).
PATTERNS: dict[str, set[str] | None] = {
    "public": None,
    "phi-eu": set(EU),
    "pii-eea-ch": set(EU) | {"CH"},
    "pii-us": {"US"},
    "gov-de": {"DE"},
    "finance-adequacy": set(EU) | {"GB", "CH", "JP", "CA"},
}
WEIGHTS = [40, 20, 15, 10, 5, 10]


def make_regions(count: int, rng: random.Random) -> list[RegionInfo]:
    regions = []
    countries = EU + OTHER
    for i in range(count):
        country = countries[i % len(countries)]
        state = "ready"
        unreachable_for = None
        if i % 37 == 5:
            state, unreachable_for = "unreachable", 30.0
        elif i % 41 == 7:
            state = "cordoned"
        regions.append(
            RegionInfo(
                name=f"{country.lower()}-{i:03d}",
                country=country,
                labels={"provider": "onprem" if i % 3 == 0 else "cloud"},
                state=state,  # type: ignore[arg-type]
                cpu_free=float(rng.choice([64, 128, 256, 512])),
                memory_free=rng.choice([128, 256, 512, 1024]) * 1024,
                unreachable_for=unreachable_for,
            )
        )
    return regions


def make_verdicts(regions: Sequence[RegionInfo]) -> dict[str, dict[str, Verdict]]:
    """One verdict map per data-class pattern, shared by the services of that pattern."""
    yes = Verdict(True, ("allowed",))
    result = {}
    for pattern, countries in PATTERNS.items():
        no = Verdict(False, (f"{pattern}: country not allowed",))
        result[pattern] = {
            r.name: yes if countries is None or r.country in countries else no for r in regions
        }
    return result


def make_specs(count: int, regions: Sequence[RegionInfo], rng: random.Random) -> list[ServiceSpec]:
    specs = []
    names = [r.name for r in regions]
    for i in range(count):
        pattern = rng.choices(list(PATTERNS), WEIGHTS)[0]
        placement: dict[str, object] = {"min_regions": rng.randint(1, 3)}
        if rng.random() < 0.5:
            placement["max_per_region"] = rng.randint(2, 4)
        roll = rng.random()
        if roll < 0.2:
            placement["prefer"] = rng.sample(names, 2)
        elif roll < 0.3:
            placement["prefer_labels"] = {"provider": "onprem"}
        specs.append(
            ServiceSpec.model_validate(
                {
                    "name": f"svc-{i:05d}",
                    "command": ["run"],
                    "replicas": rng.randint(1, 6),
                    "resources": {
                        "cpu": rng.choice([0.1, 0.25, 0.5, 1.0]),
                        "memory_mb": rng.choice([64, 128, 256, 512]),
                    },
                    "data_classes": [] if pattern == "public" else [pattern],
                    "placement": placement,
                }
            )
        )
    return specs


def pattern_of(spec: ServiceSpec) -> str:
    return spec.data_classes[0] if spec.data_classes else "public"


def net_of(
    regions: Sequence[RegionInfo],
    specs: Sequence[ServiceSpec],
    placements: Mapping[str, Mapping[str, int]],
) -> list[RegionInfo]:
    """The regions with their free capacity net of `placements`."""
    cpu = {r.name: r.cpu_free for r in regions}
    mem = {r.name: r.memory_free for r in regions}
    for spec in specs:
        for name, count in placements.get(spec.name, {}).items():
            cpu[name] -= count * spec.resources.cpu
            mem[name] -= count * spec.resources.memory_mb
    return [
        RegionInfo(
            r.name, r.country, r.labels, r.state, cpu[r.name], mem[r.name], r.unreachable_for
        )
        for r in regions
    ]


def run(services: int, region_count: int, seed: int) -> None:
    rng = random.Random(seed)
    regions = make_regions(region_count, rng)
    by_pattern = make_verdicts(regions)
    specs = make_specs(services, regions, rng)
    # One verdict map per service, as the controller builds them (exemptions are per service).
    verdicts = {s.name: dict(by_pattern[pattern_of(s)]) for s in specs}

    start = time.perf_counter()
    first = place_all(specs, regions, verdicts, {})
    initial = time.perf_counter() - start

    start = time.perf_counter()
    for d in first.values():
        d.allowed_regions, d.kept  # noqa: B018  (what the controller needs per service)
    status = time.perf_counter() - start

    start = time.perf_counter()
    lines = sum(len(d.regions) for d in first.values())
    explain = time.perf_counter() - start

    current = {name: d.placement for name, d in first.items()}
    steady_regions = net_of(regions, specs, current)
    start = time.perf_counter()
    second = place_all(specs, steady_regions, verdicts, current)
    steady = time.perf_counter() - start

    reasons: dict[str, int] = {}
    for d in first.values():
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    moved = sum(1 for name, d in second.items() if d.placement != first[name].placement)
    replicas = sum(d.placed for d in first.values())

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"services: {services}, regions: {region_count}, replicas placed: {replicas}")
    print(f"reasons: {', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}")
    print(f"initial: {initial:.3f} s, {services / initial:,.0f} services/s")
    print(f"steady:  {steady:.3f} s, {services / steady:,.0f} services/s, {moved} moved")
    from bench.common import record

    record(
        "scheduler.py",
        f"{services} services over {region_count} regions: first placement {initial:.3f} s, "
        f"steady state {steady:.3f} s (target < 1 s, {'OK' if initial < 1 else 'MISSED'})",
    )
    print(f"status:  {status:.3f} s for allowed_regions and kept of every decision")
    print(f"explain: {explain:.3f} s for all {lines:,} lines (built on demand, not in the above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 services over 20 regions")
    parser.add_argument("--services", type=int, help="number of services (default 10,000)")
    parser.add_argument("--regions", type=int, help="number of regions (default 100)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    services = args.services or (500 if args.quick else 10_000)
    region_count = args.regions or (20 if args.quick else 100)
    run(services, region_count, args.seed)


if __name__ == "__main__":
    main()
