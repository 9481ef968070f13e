"""An assignment watch lives no longer than the right to open it: it ends within a
second of its token being revoked, rotated away or expiring, or of its region being
deleted; a token holds a few watches at most; a compacted `since` is told to re-list."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from federation.model.token import Role, TokenRecord, hash_secret, new_secret
from federation.store import Store, keys
from federation.store import tokens as store_tokens
from tests.conftest import Api
from tests.integration.test_assignment_watch import assignment, register

BOUND_S = 1.0  # the bound: a stream outlives its right to exist by less than this


@dataclass
class Stream:
    """An open watch, read in the background until the server ends it."""

    status: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    ended_at: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    live: asyncio.Event = field(default_factory=asyncio.Event)  # its first line came


@contextlib.asynccontextmanager
async def watching(api: Api, token: str, region: str, since: int) -> AsyncIterator[Stream]:
    """Open `region`'s watch with `token`, and read it until its end (or the block's)."""
    path = f"/v1/regions/{region}/assignments?watch=true&since={since}"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(api.url + path, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        stream = Stream(resp.status)
        if resp.status != 200:
            stream.lines.append(await resp.json())
            yield stream
            return

        async def read() -> None:
            with contextlib.suppress(aiohttp.ClientError):
                async for raw in resp.content:
                    if raw.strip():
                        stream.lines.append(json.loads(raw))
                        stream.live.set()
            stream.ended_at = time.monotonic()
            stream.ended.set()
            stream.live.set()

        reader = asyncio.create_task(read())
        try:
            # The stream is live once its first line (a change) has arrived.
            async with asyncio.timeout(5):
                await stream.live.wait()
            yield stream
        finally:
            reader.cancel()
            await asyncio.wait([reader])


async def a_change(api: Api, store: Store, region: str) -> int:
    """Write one assignment of `region`; returns the revision just before it."""
    before = await store.revision()
    await store.put(keys.assignment(region, "a"), assignment("a", region))
    return before


async def ended_within(stream: Stream, since: float, bound: float = BOUND_S) -> float:
    """Seconds from `since` until the server ended the stream; fails past a generous wait."""
    try:
        async with asyncio.timeout(bound + 3):
            await stream.ended.wait()
    except TimeoutError:
        raise AssertionError(f"the watch was still open {bound + 3:g} s later") from None
    assert stream.ended_at is not None
    took = stream.ended_at - since
    assert took < bound, f"the watch ended {took:.2f} s later"
    return took


async def make_token(api: Api, role: str, **extra: Any) -> tuple[str, str]:
    status, body = await api.call("POST", "/v1/tokens", json={"role": role, **extra})
    assert status == 201, body
    return str(body["id"]), str(body["token"])


async def test_a_watch_ends_within_a_second_of_its_token_being_revoked(
    api: Api, store: Store
) -> None:
    await register(api, "eu-de-1", "DE")
    token_id, viewer = await make_token(api, "viewer")
    since = await a_change(api, store, "eu-de-1")
    async with watching(api, viewer, "eu-de-1", since) as stream:
        assert stream.status == 200
        status, _ = await api.call("DELETE", f"/v1/tokens/{token_id}")
        assert status == 200
        await ended_within(stream, time.monotonic())
        # Nothing written after the revocation reaches the revoked token.
        await store.put(keys.assignment("eu-de-1", "b"), assignment("b", "eu-de-1"))
        assert [line.get("service") for line in stream.lines if line["type"] == "put"] == ["a"]
        assert stream.lines[-1] == {"type": "closed", "reason": "token revoked"}


async def test_a_watch_ends_within_a_second_of_its_regions_token_being_rotated(
    api: Api, store: Store
) -> None:
    old = await register(api, "eu-de-1", "DE")
    since = await a_change(api, store, "eu-de-1")
    async with watching(api, old, "eu-de-1", since) as stream:
        assert stream.status == 200
        status, body = await api.call("POST", "/v1/regions/eu-de-1/token")
        assert status == 201, body
        await ended_within(stream, time.monotonic())
    # The new token watches as before.
    async with watching(api, body["token"], "eu-de-1", since) as stream:
        assert stream.status == 200
        assert stream.lines[0]["type"] == "put"


async def test_a_watch_ends_within_a_second_of_its_region_being_deleted(
    api: Api, store: Store
) -> None:
    await register(api, "eu-de-1", "DE")
    _, viewer = await make_token(api, "viewer")
    since = await a_change(api, store, "eu-de-1")
    async with watching(api, viewer, "eu-de-1", since) as stream:
        assert stream.status == 200
        status, body = await api.call("DELETE", "/v1/regions/eu-de-1")
        assert status == 200, body
        await ended_within(stream, time.monotonic())
        assert stream.lines[-1] == {"type": "closed", "reason": "region eu-de-1 deleted"}


async def test_a_watch_ends_within_a_second_of_its_token_expiring(api: Api, store: Store) -> None:
    await register(api, "eu-de-1", "DE")
    # The API's shortest ttl is a minute: this token is written as another replica would.
    secret = new_secret()
    expires = datetime.now(UTC) + timedelta(seconds=2)
    record = TokenRecord(
        id="tok-short", role=Role.VIEWER, created_at=datetime.now(UTC), expires_at=expires
    )
    await store_tokens.put(store, hash_secret(secret), record)
    since = await a_change(api, store, "eu-de-1")
    async with watching(api, secret, "eu-de-1", since) as stream:
        assert stream.status == 200
        expires_in = (expires - datetime.now(UTC)).total_seconds()
        took = await ended_within(stream, time.monotonic() + expires_in)
        assert took > -0.1, "the watch ended before its token expired"
        assert stream.lines[-1] == {"type": "closed", "reason": "token expired"}


async def test_the_fifth_concurrent_watch_of_a_token_is_refused(api: Api, store: Store) -> None:
    token = await register(api, "eu-de-1", "DE")
    since = await a_change(api, store, "eu-de-1")
    async with contextlib.AsyncExitStack() as open_watches:
        for _ in range(4):
            stream = await open_watches.enter_async_context(watching(api, token, "eu-de-1", since))
            assert stream.status == 200
        async with watching(api, token, "eu-de-1", since) as fifth:
            assert fifth.status == 429, fifth.lines
            error = fifth.lines[0]["error"]
            assert error["code"] == "too_many_requests"
            assert "4 assignment watches" in error["message"]
        # Another token is not affected.
        _, viewer = await make_token(api, "viewer")
        async with watching(api, viewer, "eu-de-1", since) as other:
            assert other.status == 200
    # Once the client has gone, its watches no longer count (noticed within a second).
    deadline = time.monotonic() + 3
    while True:
        async with watching(api, token, "eu-de-1", since) as again:
            if again.status == 200:
                break
        assert time.monotonic() < deadline, "closed watches still count against the token"
        await asyncio.sleep(0.1)


async def test_a_watch_from_before_the_kept_history_is_told_to_list_again(
    api: Api, store: Store
) -> None:
    token = await register(api, "eu-de-1", "DE")
    await store.put(keys.assignment("eu-de-1", "a"), assignment("a", "eu-de-1"))
    latest = await store.put(keys.assignment("eu-de-1", "a"), assignment("a", "eu-de-1", 3))
    await store.compact(latest)
    async with watching(api, token, "eu-de-1", 0) as stream:
        assert stream.status == 200
        async with asyncio.timeout(3):
            await stream.ended.wait()
    # since=0 replays nothing once history is compacted: the agent lists instead.
    assert [line["type"] for line in stream.lines] == ["relist"]
    assert stream.lines[0]["reason"] == f"revision compacted up to {latest}"
    assert stream.lines[0]["compacted"] == latest
