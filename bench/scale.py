"""Scale benchmark: 1,000 regions heartbeating and 100,000 services on one server.

Targets (issue 18): assignment propagation p99 < 100 ms at 1,000 regions; failover of
a 10,000-service region placed within TTL + 2 s; the server's steady-state CPU under
half a core.

A real etcd and a real `federation serve` process (region TTL 10 s, the default, so
beats every 3.3 s). The regions are simulated in this process (`bench/sim.py`: no
agent processes): each heartbeats at the interval the server gives, holds its NDJSON
assignment watch and reports its instances, ready at once, as the agent does. All
regions are up before the services arrive. The services are written straight into
etcd through the store layer (valid service records, 100 per txn, as
`bench/memory.py` does: the API's deploy rate is `bench/deploy.py`'s business), and
the controller places them through its watch; a tenth prefer the first region (the
largest, 10,000 services at full scale).

Figures, once every service is reported ready:
- steady state: the server's CPU per second over a window, and heartbeat latency
  p50/p99 over it;
- propagation: services updated through the API one at a time; from the controller's
  assignment write (seen on this process's own etcd watch) to its line reaching the
  region's watch, and from the API's answer to it;
- failover: the largest region stops dead; from its lease's expiry (the liveness
  key's delete, on the etcd watch) to every one of its services placed elsewhere,
  and to every one reported ready there.

    .venv/bin/python bench/scale.py            # 1,000 regions, 100,000 services
    .venv/bin/python bench/scale.py --quick    # 100 regions, 5,000 services, TTL 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, cpu_seconds, machine, record, rss_mb, table
from bench.sim import SimRegion, percentile, register
from federation.model.service import ServiceRecord, ServiceSpec
from federation.store import Event, Op, Store, keys

PER_TXN = 100


@dataclass(frozen=True)
class Scale:
    regions: int
    services: int
    largest: int  # services preferring the first region
    ttl: int
    steady_s: float
    probes: int


FULL = Scale(regions=1_000, services=100_000, largest=10_000, ttl=10, steady_s=30, probes=200)
QUICK = Scale(regions=100, services=5_000, largest=1_000, ttl=5, steady_s=10, probes=50)


def spec(i: int, largest: int, version: str = "1") -> ServiceSpec:
    prefer = {"prefer": ["r-0000"]} if i < largest else {}
    return ServiceSpec.model_validate(
        {
            "name": f"svc-{i:06d}",
            "command": ["true"],
            "version": version,
            "replicas": 1,
            "resources": {"cpu": 0.01, "memory_mb": 1},
            "placement": prefer,
        }
    )


async def seed(store: Store, scale: Scale) -> float:
    """Write every service record through the store, 100 per txn; seconds taken."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    for base in range(0, scale.services, PER_TXN):
        ops = []
        for i in range(base, min(scale.services, base + PER_TXN)):
            s = spec(i, scale.largest)
            rec = ServiceRecord(spec=s, generation=1, created_at=now, updated_at=now)
            ops.append(Op.put(keys.service(s.name), rec.model_dump(mode="json")))
        await store.txn([], ops)
    return time.perf_counter() - started


class Watcher:
    """This process's own etcd watch: when assignments were written, when the largest
    region's lease went, and which services were placed and reported elsewhere."""

    def __init__(self, store: Store, lost: str) -> None:
        self.store, self.lost = store, lost
        self.written: dict[tuple[str, str, int], float] = {}  # (region, service, rev)
        self.expired: float | None = None
        self.watching: set[str] = set()  # the lost region's services
        self.placed: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self, revision: int) -> None:
        self._task = asyncio.create_task(self._run(revision))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, revision: int) -> None:
        async for batch in self.store.watch("", start_revision=revision + 1):
            now = time.perf_counter()
            for event in batch:
                self._see(event, now)

    def _see(self, event: Event, now: float) -> None:
        key = event.key
        if key.startswith(keys.ASSIGNMENTS) and event.type == "put":
            region, _, service = key.removeprefix(keys.ASSIGNMENTS).partition("/")
            self.written[(region, service, event.revision)] = now
            value = event.value or {}
            if region != self.lost and service in self.watching and not value.get("draining"):
                self.placed.setdefault(service, now)
        elif key == keys.alive(self.lost) and event.type == "delete":
            self.expired = now
        elif key.startswith(keys.REPORTS) and event.type == "put":
            region, _, service = key.removeprefix(keys.REPORTS).partition("/")
            ready = (event.value or {}).get("ready", {})
            if region != self.lost and service in self.watching and any(ready.values()):
                self.ready.setdefault(service, now)


