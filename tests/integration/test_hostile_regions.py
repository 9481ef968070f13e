"""A hostile region and the races around its token, over real HTTP and a real etcd.

A compromised region lies about its capacity (the admin's ceiling holds), fills etcd
with status reports (bounded, and written only when they change), and a region token
is made, rotated or revoked while the region is deleted or re-created through another
replica (one txn each: a token never outlives its region's incarnation).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from federation.api.app import create_app
from federation.api.context import STORE
from federation.cli import main
from federation.model.token import hash_secret
from federation.store import Store, keys, wire
from tests.conftest import Api, ServerProcess
from tests.integration.agents import EU_PATIENT_DATA, wait_until
from tests.integration.test_regions_api import written
from tests.integration.test_telemetry import scrape, value

# The bound of a status report (docs/api.md).
MAX_REPORT_INSTANCES = 20_000

# -- helpers ----------------------------------------------------------------------------


async def register(api: Api, name: str, country: str, **extra: Any) -> str:
    body = {"name": name, "country": country, **extra}
    status, answer = await api.call("POST", "/v1/regions", json=body)
    assert status == 201, answer
    return str(answer["token"])


async def beat(api: Api, region: str, token: str, cpu: float, memory_mb: int) -> int:
    capacity = {"cpu": cpu, "memory_mb": memory_mb}
    status, _ = await api.call(
        "POST", f"/v1/regions/{region}/heartbeat", token=token, json={"capacity": capacity}
    )
    return status


@contextlib.asynccontextmanager
async def beating(api: Api, regions: dict[str, tuple[str, float, int]]) -> AsyncIterator[None]:
    """Keep each region (token, cpu, memory_mb) beating every 0.5 s (the TTL is 2 s)."""

    async def forever(name: str, token: str, cpu: float, memory_mb: int) -> None:
        while True:
            await beat(api, name, token, cpu, memory_mb)
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(forever(n, *args)) for n, args in regions.items()]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def region(api: Api, name: str) -> dict[str, Any]:
    status, body = await api.call("GET", f"/v1/regions/{name}")
    assert status == 200, body
    return dict(body)


async def region_tokens(store: Store, name: str) -> list[dict[str, Any]]:
    """The stored token records of region `name`."""
    entries, _ = await store.scan(keys.TOKENS)
    return [e.value for e in entries if e.value.get("region") == name]


@pytest.fixture
async def replica(api: Api) -> AsyncIterator[Api]:
    """A second server on the same etcd prefix: another admin acting at the same time."""
    config = dataclasses.replace(api.config, identity=f"replica-{uuid.uuid4().hex[:6]}")
    server = TestServer(create_app(config, announce=False), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        yield Api(url, api.admin_token, api.session, config, app=server.app)
    finally:
        await server.close()


def before_txn(
    monkeypatch: pytest.MonkeyPatch,
    api: Api,
    matches: Callable[[Any], bool],
    meanwhile: Callable[[], Awaitable[None]],
) -> list[bool]:
    """Run `meanwhile` once, just before the first txn of `api`'s server that `matches`
    reaches etcd: whatever that server checked before its txn is now out of date.
    Returns a list that holds True once it ran."""
    assert api.app is not None
    kv = api.app[STORE]._kv
    original = wire.send_txn
    ran: list[bool] = []

    async def send_txn(to: Any, request: Any, *, rpc_timeout: float) -> Any:
        if to is kv and not ran and matches(request):
            ran.append(True)
            await meanwhile()
        return await original(to, request, rpc_timeout=rpc_timeout)

    monkeypatch.setattr(wire, "send_txn", send_txn)
    return ran


def puts_token(request: Any) -> bool:
    return any(b"/tokens/" in op.request_put.key for op in request.success)


def deletes_region(name: str) -> Callable[[Any], bool]:
    def matches(request: Any) -> bool:
        return any(
            op.request_delete_range.key.endswith(f"/regions/{name}".encode())
            for op in request.success
        )

    return matches


# -- hole 4: a region lies about its capacity --------------------------------------------

LIMIT = {"cpu": 4.0, "memory_mb": 8192}


async def test_a_region_claiming_a_million_cpus_gets_no_more_than_its_ceiling(
    api: Api, store: Store
) -> None:
    """eu-de-1 is registered with a ceiling of 4 CPUs and claims 1e6; eu-fr-1 and
    us-east-1 honestly offer 8 each. Ten 1-CPU EEA services and two public ones: the
    scheduler ranks by free CPU, yet eu-de-1 is given no more than 4 CPUs of them."""
    before = value(await scrape(api), "federation_region_capacity_clamped_total", region="eu-de-1")
    tokens = {
        "eu-de-1": await register(api, "eu-de-1", "DE", capacity_limit=LIMIT),
        "eu-fr-1": await register(api, "eu-fr-1", "FR"),
        "us-east-1": await register(api, "us-east-1", "US"),
    }
    status, body = await api.call(
        "PUT", f"/v1/policies/{EU_PATIENT_DATA['name']}", json=EU_PATIENT_DATA
    )
    assert status == 201, body
    claims = {
        "eu-de-1": (tokens["eu-de-1"], 1_000_000.0, 1_000_000_000),
        "eu-fr-1": (tokens["eu-fr-1"], 8.0, 16384),
        "us-east-1": (tokens["us-east-1"], 8.0, 16384),
    }
    async with beating(api, claims):

        async def all_ready() -> bool:
            return all([(await region(api, n))["state"] == "ready" for n in claims])

        await wait_until(all_ready, timeout=3, what="every region ready")
        shown = await region(api, "eu-de-1")
        assert shown["capacity_limit"] == LIMIT
        assert shown["capacity"] == LIMIT  # what the scheduler plans with
        assert shown["capacity_claimed"] == {"cpu": 1_000_000.0, "memory_mb": 1_000_000_000}
        assert (await region(api, "eu-fr-1"))["capacity_claimed"] is None
        samples = await scrape(api)
        assert value(samples, "federation_region_capacity_clamped_total", region="eu-de-1") > before
        assert value(samples, "federation_region_capacity_clamped_total", region="eu-fr-1") == 0

        resources = {"cpu": 1, "memory_mb": 256}
        names = [f"records-{i}" for i in range(10)] + ["site-0", "site-1"]
        for name in names:
            classes = ["public"] if name.startswith("site") else ["phi-eu"]
            spec = {"command": ["true"], "resources": resources, "data_classes": classes}
            status, body = await api.call("PUT", f"/v1/services/{name}", json=spec)
            assert status == 201, body

        async def placed() -> dict[str, int] | None:
            entries, _ = await store.scan(keys.ASSIGNMENTS)
            per_region: dict[str, int] = {}
            for e in entries:
                r = e.key.removeprefix(keys.ASSIGNMENTS).partition("/")[0]
                per_region[r] = per_region.get(r, 0) + int(e.value["replicas"])
            return per_region if sum(per_region.values()) == len(names) else None

        per_region = await wait_until(placed, timeout=10, what="every service placed")
        assert per_region.get("eu-de-1", 0) <= LIMIT["cpu"], per_region


async def test_only_an_admin_changes_a_capacity_ceiling_and_it_applies_at_once(
    api: Api,
) -> None:
    token = await register(api, "eu-de-1", "DE")
    assert await beat(api, "eu-de-1", token, 64, 65536) == 200
    status, body = await api.call("POST", "/v1/tokens", json={"role": "operator"})
    assert status == 201, body
    operator = body["token"]
    path = "/v1/regions/eu-de-1/capacity-limit"
    for method in ("PUT", "DELETE"):
        status, body = await api.call(method, path, token=operator, json=LIMIT)
        assert status == 403, body
        assert body["error"]["code"] == "forbidden"
    assert (await region(api, "eu-de-1"))["capacity_limit"] is None

    status, body = await api.call("PUT", path, json=LIMIT)
    assert status == 200, body
    # The stored heartbeat is clamped in the same txn: no need to wait for the next.
    shown = await region(api, "eu-de-1")
    assert shown["capacity_limit"] == LIMIT
    assert shown["capacity"] == LIMIT
    assert shown["capacity_claimed"] == {"cpu": 64.0, "memory_mb": 65536}

    status, body = await api.call("DELETE", path)
    assert status == 200, body
    shown = await region(api, "eu-de-1")
    assert shown["capacity_limit"] is None
    assert shown["capacity"] == {"cpu": 64.0, "memory_mb": 65536}
    assert shown["capacity_claimed"] is None


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        ({"cpu": -1, "memory_mb": 1024}, "capacity_limit.cpu"),
        ({"cpu": 4}, "capacity_limit.memory_mb"),
        ({"cpu": "lots", "memory_mb": 1024}, "capacity_limit.cpu"),
        ({"cpu": 4, "memory_mb": 1024, "gpu": 1}, "capacity_limit.gpu"),
    ],
    ids=["negative", "missing-memory", "not-a-number", "unknown-field"],
)
async def test_a_bad_ceiling_is_422_naming_the_field(
    api: Api, limit: dict[str, Any], field: str
) -> None:
    body = {"name": "eu-de-1", "country": "DE", "capacity_limit": limit}
    status, answer = await api.call("POST", "/v1/regions", json=body)
    assert status == 422, answer
    assert field in [d["field"] for d in answer["error"]["details"]], answer
    status, _ = await api.call("GET", "/v1/regions/eu-de-1")
    assert status == 404


# -- hole 5: status reports as a disk filler ---------------------------------------------


def instance(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "service": "web",
        "instance": f"web-{i}",
        "generation": 1,
        "version": "1",
        "state": "running",
        "ready": True,
        **extra,
    }


async def test_an_oversized_status_report_is_413_and_the_stored_report_is_unchanged(
    api: Api, store: Store
) -> None:
    token = await register(api, "eu-de-1", "DE")
    path = "/v1/regions/eu-de-1/status"
    status, body = await api.call("PUT", path, token=token, json={"instances": [instance(0)]})
    assert status == 200, body
    stored = await store.get(keys.report("eu-de-1", "web"))
    assert stored is not None

    many = [instance(i) for i in range(MAX_REPORT_INSTANCES + 1)]
    status, body = await api.call("PUT", path, token=token, json={"instances": many})
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large"
    assert str(MAX_REPORT_INSTANCES) in body["error"]["message"]
    assert body["error"]["details"][0]["field"] == "instances"
    after = await store.get(keys.report("eu-de-1", "web"))
    assert after is not None and after.revision == stored.revision

    # A long message is cut, not refused (the agent would retry a refused report forever).
    failed = instance(0, state="failed", ready=False, message="x" * 1000)
    status, body = await api.call("PUT", path, token=token, json={"instances": [failed]})
    assert status == 200, body
    after = await store.get(keys.report("eu-de-1", "web"))
    assert after is not None
    assert 0 < len(after.value["message"]) <= 256


async def test_a_report_larger_than_one_key_is_stored_per_service(api: Api, store: Store) -> None:
    """More instances than a whole-region key could hold (the old bound was 5,000, and
    etcd refuses a request above 1.5 MiB): each service's key stays small."""
    token = await register(api, "eu-de-1", "DE")
    services = 8_000
    many = [
        {**instance(0), "service": f"svc-{i}", "instance": f"svc-{i}-0", "message": "m" * 100}
        for i in range(services)
    ]
    raw = json.dumps({"instances": many}).encode()
    assert len(raw) > 1_500_000  # above etcd's request limit, and the API's default body
    status, body = await api.call(
        "PUT", "/v1/regions/eu-de-1/status", token=token, json={"instances": many}
    )
    assert status == 200, body
    assert body["instances"] == services
    entries, _ = await store.scan(keys.reports("eu-de-1"))
    assert len(entries) == services
    assert max(len(json.dumps(e.value)) for e in entries) < 1024
    assert entries[0].value["ready"] == {"1": 1}


