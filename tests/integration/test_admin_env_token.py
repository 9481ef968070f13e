"""`FEDERATION_ADMIN_TOKEN`, the admin token a server is given from its environment:
a weak one is refused at start, a new value replaces the old record, and a revoked one
stays revoked across restarts (real etcd, real HTTP, a real `serve` process)."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from federation.api.app import create_app
from federation.model.token import new_secret
from federation.processes.children import free_port, launch
from federation.processes.commands import ADMIN_TOKEN_ENV, serve_command
from federation.processes.local_etcd import LocalEtcd
from tests.conftest import Api, server_config


def wait_http_ok(url: str, *, timeout: float, unless: subprocess.Popen[bytes]) -> None:
    """Until `url` answers 200 (TimeoutError after `timeout`), or `unless` has exited."""
    end = time.monotonic() + timeout
    while unless.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > end:
            raise TimeoutError(url)
        time.sleep(0.1)


WEAK = {
    "short": "fed_" + "x1Y" * 5,  # 19 characters
    "one character": "a" * 40,
    "few characters": "abcabcabc1" * 4,  # 40 characters, 4 distinct
    "one class": "abcdefghijklmnopqrstuvwxyzabcdefgh",  # 34 lower-case letters
}


@pytest.mark.parametrize("kind", sorted(WEAK))
def test_serve_refuses_a_weak_admin_token_at_start(
    kind: str, etcd: LocalEtcd, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    command = serve_command(etcd=[etcd.endpoint], port=port, identity="weak", prefix=prefix)
    log = tmp_path / "serve.log"
    proc = launch(command, log=log, env={ADMIN_TOKEN_ENV: WEAK[kind]})
    try:
        # It exits, or it comes up (then the test fails below, and it is stopped).
        with contextlib.suppress(TimeoutError):
            wait_http_ok(f"http://127.0.0.1:{port}/v1/ready", timeout=20, unless=proc)
        code = proc.poll()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code not in (None, 0), f"serve started with a {kind} admin token:\n{text}"
    assert ADMIN_TOKEN_ENV in text and "Traceback" not in text, text
    assert WEAK[kind] not in text  # the message describes the token, never shows it


def test_a_strong_token_of_hex_digits_is_accepted() -> None:
    from federation.model.token import admin_token_weakness

    assert admin_token_weakness("0123456789abcdef" * 4) is None  # `openssl rand -hex 32`
    assert admin_token_weakness(new_secret()) is None
    for kind, secret in WEAK.items():
        assert admin_token_weakness(secret), kind


@asynccontextmanager
async def server(etcd: LocalEtcd, prefix: str, admin: str) -> AsyncIterator[Api]:
    """An in-process server on `prefix`, started with FEDERATION_ADMIN_TOKEN=`admin`."""
    config = server_config(etcd, prefix, admin_token=admin)
    test_server = TestServer(create_app(config, announce=False), host="127.0.0.1")
    await test_server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            url = str(test_server.make_url("")).rstrip("/")
            yield Api(url, admin, session, config, app=test_server.app)
    finally:
        await test_server.close()


async def env_tokens(api: Api, token: str = "admin") -> list[dict[str, Any]]:
    status, body = await api.call("GET", "/v1/tokens", token=token)
    assert status == 200, body
    return [t for t in body["items"] if t["id"] == "tok-admin-env"]


async def test_a_changed_admin_token_replaces_the_old_record(etcd: LocalEtcd, prefix: str) -> None:
    old, new = new_secret(), new_secret()
    async with server(etcd, prefix, old) as api:
        assert len(await env_tokens(api)) == 1
    async with server(etcd, prefix, new) as api:
        assert len(await env_tokens(api)) == 1, await env_tokens(api)
        status, _ = await api.call("GET", "/v1/regions", token=old)
        assert status == 401  # the old value no longer works
        status, body = await api.call("GET", "/v1/audit?since=0")
        assert any(e["resource"] == "tokens/tok-admin-env" for e in body["items"]), body
    # Starting again with the same value changes nothing.
    async with server(etcd, prefix, new) as api:
        assert len(await env_tokens(api)) == 1


async def test_a_revoked_admin_token_is_not_made_again_at_restart(
    etcd: LocalEtcd, prefix: str
) -> None:
    env = new_secret()
    async with server(etcd, prefix, env) as api:
        status, made = await api.call("POST", "/v1/tokens", json={"role": "admin"})
        assert status == 201
        other = made["token"]
        status, body = await api.call("DELETE", "/v1/tokens/tok-admin-env")
        assert status == 200, body
    async with server(etcd, prefix, env) as api:
        status, _ = await api.call("GET", "/v1/regions", token=env)
        assert status == 401, "the revoked FEDERATION_ADMIN_TOKEN works again"
        assert await env_tokens(api, other) == []
    # A new value is a new token: it is stored.
    fresh = new_secret()
    async with server(etcd, prefix, fresh) as api:
        assert len(await env_tokens(api)) == 1
