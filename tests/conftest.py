"""Fixtures shared by every test tier: a real etcd, real servers, real HTTP.

One etcd per test session (each test gets its own key prefix, so tests never see
each other's state); servers run in-process on a real port or as real processes.
Every process a fixture starts is stopped by it, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from federation.api.app import create_app
from federation.api.context import ServerConfig
from federation.model.token import new_secret
from federation.processes.children import free_port, launch
from federation.processes.commands import (
    ADMIN_TOKEN_ENV,
    REGION_TOKEN_ENV,
    agent_command,
    serve_command,
)
from federation.processes.local_etcd import LocalEtcd
from federation.store import Store


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcd]:
    server = LocalEtcd(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
async def store(etcd: LocalEtcd, prefix: str) -> AsyncIterator[Store]:
    async with Store([etcd.endpoint], prefix=prefix) as s:
        yield s


def lose_answers(store: Store, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The next `n` etcd txns of `store` land, but their answer never comes back (as
    when etcd answers after the attempt's bound, or the connection drops)."""
    from federation.store import wire

    kv = store._kv
    original = wire.send_txn  # every txn goes through it
    lost = [n]

    async def send_txn(to: Any, request: Any, *, rpc_timeout: float) -> Any:
        answer = await original(to, request, rpc_timeout=rpc_timeout)
        if to is kv and lost[0] > 0:
            lost[0] -= 1
            raise TimeoutError
        return answer

    monkeypatch.setattr(wire, "send_txn", send_txn)