async def test_the_same_status_report_twice_is_written_once(api: Api, store: Store) -> None:
    token = await register(api, "eu-de-1", "DE")
    path = "/v1/regions/eu-de-1/status"
    other = {**instance(9), "service": "db", "instance": "db-0"}
    report = {"instances": [*[instance(i) for i in range(3)], other]}
    status, body = await api.call("PUT", path, token=token, json=report)
    assert status == 200, body
    first = await store.get(keys.report("eu-de-1", "web"))
    db = await store.get(keys.report("eu-de-1", "db"))
    assert first is not None and db is not None
    start = await written(store)
    for _ in range(3):
        status, body = await api.call("PUT", path, token=token, json=report)
        assert status == 200, body
    assert await written(store) == start  # nothing written at all
    # Measured usage changes every time; the stored counts do not, so nothing is written.
    measured = {"instances": [instance(i, cpu_seconds=i + 1.5) for i in range(3)] + [other]}
    status, body = await api.call("PUT", path, token=token, json=measured)
    assert status == 200, body
    assert await written(store) == start
    # A change is written, to that service's key only.
    changed = {"instances": [instance(i, ready=i != 0) for i in range(3)] + [other]}
    status, body = await api.call("PUT", path, token=token, json=changed)
    assert status == 200, body
    later = await store.get(keys.report("eu-de-1", "web"))
    assert later is not None and later.revision > first.revision
    assert later.value["ready"] == {"1": 2}
    again = await store.get(keys.report("eu-de-1", "db"))
    assert again is not None and again.revision == db.revision
    # A service no longer reported is deleted; deleting the region deletes the rest.
    status, body = await api.call("PUT", path, token=token, json={"instances": [other]})
    assert status == 200, body
    assert await store.get(keys.report("eu-de-1", "web")) is None
    status, body = await api.call("DELETE", "/v1/regions/eu-de-1")
    assert status == 200, body
    assert (await store.scan(keys.reports("eu-de-1")))[0] == []


