"""Signed checkpoints of the audit log, against a real etcd and a real server: someone
with write access to etcd (the attacker here writes keys with a Store of their own) can
shorten or wipe the log and re-point its head so the chain still verifies, but not
against a checkpoint signed with the server's key, which is never in etcd."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.processes.local_etcd import LocalEtcd
from federation.store import Op, Store, keys
from federation.store.audit import entry_key
from tests.conftest import Api, server_config, serving


def write_key(path: Path) -> Path:
    """An Ed25519 key file as `federation up` (or `openssl genpkey`) makes one."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


@pytest.fixture
async def keyed(etcd: LocalEtcd, prefix: str, tmp_path: Path) -> AsyncIterator[Api]:
    """An in-process server started with `--audit-key`."""
    config = server_config(etcd, prefix, audit_key=write_key(tmp_path / "audit.key"))
    async with serving(config) as api:
        yield api


async def cli(api: Api, *args: str) -> tuple[int, str]:
    """`federation --url URL ARGS...` as the admin; its exit status and its output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "federation",
        "--url",
        api.url,
        *args,
        env={"FEDERATION_TOKEN": api.admin_token, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def make_entries(api: Api, n: int) -> None:
    for i in range(n):
        name = f"g-{i}"
        status, body = await api.call(
            "PUT", f"/v1/groups/{name}", json={"name": name, "countries": ["DE"]}
        )
        assert status == 201, body


async def verify(api: Api) -> dict[str, Any]:
    status, body = await api.call("GET", "/v1/audit/verify")
    assert status == 200, body
    return dict(body)


async def truncate(store: Store, keep: int) -> None:
    """What an attacker with etcd access does: drop the entries after `keep` and point
    the head at the last one kept, so the chain that is left is whole."""
    entries, _ = await store.scan(keys.AUDIT)
    ops = [Op.delete(e.key) for e in entries if int(e.value["seq"]) > keep]
    if keep:
        last = next(e for e in entries if int(e.value["seq"]) == keep)
        ops.append(Op.put(keys.AUDIT_HEAD, {"seq": keep, "hash": last.value["hash"]}))
    else:
        ops.append(Op.delete(keys.AUDIT_HEAD))
    ok, _, _ = await store.txn([], ops)
    assert ok


# -- the attack, caught --------------------------------------------------------------


async def test_truncating_the_tail_and_repointing_the_head_is_caught_by_the_checkpoint(
    keyed: Api, store: Store, tmp_path: Path
) -> None:
    await make_entries(keyed, 6)
    cp = tmp_path / "cp.json"
    code, out = await cli(keyed, "audit", "checkpoint", "-o", str(cp))
    assert code == 0, out
    signed = json.loads(cp.read_text())
    assert signed["seq"] == 6 and len(signed["signature"]) > 40, signed
    code, out = await cli(keyed, "audit", "verify", "--checkpoint", str(cp))
    assert code == 0, out

    await truncate(store, keep=3)
    # The chain alone cannot tell: what is left is whole and the head names its end.
    assert (await verify(keyed))["ok"] is True
    code, out = await cli(keyed, "audit", "verify", "--checkpoint", str(cp))
    assert code == 1, out
    assert "checkpoint seq 6" in out, out


async def test_an_empty_log_with_a_checkpoint_fails(
    keyed: Api, store: Store, tmp_path: Path
) -> None:
    await make_entries(keyed, 2)
    cp = tmp_path / "cp.json"
    code, out = await cli(keyed, "audit", "checkpoint", "-o", str(cp))
    assert code == 0, out
    await truncate(store, keep=0)  # wiped: no entry, no head
    code, out = await cli(keyed, "audit", "verify", "--checkpoint", str(cp))
    assert code == 1, out
    assert "checkpoint seq 2" in out and "empty" in out, out


async def test_an_entry_after_the_checkpoint_that_does_not_verify_fails(
    keyed: Api, store: Store
) -> None:
    await make_entries(keyed, 3)
    status, signed = await keyed.call("GET", "/v1/audit/checkpoint")
    assert status == 200, signed
    status, _ = await keyed.call("PUT", "/v1/groups/h-1", json={"countries": ["FR"]})
    assert status == 201
    entry = await store.get(entry_key(4))
    assert entry is not None
    await store.put(entry.key, {**entry.value, "actor": "admin:someone-else"})
    status, body = await keyed.call("POST", "/v1/audit/verify", json=signed)
    assert status == 200, body
    assert body["ok"] is False and body["first_bad"] == 4, body


async def test_a_log_that_kept_the_checkpoint_and_grew_verifies(keyed: Api) -> None:
    await make_entries(keyed, 2)
    status, signed = await keyed.call("GET", "/v1/audit/checkpoint")
    assert status == 200, signed
    status, _ = await keyed.call("PUT", "/v1/groups/h-1", json={"countries": ["FR"]})
    assert status == 201
    status, body = await keyed.call("POST", "/v1/audit/verify", json=signed)
    assert status == 200, body
    assert body == {**body, "ok": True, "entries": 3, "checkpoint": 2}, body


async def test_a_rewritten_chain_with_the_checkpoints_seq_is_caught(
    keyed: Api, store: Store
) -> None:
    from federation.store.audit import GENESIS, Change, Head, make_entry

    await make_entries(keyed, 3)
    status, signed = await keyed.call("GET", "/v1/audit/checkpoint")
    assert status == 200, signed
    # A whole new chain of three entries (fresh keys, so none looks rewritten in place).
    await truncate(store, keep=0)
    head = Head(0, GENESIS)
    ops = []
    for i in range(3):
        raw, head = make_entry(head, Change("group.put", f"groups/x-{i}", "admin:x"), _now())
        ops.append(Op.put_raw(entry_key(head.seq), raw))
    ops.append(Op.put(keys.AUDIT_HEAD, {"seq": head.seq, "hash": head.hash}))
    assert (await store.txn([], ops))[0]
    assert (await verify(keyed))["ok"] is True
    status, body = await keyed.call("POST", "/v1/audit/verify", json=signed)
    assert status == 200, body
    assert body["ok"] is False and "checkpoint seq 3" in body["reason"], body


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# -- checkpoints that are not the server's -----------------------------------------------


async def test_a_forged_checkpoint_is_refused(keyed: Api, tmp_path: Path) -> None:
    await make_entries(keyed, 4)
    status, signed = await keyed.call("GET", "/v1/audit/checkpoint")
    assert status == 200, signed
    # Moved back to an earlier entry, as one would to excuse a truncation: the
    # signature no longer matches.
    status, body = await keyed.call("POST", "/v1/audit/verify", json={**signed, "seq": 2})
    assert status == 422, body
    assert body["error"]["details"][0]["field"] == "signature", body
    # Signed by a key of the forger's own, and saying so: not this server's key.
    forger = Ed25519PrivateKey.generate()
    from federation.store.audit.checkpoint import public_key_text, sign

    forged = sign(forger, _head(signed), _now()).model_dump()
    status, body = await keyed.call("POST", "/v1/audit/verify", json=forged)
    assert status == 422, body
    assert body["error"]["details"][0]["field"] == "public_key", body
    # ...or claiming to be the server's key: the signature does not hold.
    status, body = await keyed.call(
        "POST", "/v1/audit/verify", json={**forged, "public_key": signed["public_key"]}
    )
    assert status == 422 and body["error"]["details"][0]["field"] == "signature", body
    assert public_key_text(forger) != signed["public_key"]
    # The CLI says so and exits non-zero.
    cp = tmp_path / "forged.json"
    cp.write_text(json.dumps({**signed, "seq": 2}))
    code, out = await cli(keyed, "audit", "verify", "--checkpoint", str(cp))
    assert code == 1 and "signature" in out, out


def _head(signed: dict[str, Any]) -> Any:
    from federation.store.audit import Head

    return Head(int(signed["seq"]), str(signed["hash"]))


async def test_checkpoint_routes_are_for_admins_only(keyed: Api) -> None:
    await make_entries(keyed, 1)
    status, signed = await keyed.call("GET", "/v1/audit/checkpoint")
    assert status == 200
    status, made = await keyed.call("POST", "/v1/tokens", json={"role": "operator"})
    assert status == 201
    operator = made["token"]
    status, body = await keyed.call("GET", "/v1/audit/checkpoint", token=operator)
    assert status == 403, body
    status, body = await keyed.call("POST", "/v1/audit/verify", token=operator, json=signed)
    assert status == 403, body
    status, body = await keyed.call("GET", "/v1/audit/checkpoint", token=None)
    assert status == 401, body


async def test_a_server_without_a_key_signs_no_checkpoint(api: Api) -> None:
    await make_entries(api, 1)
    status, body = await api.call("GET", "/v1/audit/checkpoint")
    assert status == 409 and "--audit-key" in body["error"]["message"], body


async def test_no_checkpoint_of_a_log_that_does_not_verify(keyed: Api, store: Store) -> None:
    await make_entries(keyed, 2)
    entry = await store.get(entry_key(1))
    assert entry is not None
    await store.put(entry.key, {**entry.value, "actor": "admin:someone-else"})
    status, body = await keyed.call("GET", "/v1/audit/checkpoint")
    assert status == 409 and "entry 1" in body["error"]["message"], body


async def test_a_malformed_checkpoint_is_a_422_naming_the_field(keyed: Api) -> None:
    await make_entries(keyed, 1)
    status, signed = await keyed.call("GET", "/v1/audit/checkpoint")
    assert status == 200
    for field, value in (("seq", "²"), ("hash", "zz"), ("signature", "%%%"), ("seq", 0)):
        status, body = await keyed.call("POST", "/v1/audit/verify", json={**signed, field: value})
        assert status == 422, (field, body)
        assert body["error"]["details"][0]["field"] == field, body


# -- verify without a checkpoint ----------------------------------------------------------


async def test_entries_past_the_head_are_flagged(api: Api, store: Store) -> None:
    await make_entries(api, 3)
    # The attacker points the head back but leaves the entries: the tail is past it.
    entries, _ = await store.scan(keys.AUDIT)
    second = entries[1].value
    await store.put(keys.AUDIT_HEAD, {"seq": 2, "hash": second["hash"]})
    result = await verify(api)
    assert result["ok"] is False and result["first_bad"] == 3, result
    assert "past the head" in result["reason"], result


# -- a server that sees the head go back --------------------------------------------------


async def test_a_server_that_sees_the_head_go_back_reports_it(
    api: Api, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    await make_entries(api, 5)
    status, body = await api.call("GET", "/v1/health", token=None)
    assert status == 200 and body["audit_head"]["regressions"] == 0, body
    await truncate(store, keep=2)
    deadline = time.monotonic() + 5
    while True:
        status, body = await api.call("GET", "/v1/health", token=None)
        if body.get("audit_head", {}).get("regressions"):
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    assert status == 200  # liveness: the process still serves
    assert body["audit_head"]["highest_seq"] == 5, body
    assert "entry 5" in body["audit_head"]["detail"] and "entry 2" in body["audit_head"]["detail"]
    assert any(
        r.levelno == logging.ERROR and "audit head went back" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    status, text = await api.call("GET", "/metrics", token=None)
    line = next(
        (x for x in str(text).splitlines() if x.startswith("federation_audit_head_regressions")),
        None,
    )
    assert line is not None and float(line.rsplit(" ", 1)[1]) >= 1, text


# -- `up` ---------------------------------------------------------------------------------


def test_the_key_file_up_makes_is_private_and_loads(tmp_path: Path) -> None:
    from federation.processes.certs import make_audit_key

    path = make_audit_key(tmp_path / "data" / "audit.key")
    assert path.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    # A second `up` on the same data dir keeps the key (old checkpoints stay verifiable).
    before = path.read_bytes()
    assert make_audit_key(path).read_bytes() == before
