"""The region owner's allowlist: matching (pure, shared by agent and scheduler) and the
agent's resolution of a command's executable as the drivers start it."""

from __future__ import annotations

import posixpath
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from federation.agent.allow import allowed, executable, policy_problem, reported
from federation.model.allowlist import PYTHON, admits, admits_command, refusal
from federation.model.region import Heartbeat, HeartbeatRecord, RegionRecord
from federation.planning.plan import region_infos
from federation.planning.world import World


def test_no_policy_admits_everything_and_an_empty_one_nothing() -> None:
    assert admits("/bin/sh", None)
    assert admits_command(["anything"], None)
    assert not admits("/bin/sh", [])
    assert not admits_command(["/bin/sh"], [])


def test_globs_match_the_absolute_path() -> None:
    assert admits("/opt/apps/web", ["/opt/apps/*"])
    assert admits("/usr/bin/python3", ["/usr/bin/python3"])
    assert not admits("/usr/bin/python3.11", ["/usr/bin/python3"])
    assert not admits("/OPT/apps/web", ["/opt/apps/*"])  # case matters on Linux
    # The scheduler normalises what it can: a path climbing out of the glob is refused.
    assert not admits_command(["/opt/apps/../../bin/sh"], ["/opt/apps/*"])


def test_the_scheduler_judges_python_by_the_token_the_agent_reports() -> None:
    assert admits_command([PYTHON, "app.py"], ["/usr/bin/x", PYTHON])
    assert not admits_command([PYTHON, "app.py"], ["/usr/bin/x"])
    # A bare name: by the patterns' last components (the agent judges it exactly).
    assert admits_command(["python3"], ["/usr/bin/python3"])
    assert not admits_command(["sh"], ["/usr/bin/python3"])
    assert not admits_command(None, ["*"])  # an image-only service: no command to judge


def test_the_agent_resolves_bare_names_through_the_instance_path(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    env = {"PATH": str(tmp_path)}
    assert executable(["tool"], env) == str(tool)
    assert allowed(["tool"], [f"{tmp_path}/*"], env)
    assert not allowed(["tool"], ["/usr/bin/*"], env)
    assert not allowed(["no-such-tool-anywhere"], ["*"])  # resolves to nothing
    assert executable([PYTHON, "-c", "pass"]) == posixpath.normpath(sys.executable)


def test_the_heartbeat_reports_python_only_when_the_interpreter_is_admitted() -> None:
    assert reported(None) is None
    assert reported(["/nowhere/*"]) == ["/nowhere/*"]
    assert reported(["*"]) == ["*", PYTHON]


@pytest.mark.parametrize(
    ("driver", "allowlist", "refused"),
    [("exec", None, True), ("exec", ("/usr/bin/*",), False), ("raw", None, False)],
)
def test_exec_without_an_allowlist_refuses_to_start(
    driver: str, allowlist: tuple[str, ...] | None, refused: bool
) -> None:
    problem = policy_problem(driver, allowlist)
    assert (problem is not None) == refused
    if problem:
        assert "--allow-exec" in problem


def test_the_refusal_names_region_and_command() -> None:
    assert refusal("eu-1", ["/bin/sh", "-c", "x"]) == (
        "command not allowed in region eu-1: /bin/sh -c x"
    )


def test_the_heartbeat_allowlist_reaches_the_scheduler_and_old_heartbeats_stay_valid() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    beat = Heartbeat.model_validate({"capacity": {"cpu": 4}, "allow_exec": ["/opt/apps/*"]})
    world = World()
    for name in ("eu-de-1", "eu-de-2"):
        world.regions[name] = RegionRecord(name=name, country="DE", created_at=now)
        world.alive.add(name)
    world.heartbeats["eu-de-1"] = HeartbeatRecord.of(now, beat, None)
    # Stored before allowlists existed: no field at all, read as "not reported".
    world.heartbeats["eu-de-2"] = HeartbeatRecord.model_validate(
        {"at": now.isoformat(), "capacity": {"cpu": 4}, "allocated": {}}
    )
    infos = {i.name: i for i in region_infos(world, now, region_ttl=2)}
    assert infos["eu-de-1"].allow_exec == ("/opt/apps/*",)
    assert infos["eu-de-2"].allow_exec is None
