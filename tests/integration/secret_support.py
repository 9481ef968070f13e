"""What the secrets tests share: a server with a KEK file, and values that are easy to
find in anything a test reads (an answer, a snapshot, a log)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from federation.processes.certs import make_kek_file
from federation.processes.local_etcd import LocalEtcd
from tests.conftest import Api, server_config, serving


def marker(label: str) -> str:
    """A value no test could find by chance."""
    return f"{label}-{secrets.token_hex(12)}"


@contextlib.asynccontextmanager
async def secret_api(
    etcd: LocalEtcd, prefix: str, kek_file: Path | None, **overrides: Any
) -> AsyncIterator[Api]:
    """An in-process server on a real port, sealing secrets with `kek_file`."""
    async with serving(server_config(etcd, prefix, kek_file=kek_file, **overrides)) as api:
        yield api


def new_kek_file(directory: Path) -> Path:
    return make_kek_file(directory / "kek")


async def token(api: Api, role: str, region: str | None = None) -> str:
    body: dict[str, Any] = {"role": role}
    if region:
        body["region"] = region
    status, answer = await api.call("POST", "/v1/tokens", json=body)
    assert status == 201, answer
    return str(answer["token"])
