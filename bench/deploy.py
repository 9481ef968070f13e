"""Deploy benchmark: services deployed per second through the HTTP API, against raw
etcd transactions per second by the same store client, in the same run.

Target (DESIGN section 10): deploys reach at least 30% of the raw etcd rate.

A real etcd and a real `federation serve` process; three regions kept alive by
heartbeats (no agents: a deploy counts as done when its placement exists, which is
the control plane's part). The run alternates, in rounds, between the two:

- raw: N create-if-absent transactions of a service-sized JSON value through
  `federation.store.Store`, 16 in flight, under a prefix of their own: the server
  neither watches nor mirrors them, so the baseline is etcd and the client alone;
- deploys: N `PUT /v1/services/{s}` through the API, 16 in flight, timed from the
  first PUT until the controller has written a placement for every one of them. A
  PUT answered 409 (a write that lost a race inside the server) is retried and counted.

The machine's speed drifts by up to a third from one second to the next, so a
single short measurement of each says little. Each round's deploys are measured
between two raw measurements (raw, deploys, raw, deploys, ..., raw) and divided by
the mean of the two around them, which cancels a steady drift; the ratio of each
round is printed, and the median of the rounds is the figure.

    .venv/bin/python bench/deploy.py            # 5 rounds of 2,000 services
    .venv/bin/python bench/deploy.py --quick    # 3 rounds of 300 services
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, cpu_seconds, machine, record, regions, table
from federation.client import ApiClient, ApiError
from federation.store import Store, keys

REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US"}
IN_FLIGHT = 16


def spec(i: int) -> dict[str, object]:
    return {
        "command": ["python", "-m", "http.server", "{port}"],
        "version": "1.0.0",
        "replicas": 2,
        "resources": {"cpu": 0.01, "memory_mb": 1},
        "data_classes": ["public"],
        "placement": {"min_regions": 2},
        "env": {"INDEX": str(i)},
    }


async def raw_txns(store: Store, n: int, tag: str) -> float:
    """Transactions per second: create-if-absent of a service-sized value."""
    value = {"spec": {"name": "x", **spec(0)}, "generation": 1, "pad": "x" * 200}
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with sem:
            await store.create(f"{tag}/{i:06d}", value)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - started)


@dataclass
class Round:
    raw_per_s: float  # the mean of the raw measurements just before and just after
    accepted_s: float
    placed_s: float
    deploy_per_s: float
    conflicts: int

    @property
    def ratio(self) -> float:
        return self.deploy_per_s / self.raw_per_s


async def deploys(api: ApiClient, store: Store, n: int, tag: str) -> tuple[float, float, int]:
    """Deploy n services; (seconds until all accepted, until all placed, 409s retried)."""
    conflicts = 0
    sem = asyncio.Semaphore(IN_FLIGHT)
    before = await store.count(keys.PLACEMENTS)

    async def deploy(i: int) -> None:
        nonlocal conflicts
        async with sem:
            while True:
                try:
                    await api.request("PUT", f"/v1/services/{tag}-{i:06d}", body=spec(i))
                    return
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                    conflicts += 1

    started = time.perf_counter()
    await asyncio.gather(*(deploy(i) for i in range(n)))
    accepted = time.perf_counter() - started
    while await store.count(keys.PLACEMENTS) < before + n:
        await asyncio.sleep(0.02)
    return accepted, time.perf_counter() - started, conflicts


async def run(n: int, rounds: int, workdir: Path, replicas: int) -> dict[str, Any]:
    async with cluster(workdir, replicas=replicas) as first:
        store = Store([first.etcd])
        raw_store = Store([first.etcd], prefix="/bench-raw/")
        await store.connect()
        await raw_store.connect()
        try:
            # With two replicas, the deploys go to the one that does not lead: the API
            # on one, the controller on the other, as behind a load balancer.
            leader = await store.get_raw(keys.LEADER)
            servers = [first, *first.standbys]
            server = next((s for s in servers if not leader or leader[0] != s.identity), first)
            async with (
                ApiClient(server.url, server.admin, timeout=60) as api,
                regions(api, REGIONS),
            ):
                results: list[Round] = []
                cpu = [0.0] * len(servers)
                raw_before = await raw_txns(raw_store, n, "round-0")
                for r in range(rounds):
                    cpu_before = [cpu_seconds(s.pid) for s in servers]
                    accepted, placed, conflicts = await deploys(api, store, n, f"svc-r{r}")
                    cpu_after = [cpu_seconds(s.pid) for s in servers]
                    cpu = [c + a - b for c, a, b in zip(cpu, cpu_after, cpu_before, strict=True)]
                    raw_after = await raw_txns(raw_store, n, f"round-{r + 1}")
                    raw = (raw_before + raw_after) / 2
                    results.append(Round(raw, accepted, placed, n / placed, conflicts))
                    raw_before = raw_after
        finally:
            await raw_store.close()
            await store.close()
    leads = [leader is not None and leader[0] == s.identity for s in servers]
    return {
        "rounds": results,
        "cpu_us": sum(cpu) / (n * rounds) * 1e6,
        "leader_cpu_us": sum(c for c, lead in zip(cpu, leads, strict=True) if lead)
        / (n * rounds)
        * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rounds of 300 services")
    parser.add_argument("--services", type=int, help="services per round")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; 3 with --quick)")
    parser.add_argument(
        "--replicas", type=int, default=1, help="servers; with 2, deploys go to the standby"
    )
    args = parser.parse_args()
    n = args.services or (300 if args.quick else 2000)
    rounds_wanted = args.rounds or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        f = asyncio.run(run(n, rounds_wanted, Path(tmp), args.replicas))
    rounds: list[Round] = f["rounds"]
    ratio = statistics.median(r.ratio for r in rounds)
    deploy = statistics.median(r.deploy_per_s for r in rounds)
    raw = statistics.median(r.raw_per_s for r in rounds)
    ok = "OK" if ratio >= 0.3 else "MISSED"
    print(f"machine: {machine()}")
    where = "1 server" if args.replicas == 1 else f"{args.replicas} servers, PUTs to a standby"
    print(f"services: {len(rounds)} rounds of {n}, {IN_FLIGHT} in flight, {where}")
    print(
        table(
            [
                "round",
                "raw txn/s (around)",
                "accepted in",
                "placed in",
                "deploys/s",
                "409s",
                "ratio",
            ],
            [
                [
                    str(i + 1),
                    f"{r.raw_per_s:.0f}",
                    f"{r.accepted_s:.2f} s",
                    f"{r.placed_s:.2f} s",
                    f"{r.deploy_per_s:.0f}",
                    str(r.conflicts),
                    f"{r.ratio:.3f}",
                ]
                for i, r in enumerate(rounds)
            ],
        )
    )
    cpu = f"server CPU per deploy (API and controller): {f['cpu_us']:.0f} us"
    if args.replicas > 1:
        cpu += f", of which the leader (controller) {f['leader_cpu_us']:.0f} us"
    print(cpu)
    print(
        f"ratio deploy/raw: {ratio:.3f}, median of {len(rounds)} rounds "
        f"(deploys {deploy:.0f}/s, raw {raw:.0f} txn/s; target >= 0.3) {ok}"
    )
    record(
        "deploy.py"
        + (" --quick" if args.quick else "")
        + (f" --replicas {args.replicas}" if args.replicas != 1 else ""),
        f"{len(rounds)} rounds of {n} services: raw etcd {raw:.0f} txn/s, deploys {deploy:.0f}/s, "
        f"ratio {ratio:.3f} (median; rounds "
        + ", ".join(f"{r.ratio:.3f}" for r in rounds)
        + f"; target >= 0.3, {ok}), 409s retried {sum(r.conflicts for r in rounds)}, "
        f"server CPU {f['cpu_us']:.0f} us per deploy",
    )


if __name__ == "__main__":
    main()
