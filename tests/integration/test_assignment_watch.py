"""The assignment watch an agent relies on: NDJSON, resumable, re-lists when told to."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from federation.model.service import Assignment, Runtime, ServiceSpec
from federation.store import Store, keys
from tests.conftest import Api


def assignment(service: str, region: str, replicas: int = 1) -> dict[str, Any]:
    spec = ServiceSpec.model_validate({"name": service, "command": ["true"]})
    return Assignment(
        service=service, region=region, replicas=replicas, runtime=Runtime.of(spec, 1)
    ).model_dump(mode="json")


async def register(api: Api, name: str, country: str) -> str:
    status, body = await api.call("POST", "/v1/regions", json={"name": name, "country": country})
    assert status == 201, body
    return str(body["token"])


async def read_lines(
    api: Api, token: str, path: str, count: int, timeout: float = 5
) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(api.url + path, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        async with asyncio.timeout(timeout):
            async for raw in resp.content:
                if raw.strip():
                    lines.append(json.loads(raw))
                if len(lines) >= count:
                    break
    return lines


async def test_list_then_watch_from_its_revision_misses_nothing(api: Api, store: Store) -> None:
    token = await register(api, "eu-de-1", "DE")
    await store.put(keys.assignment("eu-de-1", "a"), assignment("a", "eu-de-1"))
    status, listing = await api.call("GET", "/v1/regions/eu-de-1/assignments", token=token)
    assert status == 200
    assert [i["service"] for i in listing["items"]] == ["a"]
    assert listing["items"][0]["epoch"] > 0
    since = listing["revision"]
    # Changes made after the list, before the watch opens, must still arrive.
    await store.put(keys.assignment("eu-de-1", "b"), assignment("b", "eu-de-1", 2))
    await store.delete(keys.assignment("eu-de-1", "a"))
    await store.put(keys.assignment("eu-fr-1", "c"), assignment("c", "eu-fr-1"))  # not ours
    lines = await read_lines(
        api, token, f"/v1/regions/eu-de-1/assignments?watch=true&since={since}", 2
    )
    assert [(line["type"], line["service"]) for line in lines] == [("put", "b"), ("delete", "a")]
    assert lines[0]["assignment"]["replicas"] == 2
    assert lines[0]["assignment"]["epoch"] == lines[0]["revision"]


async def test_resuming_from_the_last_revision_gets_only_what_came_after(
    api: Api, store: Store
) -> None:
    token = await register(api, "eu-de-1", "DE")
    first = await store.put(keys.assignment("eu-de-1", "a"), assignment("a", "eu-de-1"))
    await store.put(keys.assignment("eu-de-1", "b"), assignment("b", "eu-de-1"))
    lines = await read_lines(
        api, token, f"/v1/regions/eu-de-1/assignments?watch=true&since={first}", 1
    )
    assert [line["service"] for line in lines] == ["b"]


async def test_a_compacted_revision_tells_the_agent_to_list_again(api: Api, store: Store) -> None:
    token = await register(api, "eu-de-1", "DE")
    old = await store.put(keys.assignment("eu-de-1", "a"), assignment("a", "eu-de-1"))
    latest = await store.put(keys.assignment("eu-de-1", "a"), assignment("a", "eu-de-1", 3))
    await store.compact(latest)
    lines = await read_lines(
        api, token, f"/v1/regions/eu-de-1/assignments?watch=true&since={old - 1}", 1
    )
    assert lines[0]["type"] == "relist"


async def test_another_regions_token_cannot_read_or_report(api: Api) -> None:
    await register(api, "eu-de-1", "DE")
    fr = await register(api, "eu-fr-1", "FR")
    status, _ = await api.call("GET", "/v1/regions/eu-de-1/assignments", token=fr)
    assert status == 403
    status, _ = await api.call(
        "GET", "/v1/regions/eu-de-1/assignments?watch=true&since=1", token=fr
    )
    assert status == 403
    status, _ = await api.call(
        "PUT", "/v1/regions/eu-de-1/status", token=fr, json={"instances": []}
    )
    assert status == 403


async def test_watch_needs_a_since_revision(api: Api) -> None:
    token = await register(api, "eu-de-1", "DE")
    status, body = await api.call("GET", "/v1/regions/eu-de-1/assignments?watch=true", token=token)
    assert status == 400
    assert body["error"]["details"][0]["field"] == "since"
