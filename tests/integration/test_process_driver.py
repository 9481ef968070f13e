"""The process driver with real processes: what is particular to it (its own process
group, a crash restarted by the driver). What every driver must do (health, report,
stop, adopt, fence) is tests/integration/test_driver_contract.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from federation.agent.drivers import Desired
from federation.agent.drivers.process import ProcessDriver
from federation.model.service import Assignment, Runtime, ServiceSpec

DEMO = [sys.executable, "-m", "federation.demo", "{port}"]


def desired(name: str = "web", replicas: int = 2, version: str = "1", **extra: object) -> Desired:
    spec = ServiceSpec.model_validate(
        {
            "name": name,
            "command": DEMO,
            "version": version,
            "replicas": replicas,
            "health": {"http": "/health", "interval_s": 0.2, "timeout_s": 1},
            **extra,
        }
    )
    runtime = Runtime.of(spec, generation=int(version))
    return Desired(
        Assignment(service=name, region="eu-de-1", replicas=replicas, runtime=runtime), 7
    )


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_instances_start_get_ready_and_carry_their_identity(tmp_path: Path) -> None:
    driver = ProcessDriver(region="eu-de-1", state_dir=tmp_path)
    want = {"web": desired()}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(
            lambda: all(i.ready for i in driver.instances()) and len(driver.instances()) == 2
        )
        inst = driver._instances["web-0"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{inst.port}/") as resp,
        ):
            env = await resp.text()
        assert '"service": "web"' in env and '"epoch": "7"' in env and '"region": "eu-de-1"' in env
        assert os.getpgid(inst.pid) == inst.pid  # its own process group
    finally:
        await driver.close(stop_instances=True)
    assert driver.instances() == []


async def test_a_crashed_instance_is_restarted(tmp_path: Path) -> None:
    driver = ProcessDriver(region="eu-de-1", state_dir=tmp_path)
    want = {"web": desired(replicas=1)}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: bool(driver.instances()) and driver.instances()[0].ready)
        first = driver._instances["web-0"].pid
        os.kill(first, signal.SIGKILL)
        await until(lambda: driver._instances["web-0"].pid != first, timeout=10)
        await until(lambda: driver.instances()[0].ready, timeout=10)
        assert not alive(first)
    finally:
        await driver.close(stop_instances=True)
