"""Region registry over real HTTP and a real etcd: registration, liveness, auth, bad input."""

from __future__ import annotations

import asyncio
import time

import pytest

from federation.model.region import Heartbeat
from federation.store import Store
from federation.store import heartbeats as store_heartbeats
from tests.conftest import Api, lose_answers


async def wait_for_leader(store: Store) -> None:
    for _ in range(100):
        if await store.get_raw("leader"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no leader elected")


async def written(store: Store) -> dict[str, int]:
    """Every key under the test's prefix with its mod_revision: equal twice, nothing
    was put or deleted meanwhile (etcd's own revision also counts other tests' keys)."""
    entries, _ = await store.scan("")
    return {e.key: e.revision for e in entries}


async def register(api: Api, name: str = "eu-de-1", country: str = "DE") -> str:
    status, body = await api.call("POST", "/v1/regions", json={"name": name, "country": country})
    assert status == 201, body
    return str(body["token"])


async def region_state(api: Api, name: str) -> str:
    status, body = await api.call("GET", f"/v1/regions/{name}")
    assert status == 200, body
    return str(body["state"])


async def test_register_then_heartbeats_keep_the_region_ready(api: Api) -> None:
    token = await register(api)
    assert await region_state(api, "eu-de-1") == "unreachable"  # never heard from
    beat = {"capacity": {"cpu": 8, "memory_mb": 16384}}
    for _ in range(6):  # 3 s of beats at 0.5 s, beyond the 2 s TTL
        status, body = await api.call(
            "POST", "/v1/regions/eu-de-1/heartbeat", token=token, json=beat
        )
        assert status == 200, body
        await asyncio.sleep(0.5)
        assert await region_state(api, "eu-de-1") == "ready"
    status, body = await api.call("GET", "/v1/regions/eu-de-1")
    assert body["country"] == "DE"
    assert body["capacity"] == {"cpu": 8.0, "memory_mb": 16384}
    assert body["last_heartbeat"] is not None


async def test_an_unchanged_heartbeat_writes_nothing_but_keeps_the_region_ready(
    api: Api, store: Store
) -> None:
    token = await register(api)
    beat = {"capacity": {"cpu": 8, "memory_mb": 16384}, "allocated": {"cpu": 1, "memory_mb": 64}}
    path = "/v1/regions/eu-de-1/heartbeat"
    status, body = await api.call("POST", path, token=token, json=beat)
    assert status == 200, body
    await asyncio.sleep(0.3)  # the mirror has the record the next beats compare with
    start = await written(store)
    record = await store.get("heartbeats/eu-de-1")
    assert record is not None
    _, first = await api.call("GET", "/v1/regions/eu-de-1")
    for _ in range(6):  # 3 s of beats at 0.5 s, beyond the 2 s TTL
        status, body = await api.call("POST", path, token=token, json=beat)
        assert status == 200, body
        await asyncio.sleep(0.5)
    assert await written(store) == start  # the keep-alive is not a write
    _, later = await api.call("GET", "/v1/regions/eu-de-1")
    assert later["state"] == "ready"
    # When it was last heard from still moves: the server that served the beats knows.
    assert later["last_heartbeat"] > first["last_heartbeat"]
    # A changed claim is written.
    more = {**beat, "allocated": {"cpu": 2, "memory_mb": 128}}
    status, body = await api.call("POST", path, token=token, json=more)
    assert status == 200, body
    after = await store.get("heartbeats/eu-de-1")
    assert after is not None and after.revision > record.revision
    assert after.value["allocated"] == {"cpu": 2.0, "memory_mb": 128}


async def test_a_liveness_key_gone_while_its_lease_lives_is_made_again(
    api: Api, store: Store
) -> None:
    """The server keeps alive the lease it last used without reading the liveness key,
    but only while its mirror holds that key as it was: a key deleted under a live
    lease (by hand, or a region deleted and registered again elsewhere) is made again
    by the next beat, not left gone behind a lease kept alive for nothing."""
    token = await register(api)
    path = "/v1/regions/eu-de-1/heartbeat"
    for _ in range(2):
        status, body = await api.call("POST", path, token=token, json={})
        assert status == 200, body
        await asyncio.sleep(0.2)
    alive = await store.get("alive/eu-de-1")
    assert alive is not None and alive.lease
    await store.delete("alive/eu-de-1")  # the lease itself lives on
    await asyncio.sleep(0.3)  # the mirror has seen the delete
    status, body = await api.call("POST", path, token=token, json={})
    assert status == 200, body
    assert body["result"] == "region became reachable: new liveness lease"
    assert await region_state(api, "eu-de-1") == "ready"


async def test_silent_region_becomes_unreachable_within_ttl_plus_one_second(api: Api) -> None:
    token = await register(api)
    status, _ = await api.call("POST", "/v1/regions/eu-de-1/heartbeat", token=token, json={})
    assert status == 200
    silent_since = time.monotonic()
    assert await region_state(api, "eu-de-1") == "ready"
    while await region_state(api, "eu-de-1") == "ready":
        assert time.monotonic() - silent_since < api.config.region_ttl + 1, "still ready"
        await asyncio.sleep(0.1)
    assert await region_state(api, "eu-de-1") == "unreachable"
    # The last heartbeat outlives the lease, so operators see when it was last heard.
    _, body = await api.call("GET", "/v1/regions/eu-de-1")
    assert body["last_heartbeat"] is not None


async def test_a_first_heartbeat_whose_answer_was_lost_keeps_the_region_ready(
    api: Api, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(api)
    lose_answers(store, monkeypatch, 1)
    # Sent again, the liveness create fails (the key exists): on this heartbeat's own
    # lease it is recognised, not revoked, which would delete the key it just made.
    said = await store_heartbeats.heartbeat(store, "eu-de-1", Heartbeat(), ttl=2)
    assert said == "region became reachable: new liveness lease"
    alive = await store.get("alive/eu-de-1")
    assert alive is not None and alive.lease
    assert await region_state(api, "eu-de-1") == "ready"


async def test_list_shows_every_region_with_a_revision(api: Api) -> None:
    await register(api, "eu-de-1", "DE")
    await register(api, "us-east-1", "US")
    status, body = await api.call("GET", "/v1/regions")
    assert status == 200
    assert [(r["name"], r["country"]) for r in body["items"]] == [
        ("eu-de-1", "DE"),
        ("us-east-1", "US"),
    ]
    assert body["revision"] > 0


async def test_duplicate_region_is_409(api: Api) -> None:
    await register(api)
    status, body = await api.call("POST", "/v1/regions", json={"name": "eu-de-1", "country": "FR"})
    assert status == 409, body
    _, region = await api.call("GET", "/v1/regions/eu-de-1")
    assert region["country"] == "DE"  # name stays bound to its first country


async def test_region_token_cannot_heartbeat_for_another_region(api: Api) -> None:
    de = await register(api, "eu-de-1", "DE")
    await register(api, "eu-fr-1", "FR")
    status, body = await api.call("POST", "/v1/regions/eu-fr-1/heartbeat", token=de, json={})
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    assert await region_state(api, "eu-fr-1") == "unreachable"


async def test_region_token_cannot_act_as_operator(api: Api) -> None:
    de = await register(api, "eu-de-1", "DE")
    status, _ = await api.call("POST", "/v1/regions/eu-de-1/cordon", token=de)
    assert status == 403


async def test_no_token_is_401_and_unknown_token_is_401(api: Api) -> None:
    status, body = await api.call("GET", "/v1/regions", token=None)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    status, _ = await api.call("GET", "/v1/regions", token="fed_not-a-real-token")
    assert status == 401


async def test_viewer_can_read_but_cannot_create_regions(api: Api) -> None:
    status, body = await api.call("POST", "/v1/tokens", json={"role": "viewer"})
    assert status == 201, body
    viewer = body["token"]
    status, _ = await api.call("GET", "/v1/regions", token=viewer)
    assert status == 200
    status, body = await api.call(
        "POST", "/v1/regions", token=viewer, json={"name": "eu-de-1", "country": "DE"}
    )
    assert status == 403
    _, listing = await api.call("GET", "/v1/regions")
    assert listing["items"] == []


async def test_expired_token_is_rejected(api: Api, store: Store) -> None:
    status, body = await api.call("POST", "/v1/tokens", json={"role": "viewer", "ttl_s": 60})
    assert status == 201
    # Age the stored record rather than wait a minute.
    from federation.model.token import hash_secret
    from federation.store import keys

    entry = await store.get(keys.token(hash_secret(body["token"])))
    assert entry is not None
    await store.put(entry.key, {**entry.value, "expires_at": "2020-01-01T00:00:00Z"})
    status, _ = await api.call("GET", "/v1/regions", token=body["token"])
    assert status == 401


async def test_cordon_and_uncordon(api: Api) -> None:
    token = await register(api)
    await api.call("POST", "/v1/regions/eu-de-1/heartbeat", token=token, json={})
    status, body = await api.call(
        "POST", "/v1/regions/eu-de-1/cordon", json={"reason": "maintenance"}
    )
    assert status == 200
    assert body["state"] == "cordoned"
    assert body["cordon"]["reason"] == "maintenance"
    status, body = await api.call("POST", "/v1/regions/eu-de-1/uncordon")
    assert status == 200
    assert body["state"] == "ready"


async def test_stale_if_match_is_409(api: Api) -> None:
    await register(api)
    _, body = await api.call("GET", "/v1/regions/eu-de-1")
    stale = body["revision"]
    await api.call("POST", "/v1/regions/eu-de-1/cordon")
    status, body = await api.call(
        "POST", "/v1/regions/eu-de-1/uncordon", headers={"If-Match": str(stale)}
    )
    assert status == 409
    assert await region_state(api, "eu-de-1") in ("cordoned", "unreachable")
    _, region = await api.call("GET", "/v1/regions/eu-de-1")
    assert region["cordoned"] is True


async def test_delete_removes_region_and_its_token(api: Api) -> None:
    token = await register(api)
    status, _ = await api.call("DELETE", "/v1/regions/eu-de-1")
    assert status == 200
    status, _ = await api.call("GET", "/v1/regions/eu-de-1")
    assert status == 404
    status, _ = await api.call("POST", "/v1/regions/eu-de-1/heartbeat", token=token, json={})
    assert status == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "EU-DE-1", "country": "DE"}, "name"),
        ({"name": "a/b", "country": "DE"}, "name"),
        ({"name": "a" * 64, "country": "DE"}, "name"),
        ({"name": "-de", "country": "DE"}, "name"),
        ({"name": "eu-de-1", "country": "XX"}, "country"),
        ({"name": "eu-de-1", "country": "GER"}, "country"),
        ({"name": 42, "country": "DE"}, "name"),
        ({"name": "eu-de-1", "country": ["DE"]}, "country"),
        ({"name": "eu-de-1", "country": "DE", "labels": "x"}, "labels"),
        ({"name": "eu-de-1", "country": "DE", "labels": {"Bad Key": "v"}}, "labels.Bad Key"),
        ({"name": "eu-de-1", "country": "DE", "colour": "red"}, "colour"),
        ({"country": "DE"}, "name"),
    ],
    ids=[
        "uppercase",
        "slash",
        "64-chars",
        "leading-dash",
        "country-XX",
        "country-GER",
        "name-int",
        "country-list",
        "labels-string",
        "label-key",
        "unknown-field",
        "missing-name",
    ],
)
async def test_bad_region_is_422_naming_the_field_and_etcd_is_unchanged(
    api: Api, store: Store, body: dict[str, object], field: str
) -> None:
    await wait_for_leader(store)  # the election writes its own key; let it settle first
    before, _ = await store.scan("")
    status, answer = await api.call("POST", "/v1/regions", json=body)
    assert status == 422, answer
    fields = [d["field"] for d in answer["error"]["details"]]
    assert field in fields, answer
    assert field in answer["error"]["message"] or len(fields) > 1
    after, _ = await store.scan("")
    assert [(e.key, e.revision) for e in after] == [(e.key, e.revision) for e in before]


