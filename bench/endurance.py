"""Endurance benchmark: a month of churn compressed into minutes; etcd and the server
must stay the size they were after the first minute.

Fails (exit 3, `GREW`) when etcd's in-use database size after the last minute is above
twice what it was after the first, or the server's RSS grew by more than 20%; any
other non-zero exit means it could not run.

A real etcd and a real `federation serve` process (region TTL 5 s). Simulated regions
(`bench/sim.py`, in this process) heartbeat, hold their assignment watches and report
their instances. A federation of services is deployed through the API, then, for
`--minutes`:
- services are updated (a new version: a rollout), scaled, deleted and new ones
  deployed in their place, a few a second, through the API;
- every few minutes a region is lost (its simulated master stops dead; the lease runs
  out and its services fail over) and comes back a little later;
- drills: a plan drill every half minute, and a live drill (cordon, evacuate, fail
  back) every few minutes.
Every period (a minute at full length) it prints etcd's database size and in-use
size, its revision and the server's RSS.

Compaction: the server's leader compacts etcd's history (`serve --etcd-history`), to
a window scaled like the rest of the month: a minute (10 s with `--quick`) where a
real federation keeps 5 minutes. Without compaction the in-use size grows with every
write and this bench fails.

    .venv/bin/python bench/endurance.py                 # 10 minutes
    .venv/bin/python bench/endurance.py --minutes 3
    .venv/bin/python bench/endurance.py --quick         # 1 minute, a smaller federation
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, machine, record, rss_mb, table
from bench.sim import SimRegion, register
from federation.store import Store, keys

TTL = 5
DAYS = 30  # what the run stands for
GREW = 3  # the exit status when etcd or the server grew beyond the bounds


@dataclass(frozen=True)
class Shape:
    minutes: float
    period_s: float  # one sample every period
    regions: int
    services: int
    ops_per_s: float
    loss_every_s: float
    live_drill_every_s: float
    history_s: float  # the leader's compaction window (serve --etcd-history)


FULL = Shape(10, 60, 20, 2_000, 4.0, 120, 180, 60.0)
QUICK = Shape(1, 10, 6, 600, 3.0, 25, 30, 10.0)


@dataclass
class Churn:
    """What the run did, counted."""

    ops: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def did(self, what: str, status: int) -> None:
        self.ops[what] = self.ops.get(what, 0) + 1
        if status >= 400 and status != 409:
            self.errors[f"{what} {status}"] = self.errors.get(f"{what} {status}", 0) + 1


def spec(name: str, version: int, replicas: int) -> dict[str, Any]:
    return {
        "command": ["true"],
        "version": str(version),
        "replicas": replicas,
        "resources": {"cpu": 0.05, "memory_mb": 8},
        "placement": {"min_regions": 1},
    }


class Federation:
    """The API calls of the churn, as the admin."""

    def __init__(self, session: aiohttp.ClientSession, url: str, admin: str) -> None:
        self.session, self.url = session, url
        self.headers = {"Authorization": f"Bearer {admin}"}
        self.churn = Churn()

    async def call(self, what: str, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method, self.url + path, json=body, headers=self.headers
        ) as resp:
            answer = await resp.json(content_type=None)
            self.churn.did(what, resp.status)
            return answer

    async def metrics(self, etcd: str) -> dict[str, float]:
        """etcd's database size, in-use size and revision (its /metrics)."""
        wanted = {
            "etcd_mvcc_db_total_size_in_bytes": "db",
            "etcd_mvcc_db_total_size_in_use_in_bytes": "in_use",
            "etcd_debugging_mvcc_current_revision": "revision",
            "etcd_debugging_mvcc_compact_revision": "compacted",
        }
        found: dict[str, float] = {}
        async with self.session.get(f"http://{etcd}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                name, _, value = line.partition(" ")
                if name in wanted:
                    found[wanted[name]] = float(value)
        return found


async def live_bytes(store: Store, prefix: str) -> int:
    """Bytes of the keys and values under `prefix` now (what compaction cannot free)."""
    entries, _ = await store.scan_raw(prefix)
    return sum(len(key) + len(raw) for key, raw, _ in entries)


async def churn_services(fed: Federation, shape: Shape, names: list[str], stop: float) -> None:
    rng = random.Random(1)
    versions = dict.fromkeys(names, 1)
    replicas = dict.fromkeys(names, 1)
    serial = len(names)
    while time.monotonic() < stop:
        roll = rng.random()
        name = rng.choice(names)
        if roll < 0.4:
            versions[name] += 1
            body = spec(name, versions[name], replicas[name])
            await fed.call("update", "PUT", f"/v1/services/{name}", body)
        elif roll < 0.6:
            replicas[name] = 3 - replicas[name]
            body = spec(name, versions[name], replicas[name])
            await fed.call("scale", "PUT", f"/v1/services/{name}", body)
        else:
            await fed.call("delete", "DELETE", f"/v1/services/{name}")
            names.remove(name)
            del versions[name], replicas[name]
            serial += 1
            new = f"svc-{serial:06d}"
            names.append(new)
            versions[new], replicas[new] = 1, 1
            await fed.call("deploy", "PUT", f"/v1/services/{new}", spec(new, 1, 1))
        await asyncio.sleep(1 / shape.ops_per_s)


async def lose_regions(
    sims: dict[str, SimRegion], shape: Shape, stop: float, spare: list[str]
) -> None:
    """Every loss_every_s: one region stops dead, and comes back after TTL + 10 s."""
    rng = random.Random(2)
    while time.monotonic() + shape.loss_every_s < stop:
        await asyncio.sleep(shape.loss_every_s / 2)
        name = rng.choice(spare)
        old = sims[name]
        await old.stop()
        await asyncio.sleep(TTL + 10)
        back = SimRegion(name, "", old.token, old.url, old.session, cpu=old.cpu)
        sims[name] = back
        back.start()
        spare.append("")  # counted: one loss
        await asyncio.sleep(shape.loss_every_s / 2)


async def drills(fed: Federation, shape: Shape, names: list[str], stop: float) -> None:
    rng = random.Random(3)
    last_live = time.monotonic()
    while time.monotonic() + 20 < stop:
        await asyncio.sleep(shape.period_s / 2)
        region = rng.choice(names)
        if time.monotonic() - last_live >= shape.live_drill_every_s:
            last_live = time.monotonic()
            body = {"regions": [region], "mode": "live", "max_duration_s": 20, "force": True}
            await fed.call("live drill", "POST", "/v1/drills", body)
        else:
            await fed.call("plan drill", "POST", "/v1/drills", {"regions": [region]})


async def run(shape: Shape, workdir: Path) -> tuple[list[dict[str, float]], Churn, int]:
    names = [f"r-{i:02d}" for i in range(shape.regions)]
    samples: list[dict[str, float]] = []
    async with cluster(workdir, region_ttl=TTL, etcd_history=shape.history_s) as server:
        store = Store([server.etcd], timeout=30)
        await store.connect()
        sims: dict[str, SimRegion] = {}
        tasks: list[asyncio.Task[None]] = []
        connector = aiohttp.TCPConnector(limit=0)
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=60)
            ) as session:
                fed = Federation(session, server.url, server.admin)
                tokens = await register(session, server.url, server.admin, names)
                for i, name in enumerate(names):
                    sims[name] = SimRegion(name, "", tokens[name], server.url, session, cpu=1_000)
                    sims[name].start(delay=TTL / 3 * i / len(names))
                await asyncio.sleep(TTL)
                services = [f"svc-{i:06d}" for i in range(shape.services)]
                sem = asyncio.Semaphore(16)

                async def deploy(name: str) -> None:
                    async with sem:
                        await fed.call("deploy", "PUT", f"/v1/services/{name}", spec(name, 1, 1))

                await asyncio.gather(*(deploy(n) for n in services))
                while await store.count(keys.REPORTS) < shape.services:
                    await asyncio.sleep(0.5)
                started = time.monotonic()
                stop = started + shape.minutes * 60
                losses: list[str] = list(names[1:])
                tasks = [
                    asyncio.create_task(churn_services(fed, shape, services, stop)),
                    asyncio.create_task(lose_regions(sims, shape, stop, losses)),
                    asyncio.create_task(drills(fed, shape, names, stop)),
                ]
                print(
                    f"{'minute':>6} {'day':>5} {'revision':>9} {'compacted':>9} {'db MiB':>7} "
                    f"{'in use MiB':>10} {'keys MiB':>8} {'audit MiB':>9} {'RSS MiB':>8} "
                    f"{'writes':>6}",
                    flush=True,
                )
                while time.monotonic() < stop - 1:
                    await asyncio.sleep(min(shape.period_s, stop - time.monotonic()))
                    m = await fed.metrics(server.etcd)
                    m["audit"] = float(await live_bytes(store, keys.AUDIT))
                    m["live"] = float(await live_bytes(store, ""))
                    elapsed = time.monotonic() - started
                    sample = {
                        "minute": elapsed / 60,
                        "day": elapsed / (shape.minutes * 60) * DAYS,
                        "rss": rss_mb(server.pid),
                        "ops": float(sum(fed.churn.ops.values())),
                        **m,
                    }
                    samples.append(sample)
                    print(
                        f"{sample['minute']:6.1f} {sample['day']:5.1f} "
                        f"{sample['revision']:9.0f} {sample.get('compacted', 0):9.0f} "
                        f"{sample['db'] / 2**20:7.2f} {sample['in_use'] / 2**20:10.2f} "
                        f"{sample['live'] / 2**20:8.2f} {sample['audit'] / 2**20:9.2f} "
                        f"{sample['rss']:8.0f} {sample['ops']:6.0f}",
                        flush=True,
                    )
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                churn = fed.churn
        finally:
            for task in tasks:
                task.cancel()
            for sim in sims.values():
                await sim.stop()
            await store.close()
    return samples, churn, len(losses) - (shape.regions - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 minute, 600 services")
    parser.add_argument("--minutes", type=float, help="how long the month lasts (at most 10)")
    args = parser.parse_args()
    shape = QUICK if args.quick else FULL
    if args.minutes is not None:
        if not 0 < args.minutes <= 10:
            parser.error("--minutes: between 0 and 10")
        shape = Shape(
            args.minutes,
            shape.period_s,
            shape.regions,
            shape.services,
            shape.ops_per_s,
            shape.loss_every_s,
            shape.live_drill_every_s,
            shape.history_s,
        )
    with tempfile.TemporaryDirectory() as tmp:
        samples, churn, losses = asyncio.run(run(shape, Path(tmp)))
    if len(samples) < 2:
        raise SystemExit("endurance: fewer than two samples; run longer")
    first, last = samples[0], samples[-1]
    grew = last["in_use"] / first["in_use"]
    rss = last["rss"] / first["rss"]
    ok = grew <= 2 and rss <= 1.2
    load = os.getloadavg()
    print(f"machine: {machine()}; load average at the end {load[0]:.2f}")
    print(
        f"{shape.minutes:g} minutes for {DAYS} days: {shape.regions} regions, "
        f"{shape.services} services; "
        + ", ".join(f"{n} {k}" for k, n in churn.ops.items())
        + f"; {losses} region losses"
    )
    if churn.errors:
        print("errors: " + ", ".join(f"{n} x {k}" for k, n in churn.errors.items()))
    rows = [
        [
            "etcd in use",
            f"{first['in_use'] / 2**20:.2f} MiB",
            f"{last['in_use'] / 2**20:.2f} MiB",
            f"{grew:.2f}x",
            "<= 2x",
            "OK" if grew <= 2 else "FAILED",
        ],
        [
            "server RSS",
            f"{first['rss']:.0f} MiB",
            f"{last['rss']:.0f} MiB",
            f"{rss:.2f}x",
            "<= 1.2x",
            "OK" if rss <= 1.2 else "FAILED",
        ],
        [
            "etcd db size",
            f"{first['db'] / 2**20:.2f} MiB",
            f"{last['db'] / 2**20:.2f} MiB",
            f"{last['db'] / first['db']:.2f}x",
            "",
            "",
        ],
        [
            "revision",
            f"{first['revision']:.0f}",
            f"{last['revision']:.0f}",
            "",
            "",
            "",
        ],
    ]
    print(table(["figure", "first period", "last period", "growth", "bound", ""], rows))
    record(
        "endurance.py" + (" --quick" if args.quick else f" --minutes {shape.minutes:g}"),
        f"{DAYS} days in {shape.minutes:g} min, {shape.regions} regions, {shape.services} "
        f"services, {int(sum(churn.ops.values()))} API writes: etcd in use "
        f"{first['in_use'] / 2**20:.2f} -> {last['in_use'] / 2**20:.2f} MiB ({grew:.2f}x), "
        f"server RSS {first['rss']:.0f} -> {last['rss']:.0f} MiB ({rss:.2f}x), "
        f"{'OK' if ok else 'FAILED'}; load {load[0]:.2f}",
    )
    if not ok:
        raise SystemExit(GREW)


if __name__ == "__main__":
    main()
