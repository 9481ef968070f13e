"""The demo regions' agents, played by the test through the real HTTP API.

There is no agent process yet, so a test acts as each region's master with the
region's own token: heartbeats every 0.5 s (the TTL is 2 s) in a background task per
region, and status reports of the instances it "runs", built from the assignments
the controller wrote. Tests decide when instances become ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from federation.model.service import Assignment
from federation.store import Entry, Store, keys
from tests.conftest import Api

T = TypeVar("T")

DEMO_REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US", "ap-in-1": "IN"}
CAPACITY = {"cpu": 8, "memory_mb": 16384}
BEAT_S = 0.5

EU_PATIENT_DATA = {
    "name": "eu-patient-data",
    "data_classes": ["phi-eu"],
    "allow": ["group:eea", "CH"],
    "mode": "enforce",
}


async def wait_until(
    check: Callable[[], Awaitable[T | None]], *, timeout: float, what: str, every: float = 0.1
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    end = time.monotonic() + timeout
    last = await check()
    while not last:
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what} (last seen: {last!r})")
        await asyncio.sleep(every)
        last = await check()
    return last


class Federation:
    """The four demo regions (DE, FR, US, IN), registered and kept ready by heartbeats."""

    def __init__(self, api: Api, store: Store) -> None:
        self.api = api
        self.store = store
        self.tokens: dict[str, str] = {}
        self._beats: dict[str, asyncio.Task[None]] = {}
        self.beat_errors: list[str] = []

    async def start(self, regions: dict[str, str] = DEMO_REGIONS) -> None:
        for name, country in regions.items():
            status, body = await self.api.call(
                "POST", "/v1/regions", json={"name": name, "country": country}
            )
            assert status == 201, body
            self.tokens[name] = body["token"]
            await self.beat(name)
            self.start_heartbeats(name)
        for name in regions:
            await self.wait_state(name, "ready", timeout=3)

    async def close(self) -> None:
        for name in list(self._beats):
            await self.stop_heartbeats(name)

    # -- liveness ------------------------------------------------------------------------

    async def beat(self, region: str) -> None:
        status, body = await self.api.call(
            "POST",
            f"/v1/regions/{region}/heartbeat",
            token=self.tokens[region],
            json={"capacity": CAPACITY},
        )
        assert status == 200, body

    async def _beat_forever(self, region: str) -> None:
        while True:
            try:
                await self.beat(region)
            except (AssertionError, OSError) as exc:  # keep beating; the test sees the gap
                self.beat_errors.append(f"{region}: {exc}")
            await asyncio.sleep(BEAT_S)

    def start_heartbeats(self, region: str) -> None:
        assert region not in self._beats, f"{region} already beating"
        self._beats[region] = asyncio.create_task(
            self._beat_forever(region), name=f"heartbeat-{region}"
        )

    async def stop_heartbeats(self, region: str) -> None:
        """The region goes silent (as if its master or its link died)."""
        task = self._beats.pop(region)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def region_state(self, region: str) -> str:
        status, body = await self.api.call("GET", f"/v1/regions/{region}")
        assert status == 200, body
        return str(body["state"])

    async def _is(self, region: str, state: str) -> bool:
        return await self.region_state(region) == state

    async def wait_state(self, region: str, state: str, *, timeout: float) -> None:
        await wait_until(lambda: self._is(region, state), timeout=timeout, what=f"{region} {state}")

    # -- what the controller asked for, and what the regions report ------------------------

    async def assignments(self, service: str) -> dict[str, Assignment]:
        """The assignments of `service`, per region, as stored by the controller."""
        entries, _ = await self.store.scan(keys.ASSIGNMENTS)
        found = {}
        for e in entries:
            region, _, svc = e.key.removeprefix(keys.ASSIGNMENTS).partition("/")
            if svc == service:
                found[region] = Assignment.model_validate(e.value)
        return found

    async def replicas(self, service: str) -> dict[str, int]:
        """Replicas per region of the service's non-draining assignments."""
        return {
            r: a.replicas for r, a in (await self.assignments(service)).items() if not a.draining
        }

    async def report(
        self, region: str, *, ready: Callable[[Assignment], bool] = lambda a: True
    ) -> None:
        """Report every instance the region's assignments ask for, as an agent would;
        `ready` says which assignments' instances have become ready."""
        entries, _ = await self.store.scan(keys.assignments(region))
        instances: list[dict[str, Any]] = []
        for e in entries:
            a = Assignment.model_validate(e.value)
            up = ready(a)
            instances += [
                {
                    "service": a.service,
                    "instance": f"{a.service}-{a.runtime.generation}-{i}",
                    "generation": a.runtime.generation,
                    "version": a.runtime.version,
                    "state": "running" if up else "starting",
                    "ready": up,
                }
                for i in range(a.replicas)
            ]
        status, body = await self.api.call(
            "PUT",
            f"/v1/regions/{region}/status",
            token=self.tokens[region],
            json={"instances": instances},
        )
        assert status == 200, body

    async def service(self, name: str) -> dict[str, Any]:
        status, body = await self.api.call("GET", f"/v1/services/{name}")
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def deploy(self, spec: dict[str, Any], *, expect: int | None = None) -> dict[str, Any]:
        status, body = await self.api.call("PUT", f"/v1/services/{spec['name']}", json=spec)
        assert status in ((expect,) if expect else (200, 201)), body
        assert isinstance(body, dict)
        return body

    async def wait_placed(
        self, service: str, replicas: dict[str, int], *, timeout: float = 3
    ) -> None:
        async def placed() -> bool:
            return await self.replicas(service) == replicas

        await wait_until(placed, timeout=timeout, what=f"{service} placed as {replicas}")

    async def wait_decided(
        self, service: str, generation: int = 1, *, timeout: float = 3
    ) -> dict[str, Any]:
        """The service once the controller has placed (or failed to place) `generation`."""

        async def decided() -> dict[str, Any] | None:
            body = await self.service(service)
            return body if body["status"]["observed_generation"] >= generation else None

        return await wait_until(
            decided, timeout=timeout, what=f"{service} gen {generation} decided"
        )

    async def wait_phase(self, service: str, phase: str, *, timeout: float = 3) -> dict[str, Any]:
        async def at_phase() -> dict[str, Any] | None:
            body = await self.service(service)
            return body if body["status"]["phase"] == phase else None

        return await wait_until(at_phase, timeout=timeout, what=f"{service} phase {phase}")