@dataclass
class Api:
    """A running server and an HTTP session to call it with."""

    url: str
    admin_token: str
    session: aiohttp.ClientSession
    config: ServerConfig
    tokens: dict[str, str] = field(default_factory=dict)
    app: web.Application | None = None  # set for an in-process server

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "admin",
        json: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; `token` is 'admin', a raw secret, or None for no header."""
        hdrs = dict(headers or {})
        if token is not None:
            secret = self.admin_token if token == "admin" else token
            hdrs["Authorization"] = f"Bearer {secret}"
        async with self.session.request(
            method, self.url + path, json=json, data=data, headers=hdrs
        ) as resp:
            text = await resp.text()
            try:
                import json as _json

                body = _json.loads(text) if text else None
            except ValueError:
                body = text
            return resp.status, body


def server_config(etcd: LocalEtcd, prefix: str, **overrides: Any) -> ServerConfig:
    base: dict[str, Any] = dict(
        etcd_endpoints=(etcd.endpoint,),
        prefix=prefix,
        region_ttl=2,
        election_ttl=2,
        identity=f"test-{uuid.uuid4().hex[:6]}",
        admin_token=new_secret(),
    )
    base.update(overrides)
    return ServerConfig(**base)


@contextlib.asynccontextmanager
async def serving(config: ServerConfig) -> AsyncIterator[Api]:
    """An in-process server of `config` on a real loopback port, and a session to it;
    stopped on the way out."""
    server = TestServer(create_app(config, announce=False), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            assert config.admin_token is not None
            yield Api(
                str(server.make_url("")).rstrip("/"),
                config.admin_token,
                session,
                config,
                app=server.app,
            )
    finally:
        await server.close()


@pytest.fixture
async def api(etcd: LocalEtcd, prefix: str) -> AsyncIterator[Api]:
    """An in-process server on a real loopback port, with its own prefix in etcd."""
    async with serving(server_config(etcd, prefix)) as served:
        yield served


TTL = 2  # election and region TTL of every server the tests start, in seconds


@dataclass
class ServerProcess:
    """`federation serve` as a real process."""

    proc: subprocess.Popen[bytes]
    url: str
    identity: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_http_ok(url: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not OK within {timeout} s")


def start_server(
    etcd: Sequence[str],
    identity: str,
    admin: str,
    logs: Path,
    *extra: str,
    prefix: str | None = None,
    port: int | None = None,
    ready_timeout: float = 20,
) -> ServerProcess:
    """`federation serve` with the tests' TTLs, ready to answer (stopped if it is not)."""
    port = port or free_port()
    log = logs / f"{identity}.log"
    command = serve_command(
        etcd=etcd,
        port=port,
        identity=identity,
        prefix=prefix,
        election_ttl=TTL,
        region_ttl=TTL,
    )
    proc = launch([*command, *extra], log=log, env={ADMIN_TOKEN_ENV: admin})
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", identity, log)
    try:
        wait_http_ok(server.url + "/v1/ready", ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def spawn_server(
    etcd: LocalEtcd, prefix: str, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Start `federation serve` processes on the test's prefix; all stopped at teardown."""
    started: list[ServerProcess] = []
    admin = new_secret()

    def spawn(identity: str, *extra: str) -> ServerProcess:
        server = start_server([etcd.endpoint], identity, admin, tmp_path, *extra, prefix=prefix)
        started.append(server)
        return server

    spawn.admin_token = admin  # type: ignore[attr-defined]
    try:
        yield spawn
    finally:
        for server in started:
            server.stop()


@dataclass
class AgentProcess:
    """`federation agent` as a real process."""

    region: str
    proc: subprocess.Popen[bytes]
    state_dir: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _instance_pids(state_dir: Path) -> list[int]:
    import json as _json

    try:
        data = _json.loads((state_dir / "instances.json").read_text())
    except (OSError, ValueError):
        return []
    return [int(r["pid"]) for r in data.get("instances", []) if r.get("pid")]


def start_agent(
    servers: Sequence[str],
    region: str,
    token: str,
    tmp: Path,
    *extra: str,
    cpu: float = 8,
    memory_mb: int = 16384,
    driver: str = "raw",
) -> AgentProcess:
    """`federation agent` for `region`, its state and log under `tmp` (driver `raw`
    unless a test is about another)."""
    state = tmp / "agents" / region
    command = agent_command(
        servers=servers,
        region=region,
        state_dir=state,
        cpu=cpu,
        memory_mb=memory_mb,
        driver=driver,
    )
    proc = launch(
        [*command, *extra], log=tmp / f"agent-{region}.log", env={REGION_TOKEN_ENV: token}
    )
    return AgentProcess(region, proc, state)


def stop_agents(agents: Iterable[AgentProcess]) -> None:
    """Stop the agents, then kill any instance they (or an agent the test killed) left."""
    agents = list(agents)
    for agent in agents:
        agent.stop()
    for agent in agents:
        for pid in _instance_pids(agent.state_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start `federation agent` processes; at teardown stop them and any instance they
    (or an agent killed by the test) left behind."""
    started: list[AgentProcess] = []

    def spawn(server_url: str, region: str, token: str, *extra: str) -> AgentProcess:
        agent = start_agent([server_url], region, token, tmp_path, *extra)
        started.append(agent)
        return agent

    try:
        yield spawn
    finally:
        stop_agents(started)


@pytest.fixture(scope="session")
def bubblewrap() -> Iterator[None]:
    """bubblewrap is a system package: installed here when missing and we are root.
    In CI its absence fails these tests; elsewhere it skips them."""
    if shutil.which("bwrap") is None and os.geteuid() == 0:
        install = ["apt-get", "install", "-y", "--no-install-recommends", "bubblewrap"]
        # A fresh machine may have no package lists yet: update once, then try again.
        for argv in (install, ["apt-get", "update"], install):
            subprocess.run(argv, check=False, capture_output=True, timeout=300)
            if argv is install and shutil.which("bwrap") is not None:
                break
    if shutil.which("bwrap") is None or os.geteuid() != 0:
        message = "the exec driver tests need bubblewrap and root (cgroups)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield


@pytest.fixture(scope="module")
def private_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcd]:
    """An etcd for one test module alone: for tests that compact its history (which
    would make other modules' watches from old revisions relist), or that need no
    compaction to have happened before them."""
    server = LocalEtcd(tmp_path_factory.mktemp("etcd-private"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
