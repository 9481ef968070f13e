"""What the secrets tests share: a server with a KEK file, and values that are easy to
find in anything a test reads (an answer, a snapshot, a log)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from federation.api.app import create_app
from federation.processes.certs import make_kek_file
from federation.processes.local_etcd import LocalEtcd
from tests.conftest import Api, server_config


def marker(label: str) -> str:
    """A value no test could find by chance."""
    return f"{label}-{secrets.token_hex(12)}"


@contextlib.asynccontextmanager
async def secret_api(
    etcd: LocalEtcd, prefix: str, kek_file: Path | None, **overrides: Any
) -> AsyncIterator[Api]:
    """An in-process server on a real port, sealing secrets with `kek_file`."""
    config = server_config(etcd, prefix, kek_file=kek_file, **overrides)
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


def new_kek_file(directory: Path) -> Path:
    return make_kek_file(directory / "kek")


async def token(api: Api, role: str, region: str | None = None) -> str:
    body: dict[str, Any] = {"role": role}
    if region:
        body["region"] = region
    status, answer = await api.call("POST", "/v1/tokens", json=body)
    assert status == 201, answer
    return str(answer["token"])
