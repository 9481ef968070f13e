"""Secrets end to end: a real server with a KEK file, real agents, real instances that
are healthy only when their secret reached them; the CLI; a KEK rotation with rewrap
under running services; and no value in any log or file of the server or the agents."""

from __future__ import annotations

import hashlib
import json
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from federation.cli import main
from federation.processes.certs import add_kek, make_kek_file
from tests.conftest import AgentProcess, ServerProcess, _instance_pids
from tests.e2e.test_failover import Http, wait_regions_ready, wait_until
from tests.e2e.test_policy_cli import Cli
from tests.integration.secret_support import marker
from tests.integration.test_secret_agent import CHECK

REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR"}


def nowhere(value: str, *roots: Path) -> None:
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path


def healthy(state_dir: Path) -> bool:
    """Whether the instance recorded in `state_dir` answers its health check (it does
    only when its DB_PASSWORD is the right value)."""
    try:
        [record] = json.loads((state_dir / "instances.json").read_text())["instances"]
        url = f"http://127.0.0.1:{record['port']}/health"
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError, urllib.error.URLError):
        return False


@pytest.mark.slow
def test_kek_rotation_and_rewrap_keep_every_service_running(
    spawn_server: Callable[..., ServerProcess],
    spawn_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    kek = make_kek_file(tmp_path / "kek")
    server = spawn_server("server-a", f"--kek-file={kek}")
    admin = spawn_server.admin_token  # type: ignore[attr-defined]
    http, cli = Http(server.url, admin), Cli(server.url, admin)
    tokens = {}
    for name, country in REGIONS.items():
        status, body = http("POST", "/v1/regions", {"name": name, "country": country})
        assert status == 201, body
        tokens[name] = body["token"]
    agents = {name: spawn_agent(server.url, name, tokens[name]) for name in REGIONS}
    wait_regions_ready(http, REGIONS)
    status, body = http(
        "PUT", "/v1/policies/eu-patient-data", {"data_classes": ["phi-eu"], "allow": ["group:eea"]}
    )
    assert status == 201, body

    value = marker("pw")
    secret_file = tmp_path / "password"
    secret_file.write_text(value + "\n")
    made = cli("secret", "set", "patient-db", "--data-class", "phi-eu", f"password=@{secret_file}")
    assert made.exit_code == 0, made.output
    assert "version 1" in made.output and value not in made.output
    listed = cli("secret", "list")
    assert "patient-db" in listed.output and "password" in listed.output
    assert value not in listed.output

    spec = {
        "command": ["{python}", "-c", CHECK, "{port}", hashlib.sha256(value.encode()).hexdigest()],
        "replicas": 2,
        "data_classes": ["phi-eu"],
        "placement": {"min_regions": 2},
        "health": {"http": "/health", "interval_s": 0.5},
        "resources": {"cpu": 0.5, "memory_mb": 128},
        "secrets": {"DB_PASSWORD": "patient-db#password"},
    }
    status, body = http("PUT", "/v1/services/records", spec)
    assert status == 201, body
    assert value not in str(body)

    def running() -> bool:
        _, svc = http("GET", "/v1/services/records")
        return bool(svc["status"]["phase"] == "Running")

    wait_until(running, 30, "records Running (each instance checks its secret)")
    pids = {name: _instance_pids(a.state_dir) for name, a in agents.items()}

    # A new primary KEK, the rewrap, then the old key removed from the file.
    old = kek.read_text()
    rotated = cli("secret", "new-kek", str(kek))
    assert rotated.exit_code == 0, rotated.output
    rewrapped = cli("secret", "rewrap")
    assert rewrapped.exit_code == 0 and "rewrapped 1 of 1" in rewrapped.output, rewrapped.output
    kek.write_text(kek.read_text().replace(old, ""))
    assert running()
    assert {name: _instance_pids(a.state_dir) for name, a in agents.items()} == pids

    # A new version rolls out: every new instance gets the secret delivered afresh,
    # opened with the new KEK alone, and is healthy only if it is the right value.
    status, body = http("PUT", "/v1/services/records", {**spec, "version": "2"})
    assert status == 200, body

    def rolled() -> bool:
        _, svc = http("GET", "/v1/services/records")
        placed = svc["status"]["placements"].values()
        return bool(
            svc["status"]["phase"] == "Running"
            and svc["status"]["observed_generation"] == 2
            and all(p["version"] == "2" for p in placed)
        )

    wait_until(rolled, 60, "version 2 Running in both regions")
    for name, agent in agents.items():
        assert _instance_pids(agent.state_dir) != pids[name], name
        assert healthy(agent.state_dir), name

    server.stop(signal.SIGTERM)
    for agent in agents.values():
        agent.stop()
    nowhere(value, server.log, tmp_path / "agents", *tmp_path.glob("agent-*.log"))


def condition(http: Http, service: str, type_: str) -> dict[str, str] | None:
    _, svc = http("GET", f"/v1/services/{service}")
    return next((c for c in svc["status"]["conditions"] if c["type"] == type_), None)


@pytest.mark.slow
def test_a_kek_removed_before_the_rewrap_withholds_and_the_service_says_why(
    spawn_server: Callable[..., ServerProcess],
    spawn_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    kek = make_kek_file(tmp_path / "kek")
    server = spawn_server("server-b", f"--kek-file={kek}")
    http = Http(server.url, spawn_server.admin_token)  # type: ignore[attr-defined]
    status, body = http("POST", "/v1/regions", {"name": "eu-de-1", "country": "DE"})
    assert status == 201, body
    agent = spawn_agent(server.url, "eu-de-1", body["token"])
    wait_regions_ready(http, ["eu-de-1"])
    http("PUT", "/v1/policies/eu", {"data_classes": ["phi-eu"], "allow": ["group:eea"]})
    value = marker("pw")
    status, body = http(
        "PUT", "/v1/secrets/patient-db", {"data_classes": ["phi-eu"], "data": {"password": value}}
    )
    assert status == 201, body
    spec = {
        "command": ["{python}", "-c", CHECK, "{port}", hashlib.sha256(value.encode()).hexdigest()],
        "data_classes": ["phi-eu"],
        "health": {"http": "/health", "interval_s": 0.5},
        "resources": {"cpu": 0.5, "memory_mb": 128},
        "secrets": {"DB_PASSWORD": "patient-db#password"},
    }
    assert http("PUT", "/v1/services/records", spec)[0] == 201

    def running(generation: int) -> bool:
        _, svc = http("GET", "/v1/services/records")
        st = svc["status"]
        return bool(st["phase"] == "Running" and st["observed_generation"] == generation)

    wait_until(lambda: running(1), 30, "records Running")
    # The old KEK taken out before any rewrap: nothing can open the secret now.
    old = kek.read_text()
    add_kek(kek)
    kek.write_text(kek.read_text().replace(old, ""))
    assert http("PUT", "/v1/services/records", {**spec, "version": "2"})[0] == 200

    def withheld() -> bool:
        found = condition(http, "records", "Secrets")
        return found is not None and found["reason"] == "SecretWithheld"

    wait_until(withheld, 30, "records says its secrets are withheld")
    message = str((condition(http, "records", "Secrets") or {})["message"])
    assert "eu-de-1" in message and "does not hold" in message, message
    assert value not in message
    assert not healthy(agent.state_dir)
    # The old key back: the agent asks again and the instance starts.
    kek.write_text(kek.read_text() + old)
    wait_until(lambda: running(2), 30, "records Running once the KEK is back")
    assert condition(http, "records", "Secrets") is None
    assert healthy(agent.state_dir)


@pytest.mark.slow
def test_the_secret_commands_show_tables_and_say_what_went_wrong(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    kek = make_kek_file(tmp_path / "kek")
    server = spawn_server("server-c", f"--kek-file={kek}")
    admin = spawn_server.admin_token  # type: ignore[attr-defined]
    cli = Cli(server.url, admin)
    first, second = marker("pw"), marker("pw2")
    made = cli("secret", "set", "db", "--data-class", "public", f"password={first}", "user=app")
    assert made.exit_code == 0, made.output
    assert "version 1 (created)" in made.output and "hmac-sha256:" in made.output
    assert first not in made.output
    rotated = cli.runner.invoke(
        main, ["secret", "rotate", "db", "password=@-"], input=second + "\n", env=cli.env
    )
    assert rotated.exit_code == 0, rotated.output
    assert "version 2 (new version)" in rotated.output and second not in rotated.output
    shown = cli("secret", "show", "db")
    assert shown.exit_code == 0 and "version 2 (updated " in shown.output, shown.output
    assert "password" in shown.output and second not in shown.output
    listed = cli("secret", "list")
    row = next(line for line in listed.output.splitlines() if "│ db" in line)
    assert "│ 2 " in row and "password, user" in row and "public" in row
    # Mistakes: said, with no traceback.
    for args, says in (
        (["secret", "set", "db", "--data-class", "public", "novalue"], "KEY=VALUE"),
        (["secret", "set", "db", "--data-class", "public", "k=@/no/such/file"], "cannot read"),
        (["secret", "set", "db", "--data-class", "phi-ue", "k=v"], "data_classes.0"),
        (["secret", "rotate", "nope", "k=v"], "not found"),
    ):
        result = cli(*args)
        assert result.exit_code != 0, (args, result.output)
        assert says in result.output, (args, result.output)
        assert "Traceback" not in result.output
    status, body = Http(server.url, admin)("POST", "/v1/tokens", {"role": "viewer"})
    assert status == 201, body
    viewer = Cli(server.url, body["token"])
    refused = viewer("secret", "set", "db", "--data-class", "public", "k=v")
    assert refused.exit_code == 1 and "HTTP 403" in refused.output
    assert cli("secret", "delete", "db").exit_code == 0
    assert "db" not in cli("secret", "list").output.split("never shown")[1]
