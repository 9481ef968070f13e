"""A steady region costs etcd nothing: a real server and a real agent running a real
instance, heartbeating and re-sending its status report, write no key once the
instance is running. Only a change (the instance stopping) is written, to that
service's status key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from federation.store import Store, keys
from tests.conftest import AgentProcess, ServerProcess
from tests.e2e.test_allow_exec import region_ready, register, wait_for
from tests.e2e.test_failover import Http
from tests.integration.test_regions_api import written

# Beats come every TTL/3 (TTL 2 s in tests) and the agent sends its whole report again
# every 5 s (agent.loop.REPORT_EVERY_S): 7 s holds about ten beats and a re-sent report.
QUIET_S = 7.0


def running(http: Http, service: str) -> bool:
    _, body = http("GET", f"/v1/services/{service}")
    return bool(body["status"]["phase"] == "Running")


async def test_an_unchanged_heartbeat_and_report_write_no_key(
    store: Store,
    spawn_server: Callable[..., ServerProcess],
    spawn_agent: Callable[..., AgentProcess],
) -> None:
    server = spawn_server("server-a")
    http = Http(server.url, spawn_server.admin_token)  # type: ignore[attr-defined]
    register(http, spawn_agent, server.url, "eu-de-1")
    wait_for(lambda: region_ready(http, "eu-de-1"), 20, "eu-de-1 ready")
    spec = {
        "command": ["{python}", "-m", "federation.demo", "{port}"],
        "replicas": 2,
        "health": {"http": "/health", "interval_s": 0.5},
    }
    status, body = http("PUT", "/v1/services/web", spec)
    assert status == 201, body
    wait_for(lambda: running(http, "web"), 30, "web running")
    report = await store.get(keys.report("eu-de-1", "web"))
    assert report is not None and report.value["ready"] == {"1": 2}
    await asyncio.sleep(1.0)  # the last writes of the start-up settle

    before = await written(store)
    _, first = http("GET", "/v1/regions/eu-de-1")
    await asyncio.sleep(QUIET_S)
    after = await written(store)
    assert after == before, {k: v for k, v in after.items() if before.get(k) != v}
    _, later = http("GET", "/v1/regions/eu-de-1")
    assert later["state"] == "ready"
    assert later["last_heartbeat"] > first["last_heartbeat"]

    # A change is written, to the service's status key.
    status, body = http("PUT", "/v1/services/web", {**spec, "replicas": 1})
    assert status == 200, body
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        report = await store.get(keys.report("eu-de-1", "web"))
        if report is not None and report.value["ready"] == {"2": 1}:
            break
        await asyncio.sleep(0.2)
    # One replica, at the spec's second generation.
    assert report is not None and report.value["ready"] == {"2": 1}, report
    assert report.revision > before[keys.report("eu-de-1", "web")]
