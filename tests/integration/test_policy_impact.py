"""`PUT /v1/policies/{p}?dry_run=true`: the impact on deployed services, and no change."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from federation.store import Store
from tests.conftest import Api
from tests.integration.agents import EU_PATIENT_DATA, Federation, durable, running_federation


@pytest.fixture
async def federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    async with running_federation(api, store) as fed:
        yield fed


SPEC = {
    "command": ["true"],
    "replicas": 4,
    "data_classes": ["phi-eu"],
    "placement": {"min_regions": 2},
}


async def test_dry_run_lists_services_that_would_move_or_go_pending(
    federation: Federation, api: Api, store: Store
) -> None:
    await federation.deploy({"name": "records", **SPEC}, expect=201)
    await federation.deploy(
        {"name": "docs", "command": ["true"], "replicas": 2, "data_classes": ["public"]},
        expect=201,
    )
    await federation.wait_placed("records", {"eu-de-1": 2, "eu-fr-1": 2})
    await federation.wait_decided("docs")
    before, _ = await store.scan("")

    only_de = {**EU_PATIENT_DATA, "allow": ["DE"]}
    status, body = await api.call("PUT", "/v1/policies/eu-patient-data?dry_run=true", json=only_de)
    assert status == 200, body
    assert body["dry_run"] is True
    (moved,) = body["impact"]["services"]
    assert moved["service"] == "records"
    assert moved["from"] == {"eu-de-1": 2, "eu-fr-1": 2}
    assert set(moved["to"]) == {"eu-de-1"}
    assert moved["stopped_in"] == ["eu-fr-1"]
    assert body["impact"]["unaffected"] == 1  # the public docs site

    nowhere = {**EU_PATIENT_DATA, "allow": ["CH"]}  # no region in Switzerland
    status, body = await api.call("PUT", "/v1/policies/eu-patient-data?dry_run=true", json=nowhere)
    assert status == 200, body
    (pending,) = body["impact"]["services"]
    assert pending["outcome"] == "pending"
    assert pending["reason"] == "NoCompliantRegion"
    assert body["impact"]["pending"] == 1

    after, _ = await store.scan("")

    # Nothing written by the dry runs (heartbeats and leases aside).
    assert durable(after) == durable(before)
    await federation.wait_placed("records", {"eu-de-1": 2, "eu-fr-1": 2})
