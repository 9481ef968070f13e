"""The exec driver with real bubblewrap and real cgroups: an instance finds nothing of
the agent or of other instances, is killed at its memory limit and reported
OOMKilled, is held to its CPU quota; a root agent runs no root instance unless told;
a host without bubblewrap refuses to start the agent."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from federation.agent.drivers import DRIVERS, Desired
from federation.agent.drivers.exec import PIDS_MAX, DriverUnavailable, ExecDriver
from federation.model.service import Assignment, Runtime, ServiceSpec
from federation.processes.commands import agent_command
from tests.integration.test_process_driver import alive, desired, until

TOKEN = "region-token-that-must-stay-with-the-agent"
MARKER = "AGENT_ONLY_MARKER"
USER = "nobody"


pytestmark = pytest.mark.usefixtures("bubblewrap")


def service(name: str, command: list[str], **extra: object) -> Desired:
    spec = ServiceSpec.model_validate({"name": name, "command": command, **extra})
    runtime = Runtime.of(spec, generation=1)
    return Desired(Assignment(service=name, region="eu-de-1", replicas=1, runtime=runtime), 7)


def cgroups_left(instance: str) -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/federation/eu-de-1/{instance}"))


PROBE = r"""
import json, os, sys
state_dir, other_dir = sys.argv[1], sys.argv[2]
found, seen = [], []
for pid in ["1", str(os.getppid()), "self", *[p for p in os.listdir("/proc") if p.isdigit()]]:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        continue
    seen.append(pid)
    for secret in (sys.argv[3], sys.argv[4]):
        if secret in env:
            found.append(f"/proc/{pid}/environ has {secret}")
own = open("/proc/self/environ", "rb").read().decode()
for path in (state_dir, other_dir):
    try:
        found.append(f"{path}: {os.listdir(path)}")
    except OSError:
        pass
try:
    found.append(open(state_dir + "/instances.json").read())
except OSError:
    pass
writable = []
for directory in ("/instance", "/tmp", "/usr", "/etc", os.path.dirname(sys.executable)):
    try:
        open(os.path.join(directory, "probe-was-here"), "w").close()
        writable.append(directory)
    except OSError:
        pass
print(json.dumps({"found": found, "seen": seen, "writable": writable,
                  "own": "FEDERATION_SERVICE=probe" in own,
                  "pids": sorted(p for p in os.listdir("/proc") if p.isdigit())}), flush=True)
