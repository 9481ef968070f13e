"""What a bad bearer token costs: unknown tokens are remembered briefly, so repeating
one does not read etcd each time; an address that keeps failing is refused (429,
Retry-After) while good tokens from it are still served; and a token created just
after someone tried it works."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from federation.api.app import create_app
from federation.api.context import MIRROR
from federation.model.token import Role, TokenRecord, hash_secret, new_secret
from federation.processes.local_etcd import LocalEtcd
from federation.store import Store, keys
from federation.store import tokens as store_tokens
from tests.conftest import Api, server_config

StartServer = Callable[..., Coroutine[Any, Any, Api]]


@pytest.fixture
async def start_server(etcd: LocalEtcd, prefix: str) -> AsyncIterator[StartServer]:
    """In-process servers with the settings a test gives; all stopped at the end."""
    servers: list[TestServer] = []
    async with aiohttp.ClientSession() as session:

        async def start(**overrides: Any) -> Api:
            config = server_config(etcd, prefix, **overrides)
            server = TestServer(create_app(config, announce=False), host="127.0.0.1")
            servers.append(server)
            await server.start_server()
            assert config.admin_token is not None
            url = str(server.make_url("")).rstrip("/")
            return Api(url, config.admin_token, session, config, app=server.app)

        try:
            yield start
        finally:
            for server in servers:
                await server.close()


async def etcd_reads(api: Api) -> float:
    """Range calls made by this process so far (the servers run in it), from /metrics."""
    status, text = await api.call("GET", "/metrics", token=None)
    assert status == 200
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "federation_etcd_request_duration_seconds_count"
        and s.labels.get("operation") == "get"
    )


async def test_repeating_an_unknown_token_costs_a_bounded_number_of_etcd_reads(
    start_server: StartServer,
) -> None:
    # The per-address limit is lifted here, so only the negative cache bounds the cost.
    api = await start_server(auth_failures_burst=100_000)
    assert (await api.call("GET", "/v1/regions"))[0] == 200
    bad = new_secret()
    before, started = await etcd_reads(api), time.monotonic()
    for i in range(200):
        method, path = ("GET", "/v1/regions") if i % 2 else ("DELETE", "/v1/services/x")
        status, body = await api.call(method, path, token=bad)
        assert status == 401, body
    reads = await etcd_reads(api) - before
    seconds = time.monotonic() - started
    # One read per negative-cache lifetime (1 s), and a little slack for the server's own.
    assert reads <= 3 + seconds, f"{reads:g} etcd reads for 200 requests in {seconds:.1f} s"


async def test_an_address_that_keeps_failing_gets_429_but_its_good_tokens_still_work(
    start_server: StartServer,
) -> None:
    api = await start_server()
    burst = 20  # ServerConfig.auth_failures_burst's default
    before = await etcd_reads(api)
    statuses = []
    for _ in range(burst + 30):
        status, body = await api.call("GET", "/v1/regions", token=new_secret())
        statuses.append(status)
        if status == 429:
            break
    assert statuses[:-1] == [401] * burst and statuses[-1] == 429, statuses
    assert body["error"]["code"] == "too_many_requests"
    assert "failed authentications" in body["error"]["message"]
    # A refused attempt reads nothing: the address pays for at most `burst` reads.
    assert await etcd_reads(api) - before <= burst + 3
    async with api.session.get(
        api.url + "/v1/regions", headers={"Authorization": f"Bearer {new_secret()}"}
    ) as resp:
        assert resp.status == 429
        retry_after = int(resp.headers["Retry-After"])
        assert 1 <= retry_after <= 60
    # The limit is on failures, not on users: good tokens from that address still work.
    status, _ = await api.call("GET", "/v1/regions")
    assert status == 200
    status, body = await api.call("POST", "/v1/tokens", json={"role": "viewer"})
    assert status == 201, body
    status, _ = await api.call("GET", "/v1/regions", token=body["token"])
    assert status == 200


async def test_a_token_created_right_after_a_failed_attempt_with_it_works(
    start_server: StartServer, store: Store
) -> None:
    api = await start_server()
    secret = new_secret()  # known before it exists, as FEDERATION_ADMIN_TOKEN is
    for method in ("GET", "DELETE"):
        status, _ = await api.call(method, "/v1/services/x", token=secret)
        assert status == 401
    record = TokenRecord(id="tok-late", role=Role.OPERATOR, created_at=datetime.now(UTC))
    # Made through another replica (this store's client): this server learns of it
    # through its mirror, within the watch's delay, and well within the negative
    # cache's lifetime.
    await store_tokens.put(store, hash_secret(secret), record)
    made = await store.get(keys.token(hash_secret(secret)))
    assert made is not None and api.app is not None
    await api.app[MIRROR].wait_for(made.revision)
    status, body = await api.call("GET", "/v1/services", token=secret)
    assert status == 200, body
    service = {"command": ["true"], "resources": {"cpu": 0.01}}
    status, body = await api.call("PUT", "/v1/services/x", token=secret, json=service)
    assert status == 201, body
