"""`PUT /v1/services/{s}?dry_run=true` answers what would change and writes nothing; a
query parameter a route does not know is a 400 naming it, on every route, before any
write (it used to be ignored: `?dryrun=true` deployed for real)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from federation.store import Store
from tests.conftest import Api
from tests.integration.agents import Federation, durable, running_federation


@pytest.fixture
async def federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    async with running_federation(api, store) as fed:
        yield fed


RECORDS: dict[str, Any] = {
    "name": "records",
    "command": ["true"],
    "version": "1",
    "replicas": 4,
    "data_classes": ["phi-eu"],
    "placement": {"min_regions": 2},
}


async def test_dry_run_of_a_new_service_shows_its_placement_and_writes_nothing(
    federation: Federation, api: Api, store: Store
) -> None:
    before, revision = await store.scan("")
    status, body = await api.call("PUT", "/v1/services/records?dry_run=true", json=RECORDS)
    assert status == 200, body
    assert body["dry_run"] is True
    assert body["change"] == "create"
    assert body["placement"]["from"] == {}
    assert body["placement"]["to"] == {"eu-de-1": 2, "eu-fr-1": 2}
    outcomes = {row["region"]: (row["outcome"], row["allowed"]) for row in body["regions"]}
    assert outcomes["us-east-1"][1] is False and outcomes["ap-in-1"][1] is False
    assert all(row["residency"] for row in body["regions"] if not row["allowed"])
    assert body["rollout"] == [
        {"step": 1, "regions": ["eu-de-1", "eu-fr-1"], "action": "start", "waits_for": None}
    ]
    after, _ = await store.scan("")
    assert durable(after) == durable(before)
    status, _ = await api.call("GET", "/v1/services/records")
    assert status == 404
    # Not even the audit log moved.
    status, audit = await api.call("GET", "/v1/audit?since=0")
    assert status == 200
    assert not any("records" in str(e) for e in audit["items"]), revision


async def test_dry_run_of_an_update_shows_the_diff_and_the_rollout_steps(
    federation: Federation, api: Api, store: Store
) -> None:
    await federation.deploy(RECORDS, expect=201)
    await federation.wait_placed("records", {"eu-de-1": 2, "eu-fr-1": 2})
    before, _ = await store.scan("")
    update = {**RECORDS, "version": "2", "replicas": 6}
    status, body = await api.call("PUT", "/v1/services/records?dry_run=true", json=update)
    assert status == 200, body
    assert body["change"] == "update"
    assert body["generation"] == {"from": 1, "to": 2}
    assert {(c["field"], c["from"], c["to"]) for c in body["diff"]} == {
        ("version", "1", "2"),
        ("replicas", 4, 6),
    }
    assert body["placement"]["from"] == {"eu-de-1": 2, "eu-fr-1": 2}
    assert sum(body["placement"]["to"].values()) == 6
    # One region at a time (max_parallel_regions 1), each after the one before is ready.
    assert [s["regions"] for s in body["rollout"]] == [["eu-de-1"], ["eu-fr-1"]]
    assert body["rollout"][1]["waits_for"] == "the step before reports ready"
    after, _ = await store.scan("")
    assert durable(after) == durable(before)
    service = await federation.service("records")
    assert (service["version"], service["generation"]) == ("1", 1)

    # The same spec again: no change, no rollout.
    status, body = await api.call("PUT", "/v1/services/records?dry_run=true", json=RECORDS)
    assert (status, body["change"], body["diff"], body["rollout"]) == (200, "none", [], [])


async def test_dry_run_is_validated_and_checked_like_the_write(
    federation: Federation, api: Api, store: Store
) -> None:
    await federation.deploy(RECORDS, expect=201)
    bad = {**RECORDS, "replicas": -1}
    status, body = await api.call("PUT", "/v1/services/records?dry_run=true", json=bad)
    assert status == 422 and body["error"]["details"][0]["field"] == "replicas"
    unknown = {**RECORDS, "data_classes": ["phi-eu", "no-such-class"]}
    status, body = await api.call("PUT", "/v1/services/records?dry_run=true", json=unknown)
    assert status == 422, body
    # An If-Match the stored revision has moved past is the 409 the write would get.
    status, body = await api.call(
        "PUT", "/v1/services/records?dry_run=true", json=RECORDS, headers={"If-Match": '"1"'}
    )
    assert status == 409, body
    status, body = await api.call("PUT", "/v1/services/records?dry_run=maybe", json=RECORDS)
    assert status == 422 and body["error"]["details"][0]["field"] == "dry_run"


async def test_a_viewer_cannot_dry_run_a_deploy(federation: Federation, api: Api) -> None:
    status, body = await api.call("POST", "/v1/tokens", json={"role": "viewer"})
    assert status == 201, body
    status, _ = await api.call(
        "PUT", "/v1/services/records?dry_run=true", json=RECORDS, token=body["token"]
    )
    assert status == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/services/records?dryrun=true"),  # misspelt: used to deploy for real
        ("PUT", "/v1/services/records?dry_run=true&dry_run=false"),
        ("GET", "/v1/services?limit=10"),
        ("GET", "/v1/health?verbose=1"),
        ("DELETE", "/v1/services/records?force=true"),
        ("GET", "/v1/regions/eu-de-1/assignments?watch=true&since=1&from=2"),
    ],
)
async def test_unknown_or_repeated_query_parameters_are_refused_before_anything_runs(
    federation: Federation, api: Api, store: Store, method: str, path: str
) -> None:
    before, _ = await store.scan("")
    body_json = RECORDS if method == "PUT" else None
    status, body = await api.call(method, path, json=body_json)
    assert status == 400, body
    field = body["error"]["details"][0]["field"]
    assert field in path and field in body["error"]["message"]
    after, _ = await store.scan("")
    assert durable(after) == durable(before)


async def test_every_route_in_the_openapi_document_refuses_an_unknown_parameter(
    federation: Federation, api: Api, store: Store
) -> None:
    status, document = await api.call("GET", "/v1/openapi.json")
    assert status == 200
    before, _ = await store.scan("")
    refused = []
    for template, operations in document["paths"].items():
        path = template.replace("{", "").replace("}", "")  # every parameter a valid name
        for method in operations:
            status, body = await api.call(method.upper(), f"{path}?bogus=1", token=None)
            if status == 400 and body["error"]["details"][0]["field"] == "bogus":
                refused.append(f"{method} {template}")
            else:
                pytest.fail(f"{method} {template}: {status} {body}")
    assert len(refused) > 30
    after, _ = await store.scan("")
    assert durable(after) == durable(before)
