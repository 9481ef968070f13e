"""Deploy benchmark: services deployed per second through the HTTP API, against raw
etcd transactions per second by the same store client, in the same run.

Target (DESIGN section 10): deploys reach at least 30% of the raw etcd rate.

A real etcd and a real `federation serve` process; three regions kept alive by
heartbeats (no agents: a deploy counts as done when its placement exists, which is
the control plane's part). First the raw rate: N create-if-absent transactions of a
service-sized JSON value through `federation.store.Store`, 16 in flight. Then N
`PUT /v1/services/{s}` through the API, 16 in flight, timed from the first PUT until
the controller has written a placement for every one of them. A PUT answered 409
(a write that lost a race inside the server) is retried and counted.

    .venv/bin/python bench/deploy.py            # 2,000 services
    .venv/bin/python bench/deploy.py --quick    # 300 services
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, cpu_seconds, machine, record, regions
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


async def raw_txns(store: Store, n: int) -> float:
    """Transactions per second: create-if-absent of a service-sized value."""
    value = {"spec": {"name": "x", **spec(0)}, "generation": 1, "pad": "x" * 200}
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with sem:
            await store.create(f"bench-raw/{i:06d}", value)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - started)


async def run(n: int, workdir: Path, replicas: int) -> dict[str, float]:
    async with cluster(workdir, replicas=replicas) as first:
        store = Store([first.etcd])
        await store.connect()
        try:
            raw = await raw_txns(store, n)
            # With two replicas, the deploys go to the one that does not lead: the API
            # on one, the controller on the other, as behind a load balancer.
            leader = await store.get_raw(keys.LEADER)
            servers = [first, *first.standbys]
            server = next((s for s in servers if not leader or leader[0] != s.identity), first)
            async with (
                ApiClient(server.url, server.admin, timeout=60) as api,
                regions(api, REGIONS),
            ):
                conflicts = 0
                sem = asyncio.Semaphore(IN_FLIGHT)

                async def deploy(i: int) -> None:
                    nonlocal conflicts
                    async with sem:
                        while True:
                            try:
                                await api.request("PUT", f"/v1/services/svc-{i:06d}", body=spec(i))
                                return
                            except ApiError as exc:
                                if exc.status != 409:
                                    raise
                                conflicts += 1

                cpu_before = [cpu_seconds(s.pid) for s in servers]
                started = time.perf_counter()
                await asyncio.gather(*(deploy(i) for i in range(n)))
                accepted = time.perf_counter() - started
                while await store.count(keys.PLACEMENTS) < n:
                    await asyncio.sleep(0.05)
                placed = time.perf_counter() - started
                cpu_after = [cpu_seconds(s.pid) for s in servers]
        finally:
            await store.close()
    return {
        "raw_per_s": raw,
        "accepted_s": accepted,
        "placed_s": placed,
        "deploy_per_s": n / placed,
        "ratio": (n / placed) / raw,
        "conflicts": conflicts,
        "cpu_us": (sum(cpu_after) - sum(cpu_before)) / n * 1e6,
        "leader_cpu_us": sum(
            a - b
            for s, a, b in zip(servers, cpu_after, cpu_before, strict=True)
            if leader is not None and leader[0] == s.identity
        )
        / n
        * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 services")
    parser.add_argument("--services", type=int)
    parser.add_argument(
        "--replicas", type=int, default=1, help="servers; with 2, deploys go to the standby"
    )
    args = parser.parse_args()
    n = args.services or (300 if args.quick else 2000)
    with tempfile.TemporaryDirectory() as tmp:
        f = asyncio.run(run(n, Path(tmp), args.replicas))
    ok = "OK" if f["ratio"] >= 0.3 else "MISSED"
    print(f"machine: {machine()}")
    where = "1 server" if args.replicas == 1 else f"{args.replicas} servers, PUTs to a standby"
    print(f"services: {n}, {IN_FLIGHT} in flight, {where}")
    print(f"raw etcd txns: {f['raw_per_s']:.0f}/s (same Store client)")
    print(
        f"deploys: all {n} accepted in {f['accepted_s']:.2f} s, placed in {f['placed_s']:.2f} s "
        f"= {f['deploy_per_s']:.0f} services/s (409s retried: {f['conflicts']:.0f})"
    )
    cpu = f"server CPU per deploy (API and controller): {f['cpu_us']:.0f} us"
    if args.replicas > 1:
        cpu += f", of which the leader (controller) {f['leader_cpu_us']:.0f} us"
    print(cpu)
    print(f"ratio deploy/raw: {f['ratio']:.3f} (target >= 0.3) {ok}")
    record(
        "deploy.py"
        + (" --quick" if args.quick else "")
        + (f" --replicas {args.replicas}" if args.replicas != 1 else ""),
        f"{n} services: raw etcd {f['raw_per_s']:.0f} txn/s, deploys {f['deploy_per_s']:.0f}/s, "
        f"ratio {f['ratio']:.3f} (target >= 0.3, {ok}), 409s retried {f['conflicts']:.0f}, "
        f"server CPU {f['cpu_us']:.0f} us per deploy",
    )


if __name__ == "__main__":
    main()
