"""The driver contract: what every driver in `DRIVERS` must do, written once.

Each test runs against every registered driver (`raw`/`process` today, `exec` and
future Kubernetes or Nomad drivers as they register), through the `Driver` protocol
only, with real instances: `federation.demo` servers that announce themselves over TCP
to the test (DEMO_ANNOUNCE) with a random id per life of the process, so the tests
can tell a kept instance from a restarted one whatever namespaces the driver uses.

Each test's instances are stopped even when it fails: at teardown a fresh driver on
the same state directory starts with nothing desired (which, by the contract, stops
whatever an earlier life left running) and closes.

Driver-specific behaviour (process groups, crash restarts by signal) stays in the
drivers' own tests; failover through a real agent and server is tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from federation.agent.drivers import DRIVERS, Desired, Driver
from federation.model.service import Assignment, InstanceReport, Runtime, ServiceSpec

REGION = "eu-de-1"
EPOCH = 7


@dataclass
class Announcements:
    """What the instances said when they started: instance -> [(port, life), ...]."""

    address: str = ""
    lives: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def latest(self, instance: str) -> tuple[int, str]:
        return self.lives[instance][-1]

    def count(self) -> int:
        return sum(len(v) for v in self.lives.values())


@pytest.fixture
async def announced() -> AsyncIterator[Announcements]:
    seen = Announcements()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = json.loads(await reader.readline())
        seen.lives.setdefault(str(line["instance"]), []).append((int(line["port"]), line["life"]))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    seen.address = f"127.0.0.1:{port}"
    async with server:
        yield seen


@pytest.fixture(params=sorted(DRIVERS))
def driver_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def driver_options(driver_name: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """What a driver needs here: `exec` needs bubblewrap (installed, or the test fails in
    CI) and, as root, a user to run instances as."""
    if driver_name != "exec":
        return {}
    request.getfixturevalue("bubblewrap")
    return {"run_as": "nobody"} if os.geteuid() == 0 else {}


@pytest.fixture
async def make_driver(
    driver_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[[], Driver]]:
    """Drivers of one region on one state directory (a new one per agent life)."""
    made: list[Driver] = []
    options = driver_options(driver_name, request)

    def make() -> Driver:
        made.append(DRIVERS[driver_name](region=REGION, state_dir=tmp_path / "state", **options))
        return made[-1]

    try:
        yield make
    finally:
        sweeper = DRIVERS[driver_name](region=REGION, state_dir=tmp_path / "state", **options)
        await sweeper.start({})
        await sweeper.close(stop_instances=True)


def desired(
    announce: Announcements,
    name: str = "web",
    *,
    replicas: int = 1,
    version: str = "1",
    env: Mapping[str, str] | None = None,
    **extra: Any,
) -> Desired:
    spec = ServiceSpec.model_validate(
        {
            "name": name,
            "command": ["{python}", "-m", "federation.demo", "{port}"],
            "version": version,
            "replicas": replicas,
            "health": {"http": "/health", "interval_s": 0.2, "timeout_s": 1},
            "env": {"DEMO_ANNOUNCE": announce.address, **(env or {})},
            **extra,
        }
    )
    runtime = Runtime.of(spec, generation=int(version))
    assignment = Assignment(service=name, region=REGION, replicas=replicas, runtime=runtime)
    return Desired(assignment, EPOCH)


async def until(predicate: Callable[[], bool], timeout: float = 15, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


def ready(driver: Driver, count: int, service: str = "web") -> Callable[[], bool]:
    def check() -> bool:
        mine = [i for i in driver.instances() if i.service == service]
        return len(mine) == count and all(i.ready for i in mine)

    return check


async def identity(port: int) -> dict[str, Any] | None:
    """What the instance on `port` says it is, or None when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"http://127.0.0.1:{port}/") as resp,
        ):
            answer: dict[str, Any] = json.loads(await resp.text())
            return answer
    except (aiohttp.ClientError, TimeoutError):
        return None


