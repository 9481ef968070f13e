"""`federation agent --driver`: the choices are the drivers that exist, and the choice
reaches the agent, which builds that driver."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from federation.agent import loop
from federation.agent.drivers import DRIVERS
from federation.agent.drivers.process import ProcessDriver
from federation.cli import main
from federation.processes.commands import agent_command

AGENT = ["agent", "--server", "http://127.0.0.1:1", "--region", "eu-de-1", "--token", "t"]


def test_an_unknown_driver_is_refused_with_the_choices_named() -> None:
    result = CliRunner().invoke(main, [*AGENT, "--driver", "kubernetes"])
    assert result.exit_code == 2  # a usage error: nothing started
    assert "Invalid value for '--driver'" in result.output
    assert "'kubernetes'" in result.output
    for name in DRIVERS:
        assert f"'{name}'" in result.output


def test_the_chosen_driver_reaches_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[loop.AgentConfig] = []

    class Agent:
        def __init__(self, config: loop.AgentConfig) -> None:
            seen.append(config)

        async def run(self) -> None:
            return None

    monkeypatch.setattr(loop, "Agent", Agent)
    args = [*AGENT, "--driver", "raw", "--state-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "(driver raw)" in result.output
    assert [c.driver for c in seen] == ["raw"]


def test_the_agent_builds_the_driver_it_is_configured_with(tmp_path: Path) -> None:
    config = loop.AgentConfig(
        server="http://127.0.0.1:1",
        region="eu-de-1",
        token="t",
        cpu=1.0,
        memory_mb=256,
        state_dir=tmp_path,
        driver="raw",
    )
    driver = loop.Agent(config).driver
    assert isinstance(driver, ProcessDriver)
    assert driver.region == "eu-de-1"
    assert driver.state_dir == tmp_path


def test_agents_default_to_exec_and_the_ones_up_and_tests_start_run_raw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[loop.AgentConfig] = []

    class Agent:
        def __init__(self, config: loop.AgentConfig) -> None:
            seen.append(config)

        async def run(self) -> None:
            return None

    monkeypatch.setattr(loop, "Agent", Agent)
    args = [
        *AGENT,
        "--state-dir",
        str(tmp_path),
        "--run-as",
        "nobody",
        "--allow-exec",
        "/usr/bin/*",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [(c.driver, c.run_as) for c in seen] == [("exec", "nobody")]
    command = agent_command(servers=["http://127.0.0.1:1"], region="r", state_dir=tmp_path)
    assert "--driver=raw" in command


def test_raw_runs_as_the_agent_and_says_so_to_run_as(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--run-as needs the exec driver"):
        DRIVERS["raw"](region="eu-de-1", state_dir=tmp_path, run_as="nobody")
