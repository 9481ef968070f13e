"""Fixtures shared by every test tier: a real etcd, real servers, real HTTP.

One etcd per test session (each test gets its own key prefix, so tests never see
each other's state); servers run in-process on a real port or as real processes.
Every process a fixture starts is stopped by it, even when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from federation.api.app import create_app
from federation.api.context import ServerConfig
from federation.model.token import new_secret
from federation.store import Store
from federation.store.local_etcd import LocalEtcd, free_port


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


@dataclass
class Api:
    """A running server and an HTTP session to call it with."""

    url: str
    admin_token: str
    session: aiohttp.ClientSession
    config: ServerConfig
    tokens: dict[str, str] = field(default_factory=dict)

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


@pytest.fixture
async def api(etcd: LocalEtcd, prefix: str) -> AsyncIterator[Api]:
    """An in-process server on a real loopback port, with its own prefix in etcd."""
    config = server_config(etcd, prefix)
    server = TestServer(create_app(config, announce=False), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            assert config.admin_token is not None
            yield Api(str(server.make_url("")).rstrip("/"), config.admin_token, session, config)
    finally:
        await server.close()


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


@pytest.fixture
def spawn_server(
    etcd: LocalEtcd, prefix: str, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Start `federation serve` processes on the test's prefix; all stopped at teardown."""
    started: list[ServerProcess] = []
    admin = new_secret()

    def spawn(identity: str, *extra: str) -> ServerProcess:
        port = free_port()
        log = tmp_path / f"{identity}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "federation",
                    "serve",
                    f"--etcd={etcd.endpoint}",
                    f"--prefix={prefix}",
                    f"--port={port}",
                    f"--identity={identity}",
                    "--election-ttl=2",
                    "--region-ttl=2",
                    *extra,
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FEDERATION_ADMIN_TOKEN": admin},
                start_new_session=True,
            )
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", identity, log)
        started.append(server)
        wait_http_ok(server.url + "/v1/ready")
        return server

    spawn.admin_token = admin  # type: ignore[attr-defined]
    try:
        yield spawn
    finally:
        for server in started:
            server.stop()