@contextlib.asynccontextmanager
async def running_federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    """DE, FR, US and IN registered and beating, with the eu-patient-data policy; the
    heartbeat tasks are cancelled on the way out, whatever happened."""
    fed = Federation(api, store)
    try:
        await fed.start()
        status, body = await api.call(
            "PUT", f"/v1/policies/{EU_PATIENT_DATA['name']}", json=EU_PATIENT_DATA
        )
        assert status == 201, body
        yield fed
    finally:
        await fed.close()


@contextlib.asynccontextmanager
async def reporting(federation: Federation, every: float = 0.2) -> AsyncIterator[None]:
    """Every registered region reports every assigned instance ready, every `every`
    seconds, until the block ends."""

    async def loop() -> None:
        while True:
            for region in list(federation.tokens):
                with contextlib.suppress(AssertionError, OSError):
                    await federation.report(region)
            await asyncio.sleep(every)

    task = asyncio.create_task(loop(), name="reporting")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def durable(entries: list[Entry]) -> list[tuple[str, int]]:
    """Keys and revisions, leaving out what regions and the election refresh anyway:
    two scans of the store compared by this show whether anything was written."""
    return [
        (e.key, e.revision)
        for e in entries
        if not e.key.startswith(("heartbeats/", "alive/", "leader", "reports/"))
    ]


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The service's condition of that type, if any."""
    for c in body["status"]["conditions"]:
        if c["type"] == type_:
            return dict(c)
    return None