"""


async def test_an_instance_finds_nothing_of_the_agent_or_other_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDERATION_REGION_TOKEN", TOKEN)
    monkeypatch.setenv(MARKER, "1")
    driver = ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as=USER)
    other_dir = tmp_path / "instances" / "other-0"
    want = {
        "other": desired("other", replicas=1),
        "probe": service(
            "probe",
            ["{python}", "-c", PROBE, str(tmp_path), str(other_dir), TOKEN, MARKER],
        ),
    }
    await driver.start(want)
    log = tmp_path / "logs" / "probe-0.log"
    try:
        await driver.apply(want)
        await until(lambda: log.exists() and "found" in log.read_text(), timeout=15)
        await until(lambda: driver._instances["other-0"].ready, timeout=15)
        assert other_dir.is_dir()  # the other instance's directory exists, out of reach
    finally:
        await driver.close(stop_instances=True)
    result = json.loads(log.read_text().splitlines()[0])
    assert result["found"] == []
    assert result["own"] and "self" in result["seen"]  # it reads environs: not vacuous
    assert result["writable"] == ["/instance", "/tmp"]  # the host's files are read-only
    assert len(result["pids"]) <= 3  # its own PID namespace: bwrap's init, itself (and ls)


async def test_an_instance_over_its_memory_limit_is_killed_and_reported_oomkilled(
    tmp_path: Path,
) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(1 << 20))"
    driver = ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as=USER)
    want = {"hog": service("hog", ["{python}", "-c", hog], resources={"memory_mb": 48})}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: driver.instances()[0].reason == "OOMKilled", timeout=15)
        report = driver.instances()[0]
        assert report.state == "failed"
        assert "OOMKilled" in report.message
    finally:
        await driver.close(stop_instances=True)
    assert not cgroups_left("hog-0")


async def test_a_busy_loop_is_held_to_its_cpu_quota(tmp_path: Path) -> None:
    driver = ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as=USER)
    want = {
        "spin": service("spin", ["{python}", "-c", "while True: pass"], resources={"cpu": 0.25})
    }
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: driver.instances()[0].state == "running", timeout=10)
        before = driver.instances()[0].cpu_seconds
        await asyncio.sleep(5)
        after = driver.instances()[0].cpu_seconds
        memory = driver.instances()[0].memory_bytes
    finally:
        await driver.close(stop_instances=True)
    assert before is not None and after is not None and memory
    share = (after - before) / 5
    assert 0.05 < share <= 0.30, f"used {share:.0%} of a core"  # it ran, but held


def test_a_root_agent_runs_no_root_instance_unless_told(tmp_path: Path) -> None:
    with pytest.raises(DriverUnavailable, match="--run-as USER"):
        ExecDriver(region="eu-de-1", state_dir=tmp_path)
    with pytest.raises(DriverUnavailable, match="--run-as root"):
        ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as="root")
    ExecDriver(region="eu-de-1", state_dir=tmp_path, allow_root_instances=True)
    DRIVERS["exec"](region="eu-de-1", state_dir=tmp_path, run_as=USER)


def test_without_bubblewrap_the_driver_and_the_agent_refuse_to_start(tmp_path: Path) -> None:
    with pytest.raises(DriverUnavailable, match="bubblewrap"):
        ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as=USER, bwrap="/nowhere/bwrap")
    with pytest.raises(DriverUnavailable, match="writable cgroup v1 controllers"):
        ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as=USER, cgroup_root=tmp_path)
    command = agent_command(
        servers=["http://127.0.0.1:1"], region="eu-de-1", state_dir=tmp_path, driver="exec"
    )
    result = subprocess.run(
        [*command, f"--run-as={USER}", f"--allow-exec={sys.executable}"],
        env={"PATH": str(tmp_path), "FEDERATION_REGION_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "missing: bubblewrap" in result.stderr
    assert sys.executable  # the agent ran: its interpreter is given by absolute path


@pytest.mark.parametrize("name", sorted(DRIVERS))
async def test_state_files_are_the_agents_alone(tmp_path: Path, name: str) -> None:
    state = tmp_path / "state"
    options = {"run_as": USER} if name == "exec" else {}
    driver = DRIVERS[name](region="eu-de-1", state_dir=state, **options)
    want = {"web": desired(replicas=1)}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: driver.instances()[0].ready, timeout=15)
    finally:
        await driver.close(stop_instances=True)
    for directory in (state, state / "logs"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for file in (state / "instances.json", state / "logs" / "web-0.log"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


async def test_a_new_agent_adopts_isolated_instances_and_stops_them(tmp_path: Path) -> None:
    """The sandbox hangs off its own shell, not off the agent: an agent that goes away
    leaves it running for the next one, which adopts it, measures it and stops it."""
    first = ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as=USER)
    want = {"web": desired(replicas=1)}
    await first.start(want)
    try:
        await first.apply(want)
        await until(lambda: first.instances()[0].ready, timeout=15)
        pid = first._instances["web-0"].pid
    finally:
        await first.close(stop_instances=False)  # as if the agent died
    second = ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as=USER)
    try:
        sentences = await second.start(want)
        assert any("adopted web-0" in s for s in sentences)
        await until(lambda: second.instances()[0].ready, timeout=15)
        assert second.instances()[0].memory_bytes
    finally:
        await second.close(stop_instances=True)
    assert not alive(pid)
    assert not cgroups_left("web-0")


async def test_an_instance_cannot_start_more_than_its_pid_limit(tmp_path: Path) -> None:
    forker = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(400):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print('FORKED', n, exc.errno, flush=True)\n"
        "time.sleep(30)\n"
    )
    driver = ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as=USER)
    # Memory to spare: the pid limit, not the memory limit, is what must stop it.
    want = {"forker": service("forker", ["{python}", "-c", forker], resources={"memory_mb": 2048})}
    log = tmp_path / "logs" / "forker-0.log"
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: log.exists() and "FORKED" in log.read_text(), timeout=20)
    finally:
        await driver.close(stop_instances=True)
    forked = int(log.read_text().split("FORKED ", 1)[1].split()[0])
    assert 200 < forked < PIDS_MAX  # bwrap's init, the shell's bwrap and python count too
    assert not cgroups_left("forker-0")  # every forked child killed with the cgroup
