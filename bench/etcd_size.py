"""How big etcd gets: bytes of live data per region and per service, and how fast the
history grows while nothing changes (the sizing figures of docs/operations.md).

A real etcd and `federation serve`; regions are in-process agents with a driver that
runs nothing (bench/failover.py's InstantDriver), so their heartbeats and status
reports are the real ones. Each size is read after compacting all history and
defragmenting, so it is live data only.

    .venv/bin/python bench/etcd_size.py --quick
    .venv/bin/python bench/etcd_size.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, record, table
from bench.failover import InstantDriver
from federation.agent.loop import Agent, AgentConfig
from federation.client import ApiClient
from federation.store import Store, maintenance

COUNTRIES = ["DE", "FR", "NL", "SE", "IE", "ES", "IT", "PL", "AT", "BE"]


async def live_bytes(store: Store) -> tuple[int, int]:
    """(in-use bytes after compacting everything and defragmenting, the revision)."""
    revision = await store.revision()
    await maintenance.compact(store, revision, physical=True)
    (member,) = await maintenance.status(store)
    await maintenance.defragment(store, member.id)
    (member,) = await maintenance.status(store)
    assert member.db_size_in_use is not None
    return member.db_size_in_use, revision


@contextlib.asynccontextmanager
async def agents(url: str, admin: str, count: int, workdir: Path) -> AsyncIterator[None]:
    tasks = []
    try:
        async with ApiClient(url, admin, timeout=30) as api:
            for i in range(count):
                name = f"r-{i:04d}"
                answer = await api.request(
                    "POST",
                    "/v1/regions",
                    body={"name": name, "country": COUNTRIES[i % len(COUNTRIES)]},
                )
                config = AgentConfig(
                    server=url,
                    region=name,
                    token=answer["token"],
                    cpu=100_000,
                    memory_mb=100_000_000,
                    state_dir=workdir / name,
                )
                tasks.append(asyncio.create_task(Agent(config, driver=InstantDriver()).run()))
            while True:
                items = (await api.request("GET", "/v1/regions"))["items"]
                if sum(i["state"] == "ready" for i in items) == count:
                    break
                await asyncio.sleep(0.2)
        yield
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)


async def run(regions: int, services: int, idle_s: float, workdir: Path) -> dict[str, float]:
    async with cluster(workdir) as server:
        store = Store([server.etcd])
        async with store, ApiClient(server.url, server.admin, timeout=60) as api:
            empty, _ = await live_bytes(store)
            async with agents(server.url, server.admin, regions, workdir):
                with_regions, _ = await live_bytes(store)
                sem = asyncio.Semaphore(16)

                async def deploy(i: int) -> None:
                    async with sem:
                        await api.request(
                            "PUT",
                            f"/v1/services/svc-{i:05d}",
                            body={
                                "command": ["true"],
                                "replicas": 2,
                                "placement": {"min_regions": 2},
                                "resources": {"cpu": 0.01, "memory_mb": 1},
                            },
                        )

                await asyncio.gather(*(deploy(i) for i in range(services)))
                while True:
                    items = (await api.request("GET", "/v1/services"))["items"]
                    running = sum(1 for s in items if s["status"]["phase"] == "Running")
                    if running == services:
                        break
                    await asyncio.sleep(0.5)
                with_services, before = await live_bytes(store)
                # Nothing changes now: only heartbeats and reports move the revision.
                started = time.monotonic()
                await asyncio.sleep(idle_s)
                idle = time.monotonic() - started
                after = await store.revision()
                (member,) = await maintenance.status(store)
                assert member.db_size_in_use is not None
                # The history is what compaction and defragmentation then give back.
                live, _ = await live_bytes(store)
                grown = member.db_size_in_use - live
    revisions = after - before
    return {
        "empty_bytes": empty,
        "bytes_per_region": (with_regions - empty) / regions,
        "bytes_per_service": (with_services - with_regions) / services,
        "idle_revisions_per_s_per_region": revisions / idle / regions,
        "history_bytes_per_revision": grown / revisions if revisions else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    regions, services, idle_s = (10, 300, 30.0) if args.quick else (50, 2000, 60.0)
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(regions, services, idle_s, Path(tmp)))
    rows = [
        ["empty federation", f"{figures['empty_bytes'] / 1024:.0f} KiB"],
        ["per region (agent heartbeating)", f"{figures['bytes_per_region']:.0f} B"],
        ["per service (2 replicas, running)", f"{figures['bytes_per_service']:.0f} B"],
        ["idle revisions / s / region", f"{figures['idle_revisions_per_s_per_region']:.2f}"],
        ["history bytes / revision", f"{figures['history_bytes_per_revision']:.0f} B"],
    ]
    print(f"{regions} regions, {services} services, {idle_s:g} s idle")
    print(table(["etcd", "size"], rows))
    record(
        "etcd_size.py" + (" --quick" if args.quick else ""),
        f"{regions} regions, {services} services: "
        + ", ".join(f"{name} {value}" for name, value in rows),
    )


if __name__ == "__main__":
    main()
