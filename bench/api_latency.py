"""API latency benchmark: p50/p99 of GET and PUT at a steady 200 requests per second.

Target (DESIGN section 10): p99 under 50 ms at 200 requests/s on this 2-core machine.

A real etcd, a real `federation serve` process, three regions kept alive by
heartbeats and 100 services. Requests are sent open-loop (one every 5 ms, whether or
not earlier ones have answered), 80% `GET /v1/services/{s}` and 20% `PUT` of a changed
spec (a new generation, which the controller then places). Latency is measured from
the moment a request was due, so a slow server cannot hide behind a slow sender. The
sender shares the 2 cores with the server and etcd.

    .venv/bin/python bench/api_latency.py            # 60 s
    .venv/bin/python bench/api_latency.py --quick    # 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, machine, record, regions
from federation.client import ApiClient, ApiError

REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US"}
SERVICES = 100
RATE = 200


def spec(version: int) -> dict[str, object]:
    return {
        "command": ["true"],
        "replicas": 2,
        "resources": {"cpu": 0.01, "memory_mb": 1},
        "env": {"V": str(version)},
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def run(seconds: float, workdir: Path) -> dict[str, list[float] | int]:
    async with (
        cluster(workdir) as server,
        ApiClient(server.url, server.admin, timeout=30) as api,
        regions(api, REGIONS),
    ):
        for i in range(SERVICES):
            await api.request("PUT", f"/v1/services/svc-{i:03d}", body=spec(0))
        await asyncio.sleep(1.0)  # let the controller place them
        gets: list[float] = []
        puts: list[float] = []
        errors = 0
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, due: float) -> None:
            nonlocal errors
            name = f"svc-{i % SERVICES:03d}"
            try:
                if i % 5 == 0:
                    await api.request("PUT", f"/v1/services/{name}", body=spec(i))
                    puts.append(time.perf_counter() - due)
                else:
                    await api.request("GET", f"/v1/services/{name}")
                    gets.append(time.perf_counter() - due)
            except ApiError:
                errors += 1

        start = time.perf_counter()
        total = int(seconds * RATE)
        for i in range(total):
            due = start + i / RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"gets": gets, "puts": puts, "errors": errors, "rate": int(total / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s instead of 60 s")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    with tempfile.TemporaryDirectory() as tmp:
        f = asyncio.run(run(seconds, Path(tmp)))
    gets, puts = f["gets"], f["puts"]
    assert isinstance(gets, list) and isinstance(puts, list)
    ms = {
        "get_p50": pct(gets, 50) * 1000,
        "get_p99": pct(gets, 99) * 1000,
        "put_p50": pct(puts, 50) * 1000,
        "put_p99": pct(puts, 99) * 1000,
        "all_p99": pct(gets + puts, 99) * 1000,
    }
    ok = "OK" if ms["all_p99"] < 50 else "MISSED"
    print(f"machine: {machine()}")
    print(
        f"{seconds:g} s at {RATE} req/s (achieved {f['rate']}/s), {SERVICES} services, "
        f"errors: {f['errors']}"
    )
    print(
        f"GET /v1/services/{{s}}: n={len(gets)} p50 {ms['get_p50']:.1f} ms, "
        f"p99 {ms['get_p99']:.1f} ms, mean {statistics.fmean(gets) * 1000 if gets else 0:.1f} ms"
    )
    print(
        f"PUT /v1/services/{{s}}: n={len(puts)} p50 {ms['put_p50']:.1f} ms, "
        f"p99 {ms['put_p99']:.1f} ms"
    )
    print(f"all: p99 {ms['all_p99']:.1f} ms (target < 50 ms) {ok}")
    record(
        "api_latency.py" + (" --quick" if args.quick else ""),
        f"{seconds:g} s at {RATE} req/s: GET p50 {ms['get_p50']:.1f} / p99 {ms['get_p99']:.1f} ms, "
        f"PUT p50 {ms['put_p50']:.1f} / p99 {ms['put_p99']:.1f} ms, overall p99 "
        f"{ms['all_p99']:.1f} ms (target < 50 ms, {ok}), errors {f['errors']}",
    )


if __name__ == "__main__":
    main()