async def test_a_whole_region_report_of_an_older_server_is_ignored_then_deleted(
    api: Api, store: Store
) -> None:
    token = await register(api, "eu-de-1", "DE")
    await store.put(keys.REPORTS + "eu-de-1", {"instances": [instance(0)]})
    status, body = await api.call("GET", "/v1/regions/eu-de-1")
    assert status == 200, body
    status, body = await api.call(
        "PUT", "/v1/regions/eu-de-1/status", token=token, json={"instances": [instance(0)]}
    )
    assert status == 200, body
    assert await store.get(keys.REPORTS + "eu-de-1") is None
    assert await store.get(keys.report("eu-de-1", "web")) is not None


# -- hole 10: region token races ----------------------------------------------------------


async def test_a_token_minted_for_a_region_deleted_meanwhile_is_not_created(
    api: Api, replica: Api, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(api, "eu-de-1", "DE")

    async def delete_region() -> None:
        status, body = await replica.call("DELETE", "/v1/regions/eu-de-1")
        assert status == 200, body

    ran = before_txn(monkeypatch, api, puts_token, delete_region)
    status, body = await api.call(
        "POST", "/v1/tokens", json={"role": "region", "region": "eu-de-1"}
    )
    assert ran == [True]
    assert status in (404, 409, 422), body
    assert await region_tokens(store, "eu-de-1") == []


async def test_a_token_of_a_deleted_region_does_not_work_for_one_recreated_with_its_name(
    api: Api, replica: Api, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(api, "eu-de-1", "DE")
    fresh: list[str] = []

    async def delete_and_recreate() -> None:
        status, body = await replica.call("DELETE", "/v1/regions/eu-de-1")
        assert status == 200, body
        fresh.append(await register(replica, "eu-de-1", "DE"))

    ran = before_txn(monkeypatch, api, puts_token, delete_and_recreate)
    status, body = await api.call(
        "POST", "/v1/tokens", json={"role": "region", "region": "eu-de-1"}
    )
    assert ran == [True]
    if status == 201:  # made for the region as it was: it must not work for the new one
        assert await beat(api, "eu-de-1", body["token"], 1, 1) == 401
    else:
        assert status == 409, body
    assert len(await region_tokens(store, "eu-de-1")) == 1  # the new region's own
    assert await beat(api, "eu-de-1", fresh[0], 1, 1) == 200


async def test_a_region_deleted_while_a_token_is_minted_leaves_no_token_behind(
    api: Api, replica: Api, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(api, "eu-de-1", "DE")
    minted: list[str] = []

    async def mint() -> None:
        status, body = await replica.call(
            "POST", "/v1/tokens", json={"role": "region", "region": "eu-de-1"}
        )
        assert status == 201, body
        minted.append(body["token"])

    ran = before_txn(monkeypatch, api, deletes_region("eu-de-1"), mint)
    status, body = await api.call("DELETE", "/v1/regions/eu-de-1")
    assert ran == [True] and len(minted) == 1
    assert status == 200, body
    assert await region_tokens(store, "eu-de-1") == []
    await register(api, "eu-de-1", "DE")
    assert await beat(api, "eu-de-1", minted[0], 1, 1) == 401


async def test_a_rotation_revokes_a_token_minted_while_it_ran(
    api: Api, replica: Api, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await register(api, "eu-de-1", "DE")
    minted: list[str] = []

    async def mint() -> None:
        status, body = await replica.call(
            "POST", "/v1/tokens", json={"role": "region", "region": "eu-de-1"}
        )
        assert status == 201, body
        minted.append(body["token"])

    ran = before_txn(monkeypatch, api, puts_token, mint)
    status, body = await api.call("POST", "/v1/regions/eu-de-1/token")
    assert ran == [True] and len(minted) == 1
    assert status == 201, body
    assert await beat(api, "eu-de-1", body["token"], 1, 1) == 200
    for old in (first, minted[0]):
        assert await beat(api, "eu-de-1", old, 1, 1) == 401
    assert len(await region_tokens(store, "eu-de-1")) == 1


async def test_a_token_left_over_from_a_deleted_region_is_refused_by_its_successor(
    api: Api, store: Store
) -> None:
    """Whatever left it there (a restore, a hand edit, an older server): a region
    token is bound to the incarnation of the region it was made for."""
    old = await register(api, "eu-de-1", "DE")
    left = await store.get(keys.token(hash_secret(old)))
    assert left is not None
    status, body = await api.call("DELETE", "/v1/regions/eu-de-1")
    assert status == 200, body
    new = await register(api, "eu-de-1", "DE")
    await store.put(left.key, left.value)
    assert await beat(api, "eu-de-1", old, 1, 1) == 401
    status, _ = await api.call(
        "PUT", "/v1/regions/eu-de-1/status", token=old, json={"instances": []}
    )
    assert status == 401
    status, _ = await api.call("GET", "/v1/regions/eu-de-1/assignments", token=old)
    assert status == 401
    assert await beat(api, "eu-de-1", new, 1, 1) == 200


def test_the_cli_registers_a_region_with_a_ceiling_and_changes_it(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    server = spawn_server("cli-ceiling")
    admin = spawn_server.admin_token  # type: ignore[attr-defined]
    env = {"FEDERATION_URL": server.url, "FEDERATION_TOKEN": admin, "COLUMNS": "400"}
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def ceiling() -> Any:
        request = urllib.request.Request(
            server.url + "/v1/regions/eu-de-1", headers={"Authorization": f"Bearer {admin}"}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.load(answer)["capacity_limit"]

    add = ("region", "add", "eu-de-1", "--country", "DE")
    cli(*add, "--cpu-limit", "4", "--memory-limit", "8192")
    assert ceiling() == {"cpu": 4.0, "memory_mb": 8192}
    said = cli("region", "limit", "eu-de-1", "--cpu", "2", "--memory", "4096")
    assert "capacity ceiling cpu 2, memory 4096 MB" in said
    assert ceiling() == {"cpu": 2.0, "memory_mb": 4096}
    assert "capacity ceiling none" in cli("region", "limit", "eu-de-1", "--remove")
    assert ceiling() is None
    result = runner.invoke(
        main, ["region", "add", "x-1", "--country", "DE", "--cpu-limit", "4"], env=env
    )
    assert result.exit_code != 0
    assert "--cpu-limit and --memory-limit go together" in result.output