def say(what: str) -> None:
    """Progress, on stderr: a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


async def wait_reported(store: Store, n: int, within: float, what: str) -> float:
    """Wait until `n` (region, service) reports exist; seconds taken."""
    started = time.perf_counter()
    shown = started
    while (count := await store.count(keys.REPORTS)) < n:
        now = time.perf_counter()
        if now - started > within:
            raise SystemExit(f"{what}: only {count}/{n} reported after {within:.0f} s")
        if now - shown > 10:
            placed = await store.count(keys.PLACEMENTS)
            say(f"{placed} placed, {count}/{n} reported ready")
            shown = now
        await asyncio.sleep(0.5)
    return time.perf_counter() - started


async def run(scale: Scale, workdir: Path) -> dict[str, float]:
    names = [f"r-{i:04d}" for i in range(scale.regions)]
    async with cluster(workdir, region_ttl=scale.ttl) as server:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        store = Store([server.etcd], timeout=30)
        await store.connect()
        sims: list[SimRegion] = []
        watcher = Watcher(store, names[0])
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                tokens = await register(session, server.url, server.admin, names)
                say(f"{len(names)} regions registered")
                interval = scale.ttl / 3
                for i, name in enumerate(names):
                    # The largest region has room for all it is given, and the rest
                    # for its failover.
                    sim = SimRegion(name, "", tokens[name], server.url, session, cpu=10_000.0)
                    sims.append(sim)
                    sim.start(delay=interval * i / len(names))
                await asyncio.sleep(interval + 1)
                say(f"regions started; {await store.count(keys.ALIVE)} alive")
                seed_s = await seed(store, scale)
                say(f"{scale.services} services seeded in {seed_s:.1f} s")
                placed_s = await wait_reported(
                    store, scale.services, 600 + scale.services / 50, "placement"
                )
                largest = sum(len(s.desired) for s in sims[:1])
                say(f"all reported ready after {placed_s:.1f} s; steady state")
                await asyncio.sleep(scale.ttl)  # the last reports and beats settle

                # -- steady state ---------------------------------------------------
                for sim in sims:
                    sim.beats, sim.recording = [], True
                cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
                await asyncio.sleep(scale.steady_s)
                cpu = (cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0)
                beats = [b for sim in sims for b in sim.beats]
                rss = rss_mb(server.pid)
                say(
                    f"steady state: server CPU {cpu:.2f} cores, heartbeat p99 "
                    f"{percentile(beats, 99) * 1000:.1f} ms over {len(beats)} beats"
                )

                say("propagation")
                # -- propagation ----------------------------------------------------
                watcher.start(await store.revision())
                await asyncio.sleep(0.5)
                answered: dict[str, float] = {}
                chosen = random.Random(7).sample(range(scale.largest, scale.services), scale.probes)
                headers = {"Authorization": f"Bearer {server.admin}"}
                for i in chosen:
                    s = spec(i, scale.largest, version="2")
                    async with session.put(
                        f"{server.url}/v1/services/{s.name}",
                        json=s.model_dump(mode="json"),
                        headers=headers,
                    ) as resp:
                        await resp.read()
                        answered[s.name] = time.perf_counter()
                    await asyncio.sleep(0.05)
                await asyncio.sleep(2)
                from_write, from_answer = [], []
                for sim in sims:
                    for (service, revision), at in sim.arrivals.items():
                        written = watcher.written.get((sim.name, service, revision))
                        if written is not None and service in answered:
                            from_write.append(at - written)
                            from_answer.append(at - answered[service])
                for sim in sims:
                    sim.recording = False

                say("failover")
                # -- failover of the largest region ----------------------------------
                watcher.watching = set(sims[0].desired)
                lost_count = len(watcher.watching)
                await sims[0].stop()
                stopped = time.perf_counter()
                deadline = stopped + scale.ttl + 120
                while len(watcher.ready) < lost_count and time.perf_counter() < deadline:
                    await asyncio.sleep(0.1)
                if watcher.expired is None or len(watcher.placed) < lost_count:
                    raise SystemExit(
                        f"failover: {len(watcher.placed)}/{lost_count} placed, "
                        f"{len(watcher.ready)} ready, lease expired: {watcher.expired is not None}"
                    )
                placed_after = max(watcher.placed.values()) - watcher.expired
                ready_after = max(watcher.ready.values()) - watcher.expired
                expired_after = watcher.expired - stopped
                errors = sum(sim.errors for sim in sims[1:])
        finally:
            await watcher.stop()
            for sim in sims:
                await sim.stop()
            await store.close()
    return {
        "seed_s": seed_s,
        "placed_s": placed_s,
        "largest": largest,
        "cpu": cpu,
        "rss": rss,
        "beats": len(beats),
        "beat_p50_ms": percentile(beats, 50) * 1000,
        "beat_p99_ms": percentile(beats, 99) * 1000,
        "probes": len(from_write),
        "prop_p50_ms": percentile(from_write, 50) * 1000,
        "prop_p99_ms": percentile(from_write, 99) * 1000,
        "put_p50_ms": percentile(from_answer, 50) * 1000,
        "put_p99_ms": percentile(from_answer, 99) * 1000,
        "lost": lost_count,
        "expired_after_s": expired_after,
        "placed_after_s": placed_after,
        "ready_after_s": ready_after,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 regions, 5,000 services")
    parser.add_argument("--regions", type=int)
    parser.add_argument("--services", type=int)
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    if args.regions or args.services:
        services = args.services or scale.services
        scale = Scale(
            regions=args.regions or scale.regions,
            services=services,
            largest=services // 10,
            ttl=scale.ttl,
            steady_s=scale.steady_s,
            probes=scale.probes,
        )
    with tempfile.TemporaryDirectory() as tmp:
        f = asyncio.run(run(scale, Path(tmp)))
    load = os.getloadavg()
    print(f"machine: {machine()}; load average before the end {load[0]:.2f}")
    print(
        f"{scale.regions} regions (TTL {scale.ttl} s), {scale.services} services seeded in "
        f"{f['seed_s']:.1f} s, all reported ready {f['placed_s']:.1f} s later; "
        f"the largest region holds {f['largest']:.0f}"
    )
    rows = [
        [
            "server CPU, steady state",
            f"{f['cpu']:.2f} cores",
            "< 0.5 core",
            _ok(f["cpu"] < 0.5),
        ],
        [
            "heartbeat latency",
            f"p50 {f['beat_p50_ms']:.1f} / p99 {f['beat_p99_ms']:.1f} ms ({f['beats']:.0f} beats)",
            "",
            "",
        ],
        [
            "propagation, write -> line",
            f"p50 {f['prop_p50_ms']:.1f} / p99 {f['prop_p99_ms']:.1f} ms ({f['probes']:.0f})",
            "p99 < 100 ms",
            _ok(f["prop_p99_ms"] < 100),
        ],
        [
            "propagation, API answer -> line",
            f"p50 {f['put_p50_ms']:.1f} / p99 {f['put_p99_ms']:.1f} ms",
            "",
            "",
        ],
        [
            f"failover of {f['lost']:.0f} services: placed",
            f"{f['placed_after_s']:.2f} s after the lease expired",
            "TTL + 2 s from the last beat",
            _ok(f["placed_after_s"] < 2),
        ],
        [
            "failover: all reported ready",
            f"{f['ready_after_s']:.2f} s after the lease expired",
            "",
            "",
        ],
        ["server RSS", f"{f['rss']:.0f} MiB", "", ""],
    ]
    print(table(["figure", "measured", "target", ""], rows))
    print(
        f"(the lease expired {f['expired_after_s']:.2f} s after the region stopped; "
        f"errors seen by the other regions: {f['errors']:.0f})"
    )
    record(
        "scale.py" + (" --quick" if args.quick else ""),
        f"{scale.regions} regions, {scale.services} services: server CPU {f['cpu']:.2f} cores; "
        f"heartbeat p99 {f['beat_p99_ms']:.1f} ms; propagation p50 {f['prop_p50_ms']:.1f} / "
        f"p99 {f['prop_p99_ms']:.1f} ms; failover of {f['lost']:.0f}: placed "
        f"{f['placed_after_s']:.2f} s, ready {f['ready_after_s']:.2f} s after lease expiry; "
        f"load {load[0]:.2f}",
    )


def _ok(good: bool) -> str:
    return "OK" if good else "MISSED"


if __name__ == "__main__":
    main()
