"""Services API over real HTTP and a real etcd, with the controller running: deploy,
validation, explain, residency-bound scheduling outcomes, delete.

The four demo regions (DE, FR, US, IN) are played by the test (see `agents.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from federation.store import Store, keys
from tests.conftest import Api
from tests.integration.agents import Federation, condition, running_federation

EU = {"eu-de-1", "eu-fr-1"}

PATIENT_RECORDS: dict[str, Any] = {
    "name": "patient-records",
    "command": ["python", "-m", "http.server", "{port}"],
    "version": "1",
    "replicas": 6,
    "data_classes": ["phi-eu"],
    "placement": {"min_regions": 2, "max_per_region": 4},
}


@pytest.fixture
async def federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    async with running_federation(api, store) as fed:
        yield fed


def error_fields(answer: Any) -> list[str]:
    return [d["field"] for d in answer["error"]["details"]]


async def service_keys(store: Store) -> list[tuple[str, int]]:
    found = []
    for prefix in (keys.SERVICES, keys.PLACEMENTS, keys.ASSIGNMENTS):
        entries, _ = await store.scan(prefix)
        found += [(e.key, e.revision) for e in entries]
    return found


# -- deploy ----------------------------------------------------------------------------


async def test_phi_eu_service_lands_only_in_de_and_fr_and_runs_once_reported_ready(
    federation: Federation,
) -> None:
    created = await federation.deploy(PATIENT_RECORDS, expect=201)
    assert created["generation"] == 1

    await federation.wait_placed("patient-records", {"eu-de-1": 3, "eu-fr-1": 3})
    body = await federation.service("patient-records")
    status = body["status"]
    assert set(status["placements"]) == EU  # never us-east-1 or ap-in-1
    assert {r: p["desired"] for r, p in status["placements"].items()} == {
        "eu-de-1": 3,
        "eu-fr-1": 3,
    }
    assert all(p["version"] == "1" and p["ready"] == 0 for p in status["placements"].values())
    assert status["phase"] == "Progressing"
    assert status["replicas"] == {"desired": 6, "ready": 0}
    assert condition(body, "Scheduled") == {
        "type": "Scheduled",
        "reason": "Placed",
        "message": "6 replicas in 2 region(s)",
    }

    # Evidence: the policy and the revision it was decided under, the countries.
    _, policy = await federation.api.call("GET", "/v1/policies/eu-patient-data")
    residency = status["residency"]
    assert residency["policies"] == {"eu-patient-data": policy["revision"]}
    assert residency["countries"] == {"eu-de-1": "DE", "eu-fr-1": "FR"}
    assert residency["allowed_regions"] == ["eu-de-1", "eu-fr-1"]
    assert residency["compliant"] is True

    # Only one region ready: still progressing.
    await federation.report("eu-de-1")
    body = await federation.wait_phase("patient-records", "Progressing")
    assert body["status"]["placements"]["eu-de-1"]["ready"] == 3
    await federation.report("eu-fr-1")
    body = await federation.wait_phase("patient-records", "Running")
    assert body["status"]["replicas"] == {"desired": 6, "ready": 6}
    assert {r: p["ready"] for r, p in body["status"]["placements"].items()} == {
        "eu-de-1": 3,
        "eu-fr-1": 3,
    }

    status_code, listing = await federation.api.call("GET", "/v1/services")
    assert status_code == 200
    assert [s["name"] for s in listing["items"]] == ["patient-records"]
    assert listing["items"][0]["status"]["phase"] == "Running"
    assert listing["revision"] > 0


# -- PUT semantics and validation ------------------------------------------------------


async def test_same_spec_twice_is_200_and_keeps_the_generation(federation: Federation) -> None:
    first = await federation.deploy(PATIENT_RECORDS, expect=201)
    second = await federation.deploy(PATIENT_RECORDS, expect=200)
    assert second["generation"] == first["generation"] == 1
    assert second["revision"] == first["revision"]
    changed = await federation.deploy({**PATIENT_RECORDS, "replicas": 4}, expect=200)
    assert changed["generation"] == 2
    assert changed["revision"] > first["revision"]


async def test_stale_if_match_is_409_and_current_one_applies(federation: Federation) -> None:
    api = federation.api
    first = await federation.deploy(PATIENT_RECORDS, expect=201)
    await federation.deploy({**PATIENT_RECORDS, "replicas": 4})
    status, body = await api.call(
        "PUT",
        "/v1/services/patient-records",
        json={**PATIENT_RECORDS, "replicas": 2},
        headers={"If-Match": str(first["revision"])},
    )
    assert status == 409, body
    assert body["error"]["code"] == "conflict"
    current = await federation.service("patient-records")
    assert current["replicas"] == 4
    status, body = await api.call(
        "PUT",
        "/v1/services/patient-records",
        json={**PATIENT_RECORDS, "replicas": 2},
        headers={"If-Match": str(current["revision"])},
    )
    assert status == 200, body
    assert body["replicas"] == 2


async def test_a_spec_change_not_yet_acted_on_shows_progressing(
    federation: Federation,
) -> None:
    await federation.deploy(PATIENT_RECORDS)
    await federation.wait_placed("patient-records", {"eu-de-1": 3, "eu-fr-1": 3})
    for region in ("eu-de-1", "eu-fr-1"):
        await federation.report(region)
    await federation.wait_phase("patient-records", "Running")

    # The PUT answers before the controller places the new generation: a scale-up is
    # not a Degraded service, a scale to zero is not Running while replicas remain.
    for replicas, final in [(8, "Progressing"), (0, "Running")]:
        body = await federation.deploy({**PATIENT_RECORDS, "replicas": replicas})
        if body["status"]["observed_generation"] < body["generation"]:
            assert body["status"]["phase"] == "Progressing", body["status"]
        body = await federation.wait_decided("patient-records", body["generation"])
        assert body["status"]["phase"] == final, body["status"]
    assert await federation.assignments("patient-records") == {}


async def test_multi_region_service_has_no_survivability_condition(
    federation: Federation,
) -> None:
    await federation.deploy(PATIENT_RECORDS)
    body = await federation.wait_decided("patient-records")
    assert condition(body, "Survivability") is None
    _, explained = await federation.api.call("GET", "/v1/services/patient-records/explain")
    assert explained["conditions"] == []


async def test_stale_if_match_on_delete_is_409(federation: Federation) -> None:
    first = await federation.deploy(PATIENT_RECORDS)
    await federation.deploy({**PATIENT_RECORDS, "replicas": 4})
    status, body = await federation.api.call(
        "DELETE", "/v1/services/patient-records", headers={"If-Match": str(first["revision"])}
    )
    assert status == 409, body
    assert (await federation.service("patient-records"))["replicas"] == 4


async def test_yaml_body_is_accepted(federation: Federation) -> None:
    status, body = await federation.api.call(
        "PUT",
        "/v1/services/patient-records",
        data=yaml.safe_dump(PATIENT_RECORDS),
        headers={"Content-Type": "application/yaml"},
    )
    assert status == 201, body
    assert body["replicas"] == 6 and body["data_classes"] == ["phi-eu"]
    await federation.wait_placed("patient-records", {"eu-de-1": 3, "eu-fr-1": 3})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "other-name"}, "name"),
        ({"data_classes": ["phi-eu-typo"]}, "data_classes.0"),
        ({"replicas": -1}, "replicas"),
        ({"resources": {"cpu": 0}}, "resources.cpu"),
        ({"colour": "red"}, "colour"),
        ({"placement": {"min_regions": 0}}, "placement.min_regions"),
        ({"rollout": {"progress_deadline_s": 0}}, "rollout.progress_deadline_s"),
        ({"data_classes": ["phi-eu", "NOT A NAME"]}, "data_classes.1"),
    ],
    ids=[
        "name-mismatch",
        "unknown-data-class",
        "replicas-negative",
        "cpu-zero",
        "unknown-field",
        "min-regions-zero",
        "deadline-zero",
        "bad-data-class-name",
    ],
)
async def test_bad_service_is_422_naming_the_field_and_nothing_is_stored(
    federation: Federation, change: dict[str, Any], field: str
) -> None:
    before = await service_keys(federation.store)
    status, answer = await federation.api.call(
        "PUT", "/v1/services/patient-records", json={**PATIENT_RECORDS, **change}
    )
    assert status == 422, answer
    assert field in error_fields(answer), answer
    assert answer["error"]["message"].startswith(field), answer
    assert await service_keys(federation.store) == before == []
    status, _ = await federation.api.call("GET", "/v1/services/patient-records")
    assert status == 404


async def test_unknown_data_class_message_says_no_policy_names_it(
    federation: Federation,
) -> None:
    status, answer = await federation.api.call(
        "PUT",
        "/v1/services/patient-records",
        json={**PATIENT_RECORDS, "data_classes": ["public", "phi-eu", "phi-euu"]},
    )
    assert status == 422, answer
    assert error_fields(answer) == ["data_classes.2"]
    assert "phi-euu" in answer["error"]["message"]


async def test_a_data_class_is_known_exactly_while_a_policy_names_it(
    federation: Federation,
) -> None:
    # The server keeps the policies it parsed for these checks: a policy written or
    # deleted must count at once.
    labs = {**PATIENT_RECORDS, "name": "labs", "data_classes": ["lab-results"]}
    call = federation.api.call
    policy = {"data_classes": ["lab-results"], "allow": ["DE"]}
    status, body = await call("PUT", "/v1/policies/labs", json=policy)
    assert status == 201, body
    status, body = await call("PUT", "/v1/services/labs", json=labs)
    assert status == 201, body
    status, body = await call("DELETE", "/v1/services/labs")
    assert status == 200, body
    status, body = await call("DELETE", "/v1/policies/labs")
    assert status == 200, body
    status, answer = await call("PUT", "/v1/services/labs", json=labs)
    assert status == 422, answer
    assert error_fields(answer) == ["data_classes.0"]
    status, body = await call("PUT", "/v1/policies/labs", json=policy)
    assert status == 201, body
    status, body = await call("PUT", "/v1/services/labs", json=labs)
    assert status == 201, body


async def test_neither_command_nor_image_is_422(federation: Federation) -> None:
    spec = {k: v for k, v in PATIENT_RECORDS.items() if k != "command"}
    status, answer = await federation.api.call("PUT", "/v1/services/patient-records", json=spec)
    assert status == 422, answer
    assert "command" in answer["error"]["message"] and "image" in answer["error"]["message"]
    assert await service_keys(federation.store) == []


async def test_viewer_cannot_deploy_but_can_read(federation: Federation) -> None:
    api = federation.api
    status, body = await api.call("POST", "/v1/tokens", json={"role": "viewer"})
    assert status == 201, body
    viewer = body["token"]
    status, body = await api.call(
        "PUT", "/v1/services/patient-records", token=viewer, json=PATIENT_RECORDS
    )
    assert status == 403, body
    assert await service_keys(federation.store) == []
    await federation.deploy(PATIENT_RECORDS)
    status, body = await api.call("GET", "/v1/services/patient-records", token=viewer)
    assert status == 200 and body["name"] == "patient-records"
    status, _ = await api.call("DELETE", "/v1/services/patient-records", token=viewer)
    assert status == 403
    status, _ = await api.call("POST", "/v1/services/patient-records/rebalance", token=viewer)
    assert status == 403


async def test_unknown_service_is_404_everywhere(federation: Federation) -> None:
    api = federation.api
    for method, path in [
        ("GET", "/v1/services/nope"),
        ("GET", "/v1/services/nope/explain"),
        ("DELETE", "/v1/services/nope"),
        ("POST", "/v1/services/nope/rebalance"),
    ]:
        status, body = await api.call(method, path)
        assert status == 404, (method, path, body)
        assert body["error"]["code"] == "not_found"
    assert await service_keys(federation.store) == []


# -- explain ---------------------------------------------------------------------------


async def explain(federation: Federation, service: str) -> dict[str, dict[str, Any]]:
    status, body = await federation.api.call("GET", f"/v1/services/{service}/explain")
    assert status == 200, body
    return {r["region"]: r for r in body["regions"]}


async def test_explain_lists_every_region_with_why(federation: Federation) -> None:
    await federation.deploy({**PATIENT_RECORDS, "replicas": 2, "placement": {"min_regions": 1}})
    status, body = await federation.api.call("GET", "/v1/services/patient-records/explain")
    assert status == 200, body
    assert body["bound_policies"] == ["eu-patient-data"]
    regions = {r["region"]: r for r in body["regions"]}
    assert set(regions) == {"eu-de-1", "eu-fr-1", "us-east-1", "ap-in-1"}
    for name in ("us-east-1", "ap-in-1"):
        assert regions[name]["outcome"] == "rejected"
        assert regions[name]["allowed"] is False
        assert any("eu-patient-data" in why for why in regions[name]["reasons"]), regions[name]
    assert regions["us-east-1"]["country"] == "US"
    for name in ("eu-de-1", "eu-fr-1"):
        assert regions[name]["allowed"] is True
        assert regions[name]["outcome"] in ("chosen", "eligible")
    assert sum(r["replicas"] for r in regions.values()) == 2

    # A cordoned region and a silent one are rejected for what they are.
    status, _ = await federation.api.call("POST", "/v1/regions/eu-de-1/cordon")
    assert status == 200
    await federation.stop_heartbeats("eu-fr-1")
    await federation.wait_state("eu-fr-1", "unreachable", timeout=4)
    regions = await explain(federation, "patient-records")
    assert regions["eu-de-1"]["outcome"] == "rejected"
    assert any("cordoned" in why for why in regions["eu-de-1"]["reasons"]), regions["eu-de-1"]
    assert regions["eu-fr-1"]["outcome"] in ("rejected", "kept")
    assert any("unreachable" in why for why in regions["eu-fr-1"]["reasons"]), regions["eu-fr-1"]
    # Residency still rejects US and IN for the policy, not for their state.
    assert any("eu-patient-data" in why for why in regions["us-east-1"]["reasons"])


# -- nowhere to go: residency is never traded for availability --------------------------


async def test_de_only_service_with_de_cordoned_is_pending_no_compliant_region(
    federation: Federation,
) -> None:
    api = federation.api
    status, body = await api.call(
        "PUT",
        "/v1/policies/de-only",
        json={"name": "de-only", "data_classes": ["de-only"], "allow": ["DE"]},
    )
    assert status == 201, body
    status, _ = await api.call("POST", "/v1/regions/eu-de-1/cordon")
    assert status == 200
    await federation.deploy(
        {
            "name": "tax-records",
            "command": ["sleep", "1000"],
            "replicas": 2,
            "data_classes": ["de-only"],
        }
    )

    body = await federation.wait_decided("tax-records")
    assert body["status"]["phase"] == "Pending"
    scheduled = condition(body, "Scheduled")
    assert scheduled is not None and scheduled["reason"] == "NoCompliantRegion", scheduled
    assert "eu-de-1" in scheduled["message"]
    assert body["status"]["placements"] == {}
    assert await federation.assignments("tax-records") == {}
    # Still nothing elsewhere a few passes later, although FR, US and IN have room.
    for _ in range(5):
        await federation.beat("eu-fr-1")
        assert await federation.assignments("tax-records") == {}
    regions = await explain(federation, "tax-records")
    assert regions["eu-de-1"]["reasons"] == ["cordoned"]
    # Residency confines it to one region: it could not survive losing it.
    survivability = condition(body, "Survivability")
    assert survivability is not None, body
    assert survivability["reason"] == "NoCompliantFailoverRegion"
    assert "eu-de-1" in survivability["message"]
    _, explained = await api.call("GET", "/v1/services/tax-records/explain")
    assert [c["reason"] for c in explained["conditions"]] == ["NoCompliantFailoverRegion"]

    # Uncordoning DE places it there, and only there.
    status, _ = await api.call("POST", "/v1/regions/eu-de-1/uncordon")
    assert status == 200
    await federation.wait_placed("tax-records", {"eu-de-1": 2})


async def test_too_little_capacity_is_insufficient_capacity_and_nothing_outside_the_eu(
    federation: Federation,
) -> None:
    # 8 cpu per region: one 5-cpu replica fits in each of DE and FR, the third nowhere.
    await federation.deploy(
        {**PATIENT_RECORDS, "replicas": 3, "resources": {"cpu": 5, "memory_mb": 256}}
    )
    await federation.wait_placed("patient-records", {"eu-de-1": 1, "eu-fr-1": 1})
    body = await federation.wait_phase("patient-records", "Degraded")
    scheduled = condition(body, "Scheduled")
    assert scheduled is not None and scheduled["reason"] == "InsufficientCapacity", scheduled
    assert "2 of 3" in scheduled["message"]
    assert set(body["status"]["placements"]) == EU
    regions = await explain(federation, "patient-records")
    assert regions["us-east-1"]["outcome"] == "rejected"  # room, but residency says no

    # A replica that fits nowhere leaves the service Pending with the same reason.
    await federation.deploy(
        {
            **PATIENT_RECORDS,
            "name": "too-big",
            "replicas": 1,
            "resources": {"cpu": 16, "memory_mb": 256},
        }
    )
    body = await federation.wait_decided("too-big")
    assert body["status"]["phase"] == "Pending"
    scheduled = condition(body, "Scheduled")
    assert scheduled is not None and scheduled["reason"] == "InsufficientCapacity", scheduled
    assert await federation.assignments("too-big") == {}
    regions = await explain(federation, "too-big")
    assert any("insufficient capacity" in w for w in regions["eu-de-1"]["reasons"])


# -- delete ----------------------------------------------------------------------------


async def test_delete_removes_service_placement_and_assignments(
    federation: Federation, store: Store, api: Api
) -> None:
    await federation.deploy(PATIENT_RECORDS)
    await federation.wait_placed("patient-records", {"eu-de-1": 3, "eu-fr-1": 3})
    status, body = await api.call("DELETE", "/v1/services/patient-records")
    assert status == 200, body
    assert body == {"name": "patient-records", "deleted": True}
    assert await service_keys(store) == []
    status, _ = await api.call("GET", "/v1/services/patient-records")
    assert status == 404
    # And the controller does not bring anything back.
    for region in ("eu-de-1", "eu-fr-1"):
        await federation.report(region)
    for _ in range(10):
        await asyncio.sleep(0.1)
        assert await service_keys(store) == []
    _, listing = await api.call("GET", "/v1/services")
    assert listing["items"] == []
    status, _ = await api.call("DELETE", "/v1/services/patient-records")
    assert status == 404


async def test_explain_counts_what_other_services_hold(federation: Federation) -> None:
    only_de = {"command": ["true"], "placement": {"regions": ["eu-de-1"]}}
    await federation.deploy({"name": "big", **only_de, "resources": {"cpu": 5}})
    await federation.wait_placed("big", {"eu-de-1": 1})
    await federation.deploy({"name": "second", **only_de, "resources": {"cpu": 5}})
    await federation.wait_decided("second")
    regions = await explain(federation, "second")
    # DE offers 8 cpu and `big` holds 5 of them.
    assert regions["eu-de-1"]["outcome"] == "rejected"
    assert any("insufficient capacity" in r for r in regions["eu-de-1"]["reasons"])
    assert (await explain(federation, "big"))["eu-de-1"]["outcome"] == "chosen"
