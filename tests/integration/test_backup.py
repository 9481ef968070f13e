"""Backup and restore: a snapshot restored into a fresh etcd serves the same federation."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from federation.api.app import create_app
from federation.processes.children import free_port
from federation.processes.commands import federation_command
from federation.processes.local_etcd import LocalEtcd, restore_snapshot
from tests.conftest import Api, server_config


async def snapshot_of(api: Api) -> dict[str, object]:
    state = {}
    for path in ("/v1/regions", "/v1/policies", "/v1/services"):
        status, body = await api.call("GET", path)
        assert status == 200, body
        state[path] = sorted(
            (i["name"], i.get("country"), i.get("version"), i.get("allow")) for i in body["items"]
        )
    return state


async def test_backup_then_restore_into_a_fresh_etcd(
    api: Api, etcd: LocalEtcd, tmp_path: Path
) -> None:
    await api.call("POST", "/v1/regions", json={"name": "eu-de-1", "country": "DE"})
    await api.call("POST", "/v1/regions", json={"name": "us-east-1", "country": "US"})
    await api.call(
        "PUT", "/v1/policies/eu", json={"data_classes": ["phi-eu"], "allow": ["group:eea"]}
    )
    status, _ = await api.call(
        "PUT",
        "/v1/services/records",
        json={"command": ["true"], "version": "7", "data_classes": ["phi-eu"]},
    )
    assert status == 201
    before = await snapshot_of(api)

    backup = tmp_path / "federation.snap"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "federation",
        "backup",
        str(backup),
        f"--etcd={etcd.endpoint}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "snapshot written" in out.decode()
    assert backup.stat().st_size > 0

    peer = free_port()
    data = tmp_path / "restored"
    restore_snapshot(backup, data / "member", peer_url=f"http://127.0.0.1:{peer}")
    fresh = LocalEtcd(data, peer_port=peer)
    fresh.start()
    try:
        # Same prefix, same admin token (tokens are in the snapshot too).
        config = server_config(fresh, api.config.prefix, admin_token=api.config.admin_token)
        server = TestServer(create_app(config, announce=False), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                restored = Api(
                    str(server.make_url("")).rstrip("/"), api.admin_token, session, config
                )
                assert await snapshot_of(restored) == before
        finally:
            await server.close()
    finally:
        fresh.stop()


async def test_a_backup_to_a_missing_directory_says_so_without_a_traceback(
    etcd: LocalEtcd, tmp_path: Path
) -> None:
    target = tmp_path / "no-such-dir" / "federation.snap"
    proc = await asyncio.create_subprocess_exec(
        *federation_command("backup", str(target), f"--etcd={etcd.endpoint}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "backup failed" in err.decode() and str(target.parent) in err.decode()
    assert "Traceback" not in err.decode()
    assert not target.parent.exists()
