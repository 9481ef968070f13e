"""etcd's history and space: the leader compacts to a window, a watch left behind by
a compaction relists and misses nothing, a NOSPACE alarm is a 503 that says what to
do and is cleared by `federation etcd defrag` and `disarm`; those are admin-only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bench.failover import InstantDriver
from federation.agent.loop import Agent, AgentConfig
from federation.api import etcd as etcd_routes
from federation.api.app import create_app
from federation.client import ApiClient
from federation.processes.children import free_port
from federation.processes.local_etcd import LocalEtcd
from federation.store import NoSpace, Store, keys, maintenance
from federation.store.compaction import Compactor
from tests.conftest import Api, server_config
from tests.integration.agents import wait_until
from tests.integration.test_assignment_watch import assignment, register
from tests.integration.test_security import make_token
from tests.integration.test_telemetry import scrape, value


# These tests compact etcd's history: on an etcd of their own, so no other module's
# watch from an old revision is made to relist.
@pytest.fixture(scope="module")
def etcd(private_etcd: LocalEtcd) -> LocalEtcd:
    return private_etcd


POLICY = {"name": "eu-data", "data_classes": ["phi-eu"], "allow": ["group:eea"]}


@contextlib.asynccontextmanager
async def serving(etcd: LocalEtcd, prefix: str, **overrides: Any) -> AsyncIterator[Api]:
    """An in-process server with these ServerConfig overrides, leading once yielded."""
    config = server_config(etcd, prefix, **overrides)
    server = TestServer(create_app(config, announce=False), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            assert config.admin_token is not None
            api = Api(
                str(server.make_url("")).rstrip("/"),
                config.admin_token,
                session,
                config,
                app=server.app,
            )

            async def leading() -> bool:
                status, body = await api.call("GET", "/v1/ready", token=None)
                return status == 200 and bool(body["leader"])

            await wait_until(leading, timeout=15, what="the server leads")
            yield api
    finally:
        await server.close()


async def etcd_status(api: Api) -> dict[str, Any]:
    status, body = await api.call("GET", "/v1/etcd/status")
    assert status == 200, body
    return dict(body)


async def test_the_leader_compacts_to_its_window_in_steps(
    etcd: LocalEtcd, prefix: str, store: Store
) -> None:
    window = 2.0
    async with serving(
        etcd, prefix, history_window_s=window, compaction_interval_s=0.2, compaction_step=7
    ) as api:
        # (time before the write was sent, its revision): the store's revision at any
        # moment after that time is at least this one.
        written: list[tuple[float, int]] = []
        first = await store.put("filler/0", {"n": 0})
        seen: list[int] = []

        async def compacted_past_our_writes() -> bool:
            for _ in range(10):
                before = time.monotonic()
                written.append((before, await store.put("filler/1", {"t": before})))
                await asyncio.sleep(0.01)
            samples = await scrape(api)
            read = time.monotonic()
            compacted = int(value(samples, "federation_etcd_compacted_revision"))
            history = value(samples, "federation_etcd_history_revisions")
            if compacted <= first:
                return False
            seen.append(compacted)
            # Kept: everything written within the window before the scrape answered.
            recent = [rev for at, rev in written if at >= read - window]
            assert recent, "no write within the window"
            assert compacted <= min(recent), (compacted, written[-5:])
            assert history >= 1
            return len(set(seen)) >= 3  # it goes on compacting as revisions come

        await wait_until(compacted_past_our_writes, timeout=60, what="compaction advances")
        # etcd agrees: revisions before it are gone, it and after are there.
        actual, _ = await maintenance.compacted_revision(store)
        assert actual >= seen[-1]
        body = await etcd_status(api)
        assert body["compacted_revision"] >= seen[-1]
        assert body["history_window_s"] == window
        assert body["revision"] - body["compacted_revision"] >= 1


class Leading:
    """An election this replica always wins (the compactor only asks `is_leader`)."""

    is_leader = True


async def test_compaction_goes_in_steps_and_stops_at_the_mirrors_resume_point(
    store: Store,
) -> None:
    await store.compact(await store.revision())
    start = await store.revision()
    for i in range(23):
        await store.put("filler/steps", {"i": i})
    end = await store.revision()
    floor = start + 12
    window = 0.3
    compactor = Compactor(store, cast(Any, Leading()), window_s=window, step=5, floor=lambda: floor)
    said = await compactor.step()
    assert said.startswith("keeping "), said  # not a whole window sampled yet
    await asyncio.sleep(window)
    said = await compactor.step()
    kept = end - floor
    assert said == f"compacted to revision {floor} in 3 step(s), {kept} revisions of history kept"
    assert (await maintenance.compacted_revision(store))[0] == floor
    floor = end + 1  # the mirror caught up: the window is the limit again
    said = await compactor.step()
    assert said.startswith(f"compacted to revision {end} in 3 step(s)"), said
    assert (await maintenance.compacted_revision(store))[0] == end
    assert await compactor.step() == "nothing to compact: 0 revisions of history"


async def test_a_watch_left_behind_by_compaction_relists_and_misses_nothing(
    etcd: LocalEtcd, prefix: str, store: Store
) -> None:
    async with serving(etcd, prefix, history_window_s=1.0, compaction_interval_s=0.2) as api:
        token = await register(api, "eu-de-1", "DE")
        async with ApiClient(api.url, token) as agent:
            since = (await agent.assignments("eu-de-1"))["revision"]
            # While the agent is away: changes, then the leader compacts past them.
            await store.put(keys.assignment("eu-de-1", "a"), assignment("a", "eu-de-1"))
            await store.put(keys.assignment("eu-de-1", "b"), assignment("b", "eu-de-1"))
            await store.delete(keys.assignment("eu-de-1", "a"))
            changed = await store.put(
                keys.assignment("eu-de-1", "b"), assignment("b", "eu-de-1", 2)
            )

            async def compacted_past() -> bool:
                await store.put("filler/x", {"t": time.time()})  # the store moves on
                return int((await etcd_status(api))["compacted_revision"]) > changed

            await wait_until(compacted_past, timeout=30, what="compaction past the changes")

            lines = watch(agent, since)
            line = await anext(lines)
            await lines.aclose()
            assert line["type"] == "relist"
            assert line["compacted"] > changed

            # The agent lists again and watches from the list: nothing is missed.
            listed = await agent.assignments("eu-de-1")
            held = {i["service"]: i["replicas"] for i in listed["items"]}
            assert held == {"b": 2}
            await store.put(keys.assignment("eu-de-1", "c"), assignment("c", "eu-de-1"))
            await store.delete(keys.assignment("eu-de-1", "b"))
            stream = watch(agent, listed["revision"])
            async with asyncio.timeout(10):
                async for line in stream:
                    if line["type"] == "put":
                        held[line["service"]] = line["assignment"]["replicas"]
                    elif line["type"] == "delete":
                        held.pop(line["service"], None)
                    assert line["type"] != "relist", line
                    if "b" not in held and "c" in held:
                        break
            await stream.aclose()
            now = await agent.assignments("eu-de-1")
            assert held == {i["service"]: i["replicas"] for i in now["items"]} == {"c": 1}


async def test_an_agent_back_after_a_compaction_lists_again_and_misses_nothing(
    etcd: LocalEtcd, prefix: str, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real agent whose server goes away while its services change (one deployed,
    one deleted) and the leader compacts past them: when the server is back, the
    agent's watch resumes from a compacted revision, gets `relist`, and ends up running
    exactly what is assigned. The region TTL (30 s) outlasts the outage, so the agent
    is never stale: the relist line is its only cue."""
    fast = {"history_window_s": 0.5, "compaction_interval_s": 0.1, "region_ttl": 30}
    async with serving(etcd, prefix, **fast) as leader:
        token = await register(leader, "eu-de-1", "DE")
        config = server_config(etcd, prefix, region_ttl=30, admin_token=leader.admin_token)
        port = free_port()

        async def start_replica() -> TestServer:
            replica = TestServer(create_app(config, announce=False), host="127.0.0.1", port=port)
            await replica.start_server()
            return replica

        replica = await start_replica()
        agent = Agent(
            AgentConfig(
                server=f"http://127.0.0.1:{port}",
                region="eu-de-1",
                token=token,
                cpu=8,
                memory_mb=16384,
                state_dir=tmp_path / "agent",
            ),
            driver=InstantDriver(),
        )
        running = asyncio.create_task(agent.run())
        try:
            await deploy(leader, "a")
            await wait_until(lambda: _holds(agent, {"a"}), timeout=15, what="the agent runs a")
            await replica.close()  # the agent's server goes away
            await deploy(leader, "b")
            status, body = await leader.call("DELETE", "/v1/services/a")
            assert status == 200, body

            async def assigned() -> int | None:
                _, revision = await store.scan(keys.assignments("eu-de-1"))
                held = [e.key for e in (await store.scan(keys.assignments("eu-de-1")))[0]]
                return revision if held == [keys.assignment("eu-de-1", "b")] else None

            changed = await wait_until(assigned, timeout=15, what="b assigned, a not")

            async def compacted_past() -> bool:
                await store.put("filler/x", {"t": time.time()})
                return int((await etcd_status(leader))["compacted_revision"]) > changed

            await wait_until(compacted_past, timeout=20, what="compaction past the changes")
            caplog.set_level(logging.INFO, "federation.agent.loop")
            caplog.clear()
            replica = await start_replica()
            await wait_until(lambda: _holds(agent, {"b"}), timeout=15, what="the agent runs b")
            assert "eu-de-1: listing assignments again" in caplog.text
        finally:
            running.cancel()
            await asyncio.wait([running], timeout=10)
            await replica.close()


