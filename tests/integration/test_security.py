"""Security over real HTTP and a real etcd: token lifecycle, who may do what, and the
tamper-evident audit log (hash chain, same-transaction appends)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from federation.api.app import create_app
from federation.api.context import MIRROR, ServerConfig
from federation.model.token import TokenRecord, hash_secret
from federation.store import Op, Store, keys
from federation.store.audit import entry_key
from tests.conftest import Api, ServerProcess


async def make_token(api: Api, role: str, **extra: Any) -> tuple[str, str]:
    status, body = await api.call("POST", "/v1/tokens", json={"role": role, **extra})
    assert status == 201, body
    return str(body["id"]), str(body["token"])


async def audit_entries(api: Api) -> list[dict[str, Any]]:
    status, body = await api.call("GET", "/v1/audit?since=0")
    assert status == 200, body
    return list(body["items"])


async def verify(api: Api) -> dict[str, Any]:
    status, body = await api.call("GET", "/v1/audit/verify")
    assert status == 200, body
    return dict(body)


# -- tokens ---------------------------------------------------------------------------


async def test_token_list_shows_ids_and_roles_but_never_secrets_or_hashes(api: Api) -> None:
    token_id, secret = await make_token(api, "viewer", description="dashboard", ttl_s=3600)
    status, body = await api.call("GET", "/v1/tokens")
    assert status == 200, body
    text = json.dumps(body)
    assert secret not in text
    assert hash_secret(secret) not in text
    assert api.admin_token not in text and hash_secret(api.admin_token) not in text
    mine = next(t for t in body["items"] if t["id"] == token_id)
    assert mine["role"] == "viewer" and mine["description"] == "dashboard"
    assert mine["expires_at"] is not None and mine["created_at"]
    assert set(mine) == {
        "id",
        "role",
        "region",
        "created_at",
        "expires_at",
        "description",
        "subject",
    }


async def test_only_admins_list_or_revoke_tokens(api: Api) -> None:
    _, operator = await make_token(api, "operator")
    viewer_id, _ = await make_token(api, "viewer")
    assert (await api.call("GET", "/v1/tokens", token=operator))[0] == 403
    assert (await api.call("DELETE", f"/v1/tokens/{viewer_id}", token=operator))[0] == 403
    assert (await api.call("DELETE", "/v1/tokens/tok-nope"))[0] == 404
    assert (await api.call("DELETE", "/v1/tokens/NOT_A_NAME"))[0] == 422


async def test_the_last_admin_token_cannot_be_revoked(api: Api) -> None:
    status, body = await api.call("DELETE", "/v1/tokens/tok-admin-env")
    assert status == 409, body
    second_id, second = await make_token(api, "admin")
    status, body = await api.call("DELETE", "/v1/tokens/tok-admin-env", token=second)
    assert status == 200, body
    assert (await api.call("GET", "/v1/tokens"))[0] == 401  # the env token is gone
    assert (await api.call("GET", "/v1/tokens", token=second))[0] == 200
    status, _ = await api.call("DELETE", f"/v1/tokens/{second_id}", token=second)
    assert status == 409


async def test_an_expired_token_is_refused(api: Api, store: Store) -> None:
    token_id, secret = await make_token(api, "viewer", ttl_s=60)
    assert (await api.call("GET", "/v1/regions", token=secret))[0] == 200
    entry = await store.get(keys.token(hash_secret(secret)))
    assert entry is not None and entry.value["id"] == token_id
    await store.put(entry.key, {**entry.value, "expires_at": "2020-01-01T00:00:00Z"})
    # Written behind the server's back: its mirror sees it within the watch's delay.
    deadline = time.monotonic() + 1.0
    while (status := (await api.call("GET", "/v1/regions", token=secret))[0]) != 401:
        assert status == 200 and time.monotonic() < deadline, status
        await asyncio.sleep(0.01)
    status, body = await api.call("GET", "/v1/regions", token=secret)
    assert status == 401, body
    assert secret not in json.dumps(body)


async def test_a_write_whose_token_was_revoked_meanwhile_gets_401_and_writes_nothing(
    api: Api, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = await make_token(api, "operator")
    digest = hash_secret(secret)
    assert api.app is not None
    mirror = api.app[MIRROR]
    stale = mirror.get(keys.TOKENS, digest, TokenRecord)
    assert stale is not None
    # This server's mirror has not seen the revocation yet (another replica made it a
    # moment ago): it still knows the token, so the request gets as far as its write.
    fresh = mirror.get

    def lagging(prefix: str, tail: str, model: Any) -> Any:
        return stale if (prefix, tail) == (keys.TOKENS, digest) else fresh(prefix, tail, model)

    monkeypatch.setattr(mirror, "get", lagging)
    service = {"command": ["true"], "resources": {"cpu": 0.01}}
    status, body = await api.call("PUT", "/v1/services/web", token=secret, json=service)
    assert status == 201, body
    entries = len(await audit_entries(api))
    await store.txn([], [Op.delete(keys.token(digest))])
    # A change: its write compares the token, and fails.
    changed = {**service, "replicas": 3}
    status, body = await api.call("PUT", "/v1/services/web", token=secret, json=changed)
    assert status == 401, body
    assert body["error"]["message"] == "invalid or expired token"
    stored = await store.get(keys.service("web"))
    assert stored is not None and stored.value["spec"]["replicas"] == 1
    assert len(await audit_entries(api)) == entries
    # No change, so no write to compare it: the token is read before the answer.
    status, body = await api.call("PUT", "/v1/services/web", token=secret, json=service)
    assert status == 401, body
    assert "command" not in json.dumps(body)


async def test_a_revoked_token_gets_401_on_both_replicas_within_a_second(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    one = spawn_server("replica-one")
    two = spawn_server("replica-two")
    admin = {"Authorization": f"Bearer {spawn_server.admin_token}"}  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as http:
        async with http.post(one.url + "/v1/tokens", json={"role": "viewer"}, headers=admin) as r:
            assert r.status == 201
            made = await r.json()
        viewer = {"Authorization": f"Bearer {made['token']}"}
        for server in (one, two):
            async with http.get(server.url + "/v1/regions", headers=viewer) as r:
                assert r.status == 200
        async with http.delete(one.url + f"/v1/tokens/{made['id']}", headers=admin) as r:
            assert r.status == 200, await r.text()
        revoked_at = time.monotonic()
        for server in (two, one):
            while True:
                async with http.get(server.url + "/v1/regions", headers=viewer) as r:
                    if r.status == 401:
                        break
                assert time.monotonic() - revoked_at < 1.0, f"{server.identity} still accepts"
                await asyncio.sleep(0.02)
    for server in (one, two):
        assert made["token"] not in server.log.read_text()


async def test_no_secret_reaches_logs_or_error_messages(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, secret = await make_token(api, "viewer")
    bodies = []
    for token in (secret, secret + "x", "fed_wrong", api.admin_token):
        for method, path in (("GET", "/v1/regions"), ("PUT", "/v1/policies/p-1")):
            status, body = await api.call(method, path, token=token, data=b"{not json")
            bodies.append(json.dumps(body))
    status, body = await api.call("POST", "/v1/tokens", json={"role": "viewer", "x": secret})
    assert status == 422
    bodies.append(json.dumps(body))
    text = caplog.text + "\n".join(bodies)
    for s in (secret, api.admin_token, hash_secret(secret), hash_secret(api.admin_token)):
        assert s not in text


# -- who may do what ------------------------------------------------------------------


async def test_a_region_token_speaks_only_for_its_own_region(api: Api) -> None:
    tokens = {}
    for name, country in (("eu-de-1", "DE"), ("us-east-1", "US")):
        status, body = await api.call(
            "POST", "/v1/regions", json={"name": name, "country": country}
        )
        assert status == 201, body
        tokens[name] = body["token"]
    a = tokens["eu-de-1"]
    assert (await api.call("GET", "/v1/regions/eu-de-1/assignments", token=a))[0] == 200
    assert (await api.call("GET", "/v1/regions/us-east-1/assignments", token=a))[0] == 403
    watch = "/v1/regions/us-east-1/assignments?watch=true&since=1"
    assert (await api.call("GET", watch, token=a))[0] == 403
    report = {"instances": []}
    assert (await api.call("PUT", "/v1/regions/eu-de-1/status", token=a, json=report))[0] == 200
    status, _ = await api.call("PUT", "/v1/regions/us-east-1/status", token=a, json=report)
    assert status == 403
    status, _ = await api.call("POST", "/v1/regions/us-east-1/heartbeat", token=a, json={})
    assert status == 403
    # A region token is no viewer either.
    assert (await api.call("GET", "/v1/services", token=a))[0] == 403


# POSTs that change nothing: a viewer may evaluate residency.
READS_BY_POST = {"/v1/residency/evaluate"}


def _write_routes() -> list[tuple[str, str]]:
    """Every write route the server has, with its path parameters filled in."""
    app = create_app(ServerConfig(etcd_endpoints=("127.0.0.1:1",)))
    found = []
    for route in app.router.routes():
        if route.method in ("GET", "HEAD", "OPTIONS", "*"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if path in READS_BY_POST:
            continue
        for param in (
            "region",
            "service",
            "policy",
            "group",
            "drill",
            "token",
            "secret",
            "schedule",
        ):
            path = path.replace("{" + param + "}", "x-1")
        found.append((route.method, path))
    return found


async def test_a_viewer_cannot_write_anything(api: Api) -> None:
    status, body = await api.call("POST", "/v1/regions", json={"name": "x-1", "country": "DE"})
    assert status == 201, body
    _, viewer = await make_token(api, "viewer")
    routes = _write_routes()
    assert len(routes) >= 15, routes
    for method, path in routes:
        status, body = await api.call(method, path, token=viewer, json={})
        assert status == 403, (method, path, status, body)
    # Nothing a viewer tried is in the audit log.
    assert not [e for e in await audit_entries(api) if e["actor"].startswith("viewer:")]


# -- audit ----------------------------------------------------------------------------


POLICY = {"name": "eu-data", "data_classes": ["phi-eu"], "allow": ["group:eea"]}


async def test_changes_are_audited_with_actor_and_revisions_and_the_log_verifies(
    api: Api,
) -> None:
    assert (await verify(api))["ok"] is True  # empty log
    status, body = await api.call("POST", "/v1/regions", json={"name": "eu-de-1", "country": "DE"})
    assert status == 201
    status, body = await api.call("PUT", "/v1/policies/eu-data", json=POLICY)
    assert status == 201, body
    policy_revision = body["revision"]
    status, _ = await api.call("POST", "/v1/regions/eu-de-1/cordon", json={"reason": "test"})
    assert status == 200
    token_id, _ = await make_token(api, "viewer")
    assert (await api.call("DELETE", f"/v1/tokens/{token_id}"))[0] == 200
    entries = await audit_entries(api)
    actions = [e["action"] for e in entries]
    for action in ("region.create", "policy.put", "region.cordon", "token.create", "token.revoke"):
        assert action in actions, actions
    put = next(e for e in entries if e["action"] == "policy.put")
    assert put["actor"] == "admin:tok-admin-env"
    assert put["resource"] == "policies/eu-data"
    assert put["before_revision"] == 0
    assert put["after_revision"] == policy_revision
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    result = await verify(api)
    assert result == {**result, "ok": True, "entries": len(entries), "first_bad": None}
    # since= pages from a sequence number.
    status, body = await api.call("GET", "/v1/audit?since=2")
    assert [e["seq"] for e in body["items"]] == list(range(3, len(entries) + 1))
    assert (await api.call("GET", "/v1/audit?since=-1"))[0] == 400


async def test_a_policy_change_and_its_entry_land_together_or_not_at_all(api: Api) -> None:
    status, body = await api.call("PUT", "/v1/policies/eu-data", json=POLICY)
    assert status == 201, body
    revision = body["revision"]
    before = await audit_entries(api)
    changed = {**POLICY, "allow": ["DE"]}
    stale = {"If-Match": str(revision - 1)}
    status, body = await api.call("PUT", "/v1/policies/eu-data", json=changed, headers=stale)
    assert status == 409, body
    assert await audit_entries(api) == before  # no entry without a change
    status, body = await api.call("GET", "/v1/policies/eu-data")
    assert body["allow"] == ["group:eea"] and body["revision"] == revision
    status, body = await api.call(
        "PUT", "/v1/policies/eu-data", json=changed, headers={"If-Match": str(revision)}
    )
    assert status == 200, body
    after = await audit_entries(api)
    assert len(after) == len(before) + 1  # no change without an entry
    entry = after[-1]
    assert entry["action"] == "policy.put" and entry["actor"] == "admin:tok-admin-env"
    assert entry["before_revision"] == revision and entry["after_revision"] == body["revision"]
    assert entry["details"]["value"]["allow"] == ["DE"]


async def test_concurrent_audited_writes_serialise_into_one_chain(api: Api) -> None:
    # Distinct keys: only the audit head orders these writes.
    made = await asyncio.gather(*(make_token(api, "viewer") for _ in range(8)))
    entries = await audit_entries(api)
    assert sorted(e["resource"] for e in entries) == sorted(f"tokens/{i}" for i, _ in made)
    assert (await verify(api))["ok"] is True


async def test_an_entry_edited_in_etcd_fails_verification_naming_it(api: Api, store: Store) -> None:
    for name in ("a-1", "b-1", "c-1"):
        status, _ = await api.call(
            "PUT", f"/v1/groups/{name}", json={"name": name, "countries": ["DE"]}
        )
        assert status == 201
    assert (await verify(api))["ok"] is True
    entry = await store.get(entry_key(2))
    assert entry is not None
    await store.put(entry.key, {**entry.value, "actor": "admin:someone-else"})
    result = await verify(api)
    assert result["ok"] is False and result["first_bad"] == 2, result
    assert "hash" in result["reason"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "federation",
        "--url",
        api.url,
        "audit",
        "verify",
        env={"FEDERATION_TOKEN": api.admin_token, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, out + err
    assert b"entry 2" in err


async def test_an_entry_rewritten_with_a_recomputed_hash_is_still_caught(
    api: Api, store: Store
) -> None:
    from federation.store.audit import digest

    status, _ = await api.call("PUT", "/v1/groups/a-1", json={"name": "a-1", "countries": ["DE"]})
    assert status == 201
    entry = await store.get(entry_key(1))
    assert entry is not None
    forged = {**entry.value, "actor": "admin:someone-else"}
    forged["hash"] = digest(forged)
    await store.put(entry.key, forged)
    result = await verify(api)
    assert result["ok"] is False and result["first_bad"] == 1, result


async def test_a_deleted_entry_fails_verification(api: Api, store: Store) -> None:
    for name in ("a-1", "b-1", "c-1"):
        status, _ = await api.call(
            "PUT", f"/v1/groups/{name}", json={"name": name, "countries": ["DE"]}
        )
        assert status == 201
    await store.txn([], [Op.delete(entry_key(2))])
    result = await verify(api)
    assert result["ok"] is False and result["first_bad"] == 2, result