async def gone(port: int, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await identity(port) is None:
            return True
        await asyncio.sleep(0.1)
    return False


# --- start, health, report ----------------------------------------------------------------


async def test_start_runs_ready_instances_that_carry_their_identity(
    make_driver: Callable[[], Driver], announced: Announcements
) -> None:
    driver = make_driver()
    want = {"web": desired(announced, replicas=2)}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(ready(driver, 2), what="2 ready instances of web")
        await until(lambda: announced.count() == 2, what="2 instances announced")
        for instance, lives in announced.lives.items():
            port, _ = lives[-1]
            who = await identity(port)
            assert who is not None, instance
            assert who["service"] == "web" and who["region"] == REGION
            assert who["instance"] == instance and who["epoch"] == str(EPOCH)
    finally:
        await driver.close(stop_instances=True)
    assert driver.instances() == []


async def test_report_has_one_line_per_instance_with_state_and_generation(
    make_driver: Callable[[], Driver], announced: Announcements
) -> None:
    driver = make_driver()
    want = {"web": desired(announced, replicas=2, version="3")}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(ready(driver, 2), what="2 ready instances of web")
        reports = driver.instances()
        assert all(isinstance(r, InstanceReport) for r in reports)
        assert len({r.instance for r in reports}) == 2
        assert {(r.service, r.generation, r.version, r.state) for r in reports} == {
            ("web", 3, "3", "running")
        }
    finally:
        await driver.close(stop_instances=True)


async def test_a_failing_health_check_is_running_but_not_ready(
    make_driver: Callable[[], Driver], announced: Announcements
) -> None:
    driver = make_driver()
    want = {"web": desired(announced, env={"FAIL_HEALTH": "1"})}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: announced.count() == 1, what="the instance announced")
        await until(lambda: [i.state for i in driver.instances()] == ["running"], what="running")
        await asyncio.sleep(1.0)  # several health intervals
        [report] = driver.instances()
        assert not report.ready
        assert "503" in report.message
    finally:
        await driver.close(stop_instances=True)


# --- stop, replace ------------------------------------------------------------------------


async def test_a_new_version_replaces_instances_and_unassigned_ones_stop(
    make_driver: Callable[[], Driver], announced: Announcements
) -> None:
    driver = make_driver()
    await driver.start({})
    try:
        await driver.apply({"web": desired(announced, replicas=2, version="1")})
        await until(ready(driver, 2), what="2 ready at version 1")
        old_ports = [lives[-1][0] for lives in announced.lives.values()]
        await driver.apply({"web": desired(announced, replicas=1, version="2")})
        await until(ready(driver, 1), what="1 ready at version 2")
        assert [i.version for i in driver.instances()] == ["2"]
        for port in old_ports:
            assert await gone(port), f"version 1 on port {port} still answers"
        new_port, _ = announced.latest(driver.instances()[0].instance)
        await driver.apply({})
        assert driver.instances() == []
        assert await gone(new_port), "an unassigned instance still answers"
    finally:
        await driver.close(stop_instances=True)


# --- adopt after an agent restart ---------------------------------------------------------


async def test_a_new_agent_adopts_wanted_instances_without_restarting_them(
    make_driver: Callable[[], Driver], announced: Announcements
) -> None:
    first = make_driver()
    await first.start({})
    both = {"web": desired(announced), "old": desired(announced, "old")}
    await first.apply(both)
    await until(lambda: ready(first, 1)() and ready(first, 1, "old")(), what="web and old")
    await until(lambda: announced.count() == 2, what="both announced")
    web_port, web_life = announced.latest("web-0")
    old_port, _ = announced.latest("old-0")
    await first.close(stop_instances=False)  # as if the agent died
    assert await identity(web_port) is not None, "an instance died with its agent"

    second = make_driver()
    try:
        await second.start({"web": desired(announced)})
        await second.apply({"web": desired(announced)})
        await until(ready(second, 1), what="the adopted instance reported ready")
        who = await identity(web_port)
        assert who is not None and who["instance"] == "web-0"
        assert announced.lives["web-0"] == [(web_port, web_life)]  # not restarted
        assert await gone(old_port), "an instance no longer wanted was not stopped"
    finally:
        await second.close(stop_instances=True)
    assert await gone(web_port)


# --- fence a singleton --------------------------------------------------------------------


async def test_fence_stops_a_singleton_and_starts_none_until_unfenced(
    make_driver: Callable[[], Driver], announced: Announcements
) -> None:
    driver = make_driver()
    want = {
        "web": desired(announced, singleton=True),
        "other": desired(announced, "other"),
    }
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: ready(driver, 1)() and ready(driver, 1, "other")(), what="ready")
        await until(lambda: announced.count() == 2, what="both announced")
        web_port, _ = announced.latest("web-0")
        other_port, other_life = announced.latest("other-0")

        await driver.fence({"web"})
        assert [i.service for i in driver.instances()] == ["other"]
        assert await gone(web_port), "a fenced singleton still answers"
        await driver.apply(want)  # the agent keeps applying while cut off
        await asyncio.sleep(1.0)
        assert [i.service for i in driver.instances()] == ["other"]
        assert len(announced.lives["web-0"]) == 1, "a fenced singleton was started again"
        assert announced.latest("other-0") == (other_port, other_life)

        driver.unfence()
        await driver.apply(want)
        await until(ready(driver, 1), what="the singleton back after unfence")
        assert len(announced.lives["web-0"]) == 2
    finally:
        await driver.close(stop_instances=True)