async def deploy(api: Api, name: str) -> None:
    spec = {"command": ["true"], "replicas": 1, "resources": {"cpu": 0.1, "memory_mb": 16}}
    status, body = await api.call("PUT", f"/v1/services/{name}", json=spec)
    assert status in (200, 201), body


async def _holds(agent: Agent, services: set[str]) -> bool:
    return set(agent.desired) == services


def watch(agent: ApiClient, since: int) -> AsyncGenerator[dict[str, Any], None]:
    """The agent's assignment watch of eu-de-1 from `since` (closed by the caller)."""
    lines = agent.watch_assignments("eu-de-1", since=since, idle_timeout=10)
    return cast(AsyncGenerator[dict[str, Any], None], lines)


async def test_etcd_maintenance_is_for_admins_only(api: Api) -> None:
    for role in ("operator", "viewer"):
        _, secret = await make_token(api, role)
        for method, path in (
            ("GET", "/v1/etcd/status"),
            ("POST", "/v1/etcd/defrag?member=1"),
            ("POST", "/v1/etcd/disarm"),
        ):
            status, body = await api.call(method, path, token=secret)
            assert status == 403, (role, path, body)
    status, _ = await api.call("GET", "/v1/etcd/status", token=None)
    assert status == 401


async def test_defrag_names_the_member_it_needs(api: Api) -> None:
    cases = (("", 400), ("XYZ", 400), ("1" * 17, 400), ("abc%0A", 400), ("abc", 404))
    for member, status_expected in cases:
        status, body = await api.call("POST", f"/v1/etcd/defrag?member={member}")
        assert status == status_expected, (member, body)
        if status == 400:
            assert body["error"]["details"][0]["field"] == "member"
    body = await etcd_status(api)
    member = body["members"][0]["id"]
    async with etcd_routes._ONE_AT_A_TIME:  # as while another defragmentation runs
        status, answer = await api.call("POST", f"/v1/etcd/defrag?member={member}")
    assert status == 409, answer
    assert len(body["members"]) == 1
    only = body["members"][0]
    assert only["leader"] and only["db_size"] >= only["db_size_in_use"] > 0
    assert only["endpoint"] == api.config.etcd_endpoints[0]
    assert only["alarms"] == [] and body["alarms"] == []


