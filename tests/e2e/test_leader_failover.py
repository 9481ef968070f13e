"""Two server replicas: the leader dies mid-reconcile, the standby finishes the job."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest

from federation.store import Store, keys
from tests.conftest import ServerProcess

SERVICES = 60


async def keep_regions_alive(
    http: aiohttp.ClientSession, tokens: dict[str, str], servers: list[ServerProcess]
) -> None:
    """Heartbeat every region through whichever replica answers, as agents would."""
    while True:
        for name, token in tokens.items():
            for server in servers:
                try:
                    async with http.post(
                        f"{server.url}/v1/regions/{name}/heartbeat",
                        json={"capacity": {"cpu": 1000, "memory_mb": 10**7}},
                        headers={"Authorization": f"Bearer {token}"},
                    ) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    continue
        await asyncio.sleep(0.4)


async def replicas_by_service(store: Store) -> dict[str, int]:
    entries, _ = await store.scan(keys.ASSIGNMENTS)
    counts: dict[str, int] = {}
    for e in entries:
        service = e.value["service"]
        counts[service] = counts.get(service, 0) + int(e.value["replicas"])
    return counts


@pytest.mark.slow
async def test_killing_the_leader_mid_reconcile_places_every_service_once(
    spawn_server: Callable[..., ServerProcess], store: Store
) -> None:
    a = spawn_server("server-a")
    b = spawn_server("server-b")
    admin = {"Authorization": f"Bearer {spawn_server.admin_token}"}  # type: ignore[attr-defined]
    async with aiohttp.ClientSession(headers=admin) as http:
        tokens = {}
        for name, country in (("eu-de-1", "DE"), ("eu-fr-1", "FR")):
            async with http.post(
                f"{a.url}/v1/regions", json={"name": name, "country": country}
            ) as resp:
                tokens[name] = (await resp.json())["token"]
        beating = asyncio.create_task(keep_regions_alive(http, tokens, [a, b]))
        try:
            raw = await store.get_raw(keys.LEADER)
            assert raw is not None
            leader, standby = (a, b) if raw[0] == a.identity else (b, a)

            async def deploy(i: int) -> None:
                spec = {"command": ["true"], "replicas": 3, "placement": {"min_regions": 2}}
                url = f"{standby.url}/v1/services/svc-{i:03d}"
                async with http.put(url, json=spec) as resp:
                    assert resp.status == 201, await resp.text()

            await asyncio.gather(*(deploy(i) for i in range(SERVICES)))
            leader.stop(signal.SIGKILL)  # while it is still placing them
            killed_at = time.monotonic()
            while True:
                counts = await replicas_by_service(store)
                assert all(c <= 3 for c in counts.values()), f"placed twice: {counts}"
                if len(counts) == SERVICES and all(c == 3 for c in counts.values()):
                    break
                assert time.monotonic() - killed_at < 2 + 10, "the standby did not finish"
                await asyncio.sleep(0.2)
            # The killed leader may have finished before it died; either way its lease
            # runs out and the standby takes over within the election TTL.
            while (raw := await store.get_raw(keys.LEADER)) is None or raw[0] != standby.identity:
                assert time.monotonic() - killed_at < 2 + 10, "the standby did not take over"
                await asyncio.sleep(0.1)
            took = time.monotonic() - killed_at
            print(f"standby leads {took:.2f} s after the leader was killed")
            await asyncio.sleep(1)  # a pass or two of the new leader: nothing must move
            assert await replicas_by_service(store) == counts
        finally:
            beating.cancel()
    placements, _ = await store.scan(keys.PLACEMENTS)
    assert len(placements) == SERVICES
    for entry in placements:
        assert sum(entry.value["regions"].values()) == 3
        assert len(entry.value["regions"]) == 2  # min_regions held
