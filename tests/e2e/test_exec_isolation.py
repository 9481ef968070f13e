"""The operator-to-admin path, end to end: a service deployed through the API to a
real `federation agent --driver exec` looks for the region token in every process
it can see and in the agent's state directory, and finds nothing. Under `raw` the
same service takes it: why `raw` is for development only."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import AgentProcess, ServerProcess
from tests.e2e.test_failover import Http, wait_until

THIEF = r"""
import os, sys
loot = []
for pid in os.listdir("/proc"):
    if pid.isdigit() or pid == "self":
        try:
            loot.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
        except OSError:
            pass
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        try:
            loot.append(open(os.path.join(root, name)).read())
        except OSError:
            pass
print("LOOT " + repr(loot), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["exec", "raw"])
def test_a_deployed_service_takes_the_region_token_only_from_a_raw_agent(
    spawn_server: Callable[..., ServerProcess],
    spawn_agent: Callable[..., AgentProcess],
    driver: str,
    request: pytest.FixtureRequest,
) -> None:
    if driver == "exec":
        request.getfixturevalue("bubblewrap")
    server = spawn_server("server-a")
    http = Http(server.url, spawn_server.admin_token)  # type: ignore[attr-defined]
    status, body = http("POST", "/v1/regions", {"name": "eu-de-1", "country": "DE"})
    assert status == 201, body
    token = body["token"]
    # `exec` runs only what the region allows: here the demo's interpreter.
    options = (
        ["--driver=exec", "--run-as=nobody", f"--allow-exec={sys.executable}"]
        if driver == "exec"
        else ["--driver=raw"]
    )
    agent = spawn_agent(server.url, "eu-de-1", token, *options)
    wait_until(
        lambda: http("GET", "/v1/regions/eu-de-1")[1]["state"] == "ready", 20, "region ready"
    )
    spec = {"command": ["{python}", "-c", THIEF, str(agent.state_dir.resolve())]}
    status, body = http("PUT", "/v1/services/thief", spec)
    assert status == 201, body
    log = agent.state_dir / "logs" / "thief-0.log"

    def ran() -> bool:
        return log.exists() and "LOOT" in log.read_text()

    wait_until(ran, 30, "the thief ran")
    loot = log.read_text().split("LOOT ", 1)[1].splitlines()[0]
    assert "FEDERATION_SERVICE=thief" in loot  # it did read what it could: not vacuous
    if driver == "raw":
        assert token in loot  # the agent's environ, its state files: the hole exec closes
        return
    assert token not in loot
    assert "FEDERATION_REGION_TOKEN" not in loot
    assert json.loads((agent.state_dir / "instances.json").read_text())  # it was there
    assert Path(agent.state_dir).stat().st_mode & 0o077 == 0