async def federation_cli(api: Api, *args: str) -> str:
    """`federation --url URL --token ADMIN ARGS`, run as a process; its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "federation",
        "--url",
        api.url,
        "--token",
        api.admin_token,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (args, out.decode(), err.decode())
    return out.decode() + err.decode()


@pytest.fixture
def small_etcd(tmp_path: Path) -> Iterator[LocalEtcd]:
    """An etcd of its own with a 1 MiB quota, so that it can be filled."""
    server = LocalEtcd(tmp_path / "etcd", quota_backend_bytes=1024 * 1024)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_full_etcd_refuses_writes_with_503_until_defragmented_and_disarmed(
    small_etcd: LocalEtcd, prefix: str
) -> None:
    async with (
        serving(small_etcd, prefix, compaction_interval_s=0.2) as api,
        Store([small_etcd.endpoint], prefix="/filler/") as filler,
    ):
        with pytest.raises(NoSpace):
            for i in range(200):  # one key rewritten: history is what fills it
                await filler.put("big", {"i": i, "pad": "x" * 100_000})

        async with asyncio.timeout(15):  # an answer, not a hang
            status, body = await api.call("PUT", "/v1/policies/eu-data", json=POLICY)
        assert status == 503, body
        assert body["error"]["code"] == "etcd_nospace"
        for step in ("compact", "federation etcd defrag", "federation etcd disarm"):
            assert step in body["error"]["message"]

        status, health = await api.call("GET", "/v1/health", token=None)
        assert health["etcd"]["alarms"] == ["NOSPACE"]
        assert "federation etcd defrag" in health["etcd"]["action"]
        samples = await scrape(api)
        assert value(samples, "federation_etcd_alarm", alarm="NOSPACE") == 1
        assert value(samples, "federation_etcd_nospace_refusals_total", operation="txn") >= 1

        async def compacted_everything() -> bool:
            body = await etcd_status(api)
            return bool(body["compacted_revision"] == body["revision"])

        # The leader drops the window on this alarm and compacts all history.
        await wait_until(compacted_everything, timeout=20, what="the leader compacts")

        shown = await federation_cli(api, "etcd", "status")
        assert "NOSPACE" in shown and small_etcd.endpoint in shown
        shown = await federation_cli(api, "etcd", "defrag")
        assert "defragmented" in shown
        body = await etcd_status(api)
        assert body["members"][0]["db_size"] < 1024 * 1024

        # Room again, but the alarm still stands until it is disarmed.
        status, body = await api.call("PUT", "/v1/policies/eu-data", json=POLICY)
        assert status == 503, body
        shown = await federation_cli(api, "etcd", "disarm")
        assert "disarmed NOSPACE" in shown

        status, body = await api.call("PUT", "/v1/policies/eu-data", json=POLICY)
        assert status in (200, 201), body
        status, health = await api.call("GET", "/v1/health", token=None)
        assert health["etcd"]["alarms"] == []
        assert value(await scrape(api), "federation_etcd_alarm", alarm="NOSPACE") == 0
