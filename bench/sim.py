"""Simulated regions for the scale and endurance benchmarks: many region masters in
one process, each speaking the agent's protocol over real HTTP to a real server.

A `SimRegion` does what `federation agent` does with a driver whose instances are
ready at once, and nothing else: it heartbeats at the interval the server gives it,
holds the NDJSON assignment watch (listing again when told to), and reports one
ready instance per assigned replica whenever its assignments change, and again every
`REPORT_EVERY_S` as the agent does. One shared `aiohttp` session carries them all,
so a thousand regions cost the benchmark process one event loop, not a thousand
processes. It also records what the benchmarks measure: heartbeat latencies, and
when each assignment line arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from federation.agent.loop import REPORT_EVERY_S

COUNTRIES = ("DE", "FR", "NL", "SE", "US", "CA", "IN", "JP")


@dataclass
class Held:
    replicas: int
    generation: int
    version: str


@dataclass
class SimRegion:
    """One simulated region master. `start()` runs it until `stop()`."""

    name: str
    country: str
    token: str
    url: str
    session: aiohttp.ClientSession
    cpu: float = 10_000.0
    desired: dict[str, Held] = field(default_factory=dict)
    beats: list[float] = field(default_factory=list)  # latencies, while `recording`
    # (service, revision) -> perf_counter() when its line arrived, while `recording`
    arrivals: dict[tuple[str, int], float] = field(default_factory=dict)
    recording: bool = False
    errors: int = 0
    interval: float = 3.3
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, *, delay: float = 0.0, parts: str = "heartbeat watch report") -> None:
        for body in (getattr(self, f"_{part}") for part in parts.split()):
            self._tasks.append(asyncio.create_task(self._guard(body, delay)))

    async def stop(self) -> None:
        """Stop dead, as a lost region does: no goodbye, the lease runs out."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _guard(self, body: Any, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception:  # a simulated agent retries, as the real one
                self.errors += 1
                await asyncio.sleep(0.5)

    async def _heartbeat(self) -> None:
        path = f"{self.url}/v1/regions/{self.name}/heartbeat"
        while True:
            allocated = sum(h.replicas for h in self.desired.values()) * 0.01
            body = {
                "capacity": {"cpu": self.cpu, "memory_mb": int(self.cpu * 1000)},
                "allocated": {"cpu": round(allocated, 2), "memory_mb": int(allocated * 100)},
            }
            started = time.perf_counter()
            async with self.session.post(path, json=body, headers=self._auth) as resp:
                answer = await resp.json()
                if resp.status != 200:
                    self.errors += 1
            if self.recording:
                self.beats.append(time.perf_counter() - started)
            self.interval = float(answer.get("interval_s", self.interval))
            await asyncio.sleep(self.interval)

    async def _list(self) -> int:
        path = f"{self.url}/v1/regions/{self.name}/assignments"
        async with self.session.get(path, headers=self._auth) as resp:
            answer = await resp.json()
        self.desired = {
            item["service"]: Held(
                item["replicas"], item["runtime"]["generation"], item["runtime"]["version"]
            )
            for item in answer["items"]
            if not item.get("draining")
        }
        self._changed.set()
        return int(answer["revision"])

    async def _watch(self) -> None:
        revision = await self._list()
        path = f"{self.url}/v1/regions/{self.name}/assignments"
        while True:
            params = {"watch": "true", "since": str(revision)}
            timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
            async with self.session.get(
                path, params=params, headers=self._auth, timeout=timeout
            ) as resp:
                relist = resp.status != 200
                async for raw in resp.content:
                    line = json.loads(raw)
                    kind = line.get("type")
                    if kind in ("relist", "closed"):
                        relist = True
                        break
                    revision = max(revision, int(line.get("revision", revision)))
                    if kind == "put":
                        a = line["assignment"]
                        if self.recording:
                            self.arrivals[(line["service"], line["revision"])] = time.perf_counter()
                        if a.get("draining"):
                            self.desired.pop(line["service"], None)
                        else:
                            self.desired[line["service"]] = Held(
                                a["replicas"], a["runtime"]["generation"], a["runtime"]["version"]
                            )
                        self._changed.set()
                    elif kind == "delete":
                        self.desired.pop(line["service"], None)
                        self._changed.set()
            if relist:
                revision = await self._list()

    async def _report(self) -> None:
        path = f"{self.url}/v1/regions/{self.name}/status"
        last_sent = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_EVERY_S - (time.monotonic() - last_sent)):
                    await self._changed.wait()
                    await asyncio.sleep(0.2)  # a burst of lines is one report
            self._changed.clear()
            instances = [
                {
                    "service": name,
                    "instance": f"{name}-{slot}",
                    "generation": held.generation,
                    "version": held.version,
                    "state": "running",
                    "ready": True,
                }
                for name, held in sorted(self.desired.items())
                for slot in range(held.replicas)
            ]
            async with self.session.put(
                path, json={"instances": instances}, headers=self._auth
            ) as resp:
                if resp.status != 200:
                    self.errors += 1
                await resp.read()
            last_sent = time.monotonic()


async def register(
    session: aiohttp.ClientSession, url: str, admin: str, names: list[str]
) -> dict[str, str]:
    """Register `names` (countries in turn from COUNTRIES); their tokens."""
    tokens: dict[str, str] = {}
    sem = asyncio.Semaphore(16)

    async def one(i: int, name: str) -> None:
        body = {"name": name, "country": COUNTRIES[i % len(COUNTRIES)]}
        async with (
            sem,
            session.post(
                f"{url}/v1/regions", json=body, headers={"Authorization": f"Bearer {admin}"}
            ) as resp,
        ):
            answer = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"register {name}: {resp.status} {answer}")
            tokens[name] = answer["token"]

    await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))
    return tokens


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) of `values`, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
