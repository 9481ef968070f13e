"""The region owner's allowlist (`federation agent --allow-exec GLOB`), end to end: a
real server, real agents, real instance processes.

- The agent never starts a command its allowlist does not admit, and says so: the
  instance is reported with reason `CommandNotAllowed` and the service's condition
  names the region and the command.
- The agent's heartbeat carries its allowlist, so the scheduler rejects that region
  up front (`explain` says why) and places the service in a region that admits it.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import AgentProcess, ServerProcess
from tests.e2e.test_failover import Http


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what} (last: {last!r})")
        time.sleep(0.1)
        last = check()
    return last


def processes_with(marker: str) -> list[int]:
    """Pids whose command line carries `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline.split(b"\0"):
            found.append(int(entry.name))
    return found


def register(
    http: Http, spawn_agent: Callable[..., AgentProcess], url: str, region: str, *extra: str
) -> AgentProcess:
    status, body = http("POST", "/v1/regions", {"name": region, "country": "DE"})
    assert status == 201, body
    return spawn_agent(url, region, body["token"], *extra)


def region_ready(http: Http, region: str) -> bool:
    return bool(http("GET", f"/v1/regions/{region}")[1]["state"] == "ready")


def condition(http: Http, service: str, reason: str) -> dict[str, Any] | None:
    _, body = http("GET", f"/v1/services/{service}")
    for c in body["status"]["conditions"]:
        if c["reason"] == reason:
            return dict(c)
    return None


def test_a_command_outside_the_allowlist_is_never_started(
    spawn_server: Callable[..., ServerProcess], spawn_agent: Callable[..., AgentProcess]
) -> None:
    server = spawn_server("server-a")
    http = Http(server.url, spawn_server.admin_token)  # type: ignore[attr-defined]
    # The owner admits one python only; the service names `python3`, which the agent
    # resolves through its PATH to another file. The scheduler, which cannot see the
    # agent's PATH, lets it through on the name; the agent has the last word.
    agent = register(http, spawn_agent, server.url, "eu-de-1", "--allow-exec", "/opt/apps/python3")
    wait_for(lambda: region_ready(http, "eu-de-1"), 20, "eu-de-1 ready")
    marker = f"marker-{uuid.uuid4().hex}"
    command = ["python3", "-m", "federation.demo", "{port}", marker]
    status, body = http("PUT", "/v1/services/miner", {"command": command, "replicas": 1})
    assert status == 201, body

    found = wait_for(
        lambda: condition(http, "miner", "CommandNotAllowed"), 20, "condition CommandNotAllowed"
    )
    assert found["message"] == (
        "command not allowed in region eu-de-1: python3 -m federation.demo {port} " + marker
    )
    _, svc = http("GET", "/v1/services/miner")
    assert svc["status"]["replicas"]["ready"] == 0
    # Never started: no process carries the marker, the driver recorded nothing.
    time.sleep(1.0)
    assert processes_with(marker) == []
    records = agent.state_dir / "instances.json"
    assert marker not in (records.read_text() if records.exists() else "")


def test_explain_rejects_a_region_whose_allowlist_excludes_the_command(
    spawn_server: Callable[..., ServerProcess], spawn_agent: Callable[..., AgentProcess]
) -> None:
    server = spawn_server("server-a")
    http = Http(server.url, spawn_server.admin_token)  # type: ignore[attr-defined]
    register(http, spawn_agent, server.url, "eu-de-1", "--allow-exec", "/opt/apps/*")
    register(http, spawn_agent, server.url, "eu-de-2", "--allow-exec", sys.executable)
    for region in ("eu-de-1", "eu-de-2"):
        wait_for(lambda r=region: region_ready(http, r), 20, f"{region} ready")  # type: ignore[misc]
    command = ["{python}", "-m", "federation.demo", "{port}"]
    spec = {
        "command": command,
        "replicas": 2,
        "health": {"http": "/health", "interval_s": 0.5},
        # eu-de-1 would rank first for this service: only its allowlist keeps it out.
        "placement": {"prefer": ["eu-de-1"]},
    }
    status, body = http("PUT", "/v1/services/web", spec)
    assert status == 201, body

    def running() -> bool:
        _, svc = http("GET", "/v1/services/web")
        return bool(svc["status"]["phase"] == "Running")

    wait_for(running, 30, "web Running")
    _, svc = http("GET", "/v1/services/web")
    assert set(svc["status"]["placements"]) == {"eu-de-2"}
    status, explained = http("GET", "/v1/services/web/explain")
    assert status == 200, explained
    lines = {line["region"]: line for line in explained["regions"]}
    assert lines["eu-de-1"]["outcome"] == "rejected"
    assert lines["eu-de-1"]["reasons"] == [
        "command not allowed in this region: {python} -m federation.demo {port}"
    ]
    assert lines["eu-de-2"]["outcome"] == "chosen"
