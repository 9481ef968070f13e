"""Memory benchmark: the server's RSS with N services stored, watched and placed.

Target (DESIGN section 10): under 300 MB RSS with 100,000 services.

A real etcd and a real `federation serve` process, three regions kept alive by
heartbeats. The services are written straight into etcd (valid service records, 100
per transaction: the API's deploy rate is bench/deploy.py's business), the controller
sees them through its watch and places every one; then a new region calls for a full
pass over every service. The figures: the server's RSS at its peak and after that
pass, and how long the full pass took.

    .venv/bin/python bench/memory.py            # 100,000 services
    .venv/bin/python bench/memory.py --quick    # 5,000 services
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, machine, record, regions, rss_mb
from federation.client import ApiClient
from federation.model.service import ServiceRecord, ServiceSpec
from federation.store import Op, Store, keys

REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US"}
PER_TXN = 100


async def run(n: int, workdir: Path) -> dict[str, float]:
    async with cluster(workdir) as server:
        idle = rss_mb(server.pid)
        async with (
            ApiClient(server.url, server.admin, timeout=60) as api,
            regions(api, REGIONS, cpu=1_000_000),
        ):
            store = Store([server.etcd], timeout=30)
            await store.connect()
            try:
                now = datetime.now(UTC)
                started = time.perf_counter()
                for base in range(0, n, PER_TXN):
                    ops = []
                    for i in range(base, min(n, base + PER_TXN)):
                        spec = ServiceSpec(
                            name=f"svc-{i:06d}",
                            command=["true"],
                            replicas=1,
                            resources={"cpu": 0.01, "memory_mb": 1},  # type: ignore[arg-type]
                        )
                        rec = ServiceRecord(spec=spec, generation=1, created_at=now, updated_at=now)
                        ops.append(Op.put(keys.service(spec.name), rec.model_dump(mode="json")))
                    await store.txn([], ops)
                stored = time.perf_counter() - started
                peak = idle
                while await store.count(keys.PLACEMENTS) < n:
                    peak = max(peak, rss_mb(server.pid))
                    await asyncio.sleep(0.2)
                placed = time.perf_counter() - started
                # A full pass over the whole world (what the periodic resync and any
                # region change cost): a new region calls for one.
                before = await full_passes(server.url)
                await api.request("POST", "/v1/regions", body={"name": "eu-es-1", "country": "ES"})
                full_started = time.perf_counter()
                while await full_passes(server.url) <= before:
                    peak = max(peak, rss_mb(server.pid))
                    await asyncio.sleep(0.2)
                full = time.perf_counter() - full_started
                peak = max(peak, rss_mb(server.pid))
                await asyncio.sleep(2)
                steady = rss_mb(server.pid)
            finally:
                await store.close()
    return {
        "idle": idle,
        "steady": steady,
        "peak": peak,
        "stored_s": stored,
        "placed_s": placed,
        "full_s": full,
    }


async def full_passes(url: str) -> float:
    """Full controller passes completed so far, from the server's /metrics."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        wanted = 'kind="full"' in line and 'outcome="ok"' in line
        if line.startswith("federation_reconcile_passes_total{") and wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 services")
    parser.add_argument("--services", type=int)
    args = parser.parse_args()
    n = args.services or (5_000 if args.quick else 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        f = asyncio.run(run(n, Path(tmp)))
    ok = "OK" if f["peak"] < 300 else "MISSED"
    print(f"machine: {machine()}")
    print(
        f"services: {n}, stored in {f['stored_s']:.1f} s, all placed "
        f"{f['placed_s']:.1f} s after the first write"
    )
    print(f"a full controller pass over all {n} services: {f['full_s']:.1f} s")
    print(
        f"server RSS: {f['idle']:.0f} MiB idle, {f['steady']:.0f} MiB with {n} services, "
        f"peak {f['peak']:.0f} MiB (target < 300 MB) {ok}"
    )
    record(
        "memory.py" + (" --quick" if args.quick else ""),
        f"{n} services: server RSS {f['idle']:.0f} MiB idle, {f['steady']:.0f} MiB steady, "
        f"peak {f['peak']:.0f} MiB (target < 300 MB, {ok}); placed in {f['placed_s']:.1f} s, "
        f"full pass {f['full_s']:.1f} s",
    )


if __name__ == "__main__":
    main()