async def test_unknown_country_suggests_the_iso_code(api: Api) -> None:
    status, body = await api.call("POST", "/v1/regions", json={"name": "r1", "country": "UK"})
    assert status == 422
    assert "GB" in body["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"a string"', b"null", b"", b"\xff\xfe"],
    ids=["broken", "array", "string", "null", "empty", "binary"],
)
async def test_malformed_body_is_4xx_never_500(api: Api, raw: bytes) -> None:
    status, body = await api.call(
        "POST", "/v1/regions", data=raw, headers={"Content-Type": "application/json"}
    )
    assert status in (400, 422), body
    assert set(body["error"]) == {"code", "message", "details"}


async def test_invalid_name_in_path_is_422(api: Api) -> None:
    status, body = await api.call("GET", "/v1/regions/EU_DE")
    assert status == 422
    assert body["error"]["details"][0]["field"] == "region"


async def test_oversized_body_is_413(api: Api) -> None:
    big = b'{"name": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    status, body = await api.call(
        "POST", "/v1/regions", data=big, headers={"Content-Type": "application/json"}
    )
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"


async def test_yaml_body_is_accepted(api: Api) -> None:
    status, body = await api.call(
        "POST",
        "/v1/regions",
        data="name: eu-fr-1\ncountry: FR\nlabels: {zone: par}\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert status == 201, body
    assert body["region"]["labels"] == {"zone": "par"}
