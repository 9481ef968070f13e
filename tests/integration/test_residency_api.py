"""Residency API over real HTTP and a real etcd: policies, groups, evaluation, auth, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from federation.store import Store, keys
from tests.conftest import Api

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"

EU_PATIENT_DATA = {
    "name": "eu-patient-data",
    "data_classes": ["phi-eu"],
    "allow": ["group:eea", "CH"],
    "mode": "enforce",
}


async def put(api: Api, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    return await api.call("PUT", path, json=body, **kwargs)


async def put_ok(api: Api, path: str, body: Any) -> dict[str, Any]:
    status, answer = await put(api, path, body)
    assert status in (200, 201), answer
    assert isinstance(answer, dict)
    return answer


async def residency_keys(store: Store) -> list[tuple[str, int]]:
    found = []
    for prefix in (keys.POLICIES, keys.GROUPS, keys.RESIDENCY_FENCE):
        entries, _ = await store.scan(prefix)
        found += [(e.key, e.revision) for e in entries]
    return found


def error_fields(answer: Any) -> list[str]:
    return [d["field"] for d in answer["error"]["details"]]


# -- policies -------------------------------------------------------------------------


async def test_policy_round_trip_keeps_fields_and_revision(api: Api) -> None:
    status, created = await put(api, "/v1/policies/eu-patient-data", EU_PATIENT_DATA)
    assert status == 201, created
    assert created["created"] is True
    assert created["warnings"] == []

    status, body = await api.call("GET", "/v1/policies/eu-patient-data")
    assert status == 200
    assert body["revision"] == created["revision"]
    assert {k: body[k] for k in EU_PATIENT_DATA} == EU_PATIENT_DATA
    assert body["deny"] == [] and body["exemptions"] == []
    assert body["revision"] > 0

    # The ETag is the revision, so a client can use it for If-Match directly.
    resp = await api.session.get(
        api.url + "/v1/policies/eu-patient-data",
        headers={"Authorization": f"Bearer {api.admin_token}"},
    )
    assert resp.headers["ETag"] == f'"{body["revision"]}"'
    resp.release()

    status, updated = await put(
        api,
        "/v1/policies/eu-patient-data",
        {**EU_PATIENT_DATA, "deny": ["DE"]},
        headers={"If-Match": str(body["revision"])},
    )
    assert status == 200, updated
    assert updated["created"] is False
    assert updated["revision"] > body["revision"]

    status, listing = await api.call("GET", "/v1/policies")
    assert status == 200
    assert [p["name"] for p in listing["items"]] == ["eu-patient-data"]
    assert listing["items"][0]["deny"] == ["DE"]
    assert listing["items"][0]["revision"] == updated["revision"]
    assert listing["revision"] >= updated["revision"]


async def test_stale_if_match_is_409_and_changes_nothing(api: Api) -> None:
    first = await put_ok(api, "/v1/policies/eu-patient-data", EU_PATIENT_DATA)
    await put_ok(api, "/v1/policies/eu-patient-data", {**EU_PATIENT_DATA, "allow": ["DE"]})
    status, body = await put(
        api,
        "/v1/policies/eu-patient-data",
        {**EU_PATIENT_DATA, "allow": ["FR"]},
        headers={"If-Match": str(first["revision"])},
    )
    assert status == 409, body
    assert body["error"]["code"] == "conflict"
    _, current = await api.call("GET", "/v1/policies/eu-patient-data")
    assert current["allow"] == ["DE"]

    status, _ = await api.call(
        "DELETE", "/v1/policies/eu-patient-data", headers={"If-Match": str(first["revision"])}
    )
    assert status == 409
    # If-Match: 0 means "create only".
    status, _ = await put(
        api, "/v1/policies/eu-patient-data", EU_PATIENT_DATA, headers={"If-Match": "0"}
    )
    assert status == 409
    status, body = await api.call(
        "DELETE", "/v1/policies/eu-patient-data", headers={"If-Match": str(current["revision"])}
    )
    assert status == 200, body
    status, _ = await api.call("GET", "/v1/policies/eu-patient-data")
    assert status == 404


async def test_unknown_country_is_422_naming_the_field_with_a_suggestion(
    api: Api, store: Store
) -> None:
    before = await residency_keys(store)
    status, body = await put(
        api, "/v1/policies/eu-patient-data", {**EU_PATIENT_DATA, "allow": ["GER"]}
    )
    assert status == 422, body
    detail = body["error"]["details"][0]
    assert detail["field"] == "allow.0"
    assert "did you mean 'DE'?" in detail["message"]
    assert detail["suggestion"] == "DE"
    assert body["error"]["message"].startswith("allow.0: ")
    assert await residency_keys(store) == before


async def test_unknown_group_is_422_with_a_suggestion(api: Api) -> None:
    status, body = await put(
        api,
        "/v1/policies/eu-patient-data",
        {**EU_PATIENT_DATA, "deny": ["DE", "group:eeaa"]},
    )
    assert status == 422, body
    detail = body["error"]["details"][0]
    assert detail["field"] == "deny.1"
    assert detail["suggestion"] == "group:eea"
    assert "did you mean 'group:eea'?" in body["error"]["message"]


async def test_body_name_must_match_the_path(api: Api) -> None:
    status, body = await put(api, "/v1/policies/other", EU_PATIENT_DATA)
    assert status == 422
    assert error_fields(body) == ["name"]


async def test_yaml_body_is_accepted(api: Api) -> None:
    text = (EXAMPLES / "eu-patient-data.yaml").read_text()
    status, body = await api.call(
        "PUT",
        "/v1/policies/eu-patient-data",
        data=text,
        headers={"Content-Type": "application/yaml"},
    )
    assert status == 201, body
    assert body["allow"] == ["group:eea", "CH"]


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"null", "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"name: [unclosed", "application/yaml"),
        (b"- a\n- b\n", "application/yaml"),
        (b"a: 1\n---\nb: 2\n", "application/yaml"),
        (b'{"data_classes": "phi-eu"}', "application/json"),
        (b'{"data_classes": ["phi-eu"], "allow": [1]}', "application/json"),
        (b'{"data_classes": ["phi-eu"], "allow": {"DE": 1}}', "application/json"),
        (b'{"data_classes": ["phi-eu"], "mode": "strict"}', "application/json"),
        (b'{"data_classes": ["phi-eu"], "kind": "group"}', "application/json"),
        (b'{"data_classes": ["phi-eu"], "exemptions": [{"service": "x"}]}', "application/json"),
        (b'{"data_classes": [], "colour": "red"}', "application/json"),
    ],
)
async def test_malformed_policy_body_is_4xx_never_500(
    api: Api, raw: bytes, content_type: str
) -> None:
    status, body = await api.call(
        "PUT", "/v1/policies/p", data=raw, headers={"Content-Type": content_type}
    )
    assert status in (400, 422), body
    assert set(body["error"]) == {"code", "message", "details"}


async def test_dry_run_validates_and_writes_nothing(api: Api, store: Store) -> None:
    await put_ok(api, "/v1/policies/eu-only", {"data_classes": ["phi"], "allow": ["group:eu"]})
    before = await residency_keys(store)
    status, body = await put(
        api, "/v1/policies/us-only?dry_run=true", {"data_classes": ["phi"], "allow": ["US"]}
    )
    assert status == 200, body
    assert body["dry_run"] is True
    assert body["created"] is True
    assert body["revision"] is None
    assert any("'phi'" in w for w in body["warnings"])
    assert await residency_keys(store) == before
    status, _ = await api.call("GET", "/v1/policies/us-only")
    assert status == 404

    status, body = await put(
        api, "/v1/policies/us-only?dry_run=true", {"data_classes": ["phi"], "allow": ["GER"]}
    )
    assert status == 422
    status, body = await put(
        api, "/v1/policies/us-only?dry_run=maybe", {"data_classes": ["phi"], "allow": ["US"]}
    )
    assert status == 422
    assert error_fields(body) == ["dry_run"]
    assert await residency_keys(store) == before


async def test_disjoint_policies_are_accepted_with_a_warning_naming_the_class(api: Api) -> None:
    body = await put_ok(api, "/v1/policies/de-only", {"data_classes": ["records"], "allow": ["DE"]})
    assert body["warnings"] == []
    status, body = await put(
        api, "/v1/policies/fr-only", {"data_classes": ["records"], "allow": ["FR"]}
    )
    assert status == 201, body
    assert len(body["warnings"]) == 1
    assert "data class 'records' has no allowed country" in body["warnings"][0]
    assert "de-only, fr-only" in body["warnings"][0]
    status, _ = await api.call("GET", "/v1/policies/fr-only")
    assert status == 200


async def test_malformed_stored_policy_is_listed_and_fails_closed(api: Api, store: Store) -> None:
    await register_regions(api, [("eu-de-1", "DE")])
    await put_ok(api, "/v1/policies/eu-patient-data", EU_PATIENT_DATA)
    # Written behind the API's back: an etcd restore from an old version, a manual edit.
    await store.put(
        keys.policy("broken"), {"name": "broken", "data_classes": ["phi-eu"]} | {"allow": ["XX"]}
    )
    status, listing = await api.call("GET", "/v1/policies")
    assert status == 200
    broken = next(p for p in listing["items"] if p["name"] == "broken")
    assert broken["malformed"] is True
    assert "XX" in broken["error"]
    status, body = await api.call(
        "POST", "/v1/residency/evaluate", json={"data_classes": ["phi-eu"]}
    )
    assert status == 200, body
    (verdict,) = body["regions"]
    assert verdict["allowed"] is False
    assert any("policy broken" in r and "malformed" in r for r in verdict["reasons"])


# -- groups ---------------------------------------------------------------------------


async def test_builtin_groups_are_listed_and_cannot_be_written(api: Api) -> None:
    status, listing = await api.call("GET", "/v1/groups")
    assert status == 200
    builtins = {g["name"]: g for g in listing["items"] if g["builtin"]}
    assert set(builtins) == {"eu", "eea", "eu-adequacy"}
    assert len(builtins["eu"]["countries"]) == 27
    assert {"IS", "LI", "NO"} < set(builtins["eea"]["countries"])
    assert "CH" in builtins["eu-adequacy"]["countries"]
    status, body = await put(api, "/v1/groups/eu", {"countries": ["DE"]})
    assert status == 422, body
    assert "built in" in body["error"]["message"]
    status, body = await api.call("DELETE", "/v1/groups/eea")
    assert status == 422, body
    status, body = await api.call("GET", "/v1/groups/eu")
    assert status == 200 and body["builtin"] is True


async def test_group_round_trip_unknown_members_and_cycles(api: Api) -> None:
    status, body = await put(api, "/v1/groups/us-cloud-act", {"countries": ["US"]})
    assert status == 201, body
    status, got = await api.call("GET", "/v1/groups/us-cloud-act")
    assert status == 200
    assert got["countries"] == ["US"] and got["builtin"] is False
    assert got["revision"] == body["revision"]

    status, body = await put(api, "/v1/groups/a", {"countries": ["group:nope"]})
    assert status == 422
    assert error_fields(body) == ["countries.0"]
    status, body = await put(api, "/v1/groups/a", {"countries": ["UK"]})
    assert status == 422
    assert body["error"]["details"][0]["suggestion"] == "GB"

    await put_ok(api, "/v1/groups/a", {"countries": ["DE"]})
    await put_ok(api, "/v1/groups/b", {"countries": ["group:a"]})
    status, body = await put(api, "/v1/groups/a", {"countries": ["group:b"]})
    assert status == 422, body
    assert "group cycle" in body["error"]["message"]


async def test_referenced_group_cannot_be_deleted_until_the_policy_is_gone(api: Api) -> None:
    await put_ok(api, "/v1/groups/us-cloud-act", {"countries": ["US"]})
    await put_ok(api, "/v1/groups/wider", {"countries": ["group:us-cloud-act", "CN"]})
    await put_ok(
        api, "/v1/policies/eu-patient-data", {**EU_PATIENT_DATA, "deny": ["group:us-cloud-act"]}
    )
    status, body = await api.call("DELETE", "/v1/groups/us-cloud-act")
    assert status == 409, body
    message = body["error"]["message"]
    assert "policy eu-patient-data (deny.0)" in message
    assert "group wider (countries.0)" in message

    status, _ = await api.call("DELETE", "/v1/policies/eu-patient-data")
    assert status == 200
    status, _ = await api.call("DELETE", "/v1/groups/wider")
    assert status == 200
    status, body = await api.call("DELETE", "/v1/groups/us-cloud-act")
    assert status == 200, body
    status, _ = await api.call("GET", "/v1/groups/us-cloud-act")
    assert status == 404
    status, _ = await api.call("DELETE", "/v1/groups/us-cloud-act")
    assert status == 404


async def test_a_write_based_on_a_stale_snapshot_is_retried_not_lost(
    api: Api, store: Store
) -> None:
    # The fence: a write committed with an old fence revision must fail, not apply.
    from federation.model.policy import Group
    from federation.store import policies as store_policies

    snap = await store_policies.snapshot(store)
    await put_ok(api, "/v1/groups/a", {"countries": ["DE"]})
    with pytest.raises(store_policies.FenceMoved):
        await store_policies.write_group(
            store, Group(name="b", countries=["FR"]), snap, if_match=None
        )
    assert await store.get(keys.group("b")) is None


# -- evaluation -----------------------------------------------------------------------


async def register_regions(api: Api, regions: list[tuple[str, str]]) -> None:
    for name, country in regions:
        status, body = await api.call(
            "POST", "/v1/regions", json={"name": name, "country": country}
        )
        assert status == 201, body


DEMO = [("eu-de-1", "DE"), ("eu-fr-1", "FR"), ("us-east-1", "US"), ("in-mum-1", "IN")]


async def test_evaluate_phi_eu_over_the_demo_regions(api: Api) -> None:
    await register_regions(api, DEMO)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        await put_ok(api, f"/v1/policies/{doc['name']}", doc)
    status, body = await api.call(
        "POST", "/v1/residency/evaluate", json={"data_classes": ["phi-eu"]}
    )
    assert status == 200, body
    verdicts = {v["region"]: v for v in body["regions"]}
    assert {r: v["allowed"] for r, v in verdicts.items()} == {
        "eu-de-1": True,
        "eu-fr-1": True,
        "in-mum-1": False,
        "us-east-1": False,
    }
    assert verdicts["eu-de-1"]["country"] == "DE"
    for region in ("us-east-1", "in-mum-1"):
        (reason,) = verdicts[region]["reasons"]
        assert "policy eu-patient-data (enforce)" in reason
        assert "is not in allow [group:eea, CH]" in reason
    assert body["bound_policies"] == ["eu-patient-data"]
    assert body["data_classes"] == ["phi-eu"]
    assert body["warnings"] == []
    assert body["audit_findings"] == []

    # Public data: nothing restricts it; the audit policy reports what it would block.
    status, body = await api.call("POST", "/v1/residency/evaluate", json={"data_classes": []})
    assert status == 200
    assert all(v["allowed"] for v in body["regions"])
    assert [(f["policy"], f["region"]) for f in body["audit_findings"]] == [
        ("public-audit", "in-mum-1")
    ]


async def test_evaluate_honours_exemptions_for_the_service_and_at(api: Api) -> None:
    await register_regions(api, [("uk-lon-1", "GB")])
    exemption = {
        "service": "research-export",
        "allow": ["GB"],
        "expires": "2027-06-30T00:00:00Z",
        "reason": "ticket SEC-123",
    }
    await put_ok(
        api, "/v1/policies/eu-patient-data", {**EU_PATIENT_DATA, "exemptions": [exemption]}
    )

    async def allowed(**extra: Any) -> bool:
        status, body = await api.call(
            "POST", "/v1/residency/evaluate", json={"data_classes": ["phi-eu"], **extra}
        )
        assert status == 200, body
        return bool(body["regions"][0]["allowed"])

    assert await allowed(service="research-export", at="2027-06-29T23:59:59Z")
    assert not await allowed(service="research-export", at="2027-06-30T00:00:00Z")
    assert not await allowed(service="other", at="2027-01-01T00:00:00Z")
    assert not await allowed(at="2027-01-01T00:00:00Z")


async def test_evaluate_unknown_data_class_is_422_with_a_suggestion(api: Api) -> None:
    await put_ok(api, "/v1/policies/eu-patient-data", EU_PATIENT_DATA)
    status, body = await api.call(
        "POST", "/v1/residency/evaluate", json={"data_classes": ["public", "phi-euu"]}
    )
    assert status == 422, body
    (detail,) = body["error"]["details"]
    assert detail["field"] == "data_classes.1"
    assert detail["suggestion"] == "phi-eu"
    assert "did you mean 'phi-eu'?" in body["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"data_classes": "phi-eu"},
        {"data_classes": [1]},
        {"data_classes": ["PHI"]},
        {"data_classes": [], "at": "2026-01-01T00:00:00"},
        {"data_classes": [], "at": "yesterday"},
        {"data_classes": [], "service": "Bad Name"},
        {"data_classes": [], "extra": 1},
        [],
    ],
)
async def test_evaluate_bad_body_is_4xx(api: Api, body: Any) -> None:
    status, answer = await api.call("POST", "/v1/residency/evaluate", json=body)
    assert status in (400, 422), answer
    assert set(answer["error"]) == {"code", "message", "details"}


async def test_evaluate_warns_when_a_class_has_no_country(api: Api) -> None:
    await register_regions(api, [("eu-de-1", "DE")])
    await put_ok(api, "/v1/policies/eu-only", {"data_classes": ["phi"], "allow": ["group:eu"]})
    await put_ok(api, "/v1/policies/us-only", {"data_classes": ["phi"], "allow": ["US"]})
    status, body = await api.call("POST", "/v1/residency/evaluate", json={"data_classes": ["phi"]})
    assert status == 200
    assert any("data class 'phi' has no allowed country" in w for w in body["warnings"])
    assert not body["regions"][0]["allowed"]


# -- auth -----------------------------------------------------------------------------


async def test_viewer_reads_and_evaluates_but_cannot_write(api: Api) -> None:
    await register_regions(api, DEMO)
    await put_ok(api, "/v1/policies/eu-patient-data", EU_PATIENT_DATA)
    await put_ok(api, "/v1/groups/us-cloud-act", {"countries": ["US"]})
    status, body = await api.call("POST", "/v1/tokens", json={"role": "viewer"})
    assert status == 201, body
    viewer = body["token"]

    for path in (
        "/v1/policies",
        "/v1/policies/eu-patient-data",
        "/v1/groups",
        "/v1/groups/us-cloud-act",
    ):
        status, _ = await api.call("GET", path, token=viewer)
        assert status == 200, path
    status, body = await api.call(
        "POST", "/v1/residency/evaluate", token=viewer, json={"data_classes": ["phi-eu"]}
    )
    assert status == 200, body

    status, body = await put(api, "/v1/policies/eu-patient-data", EU_PATIENT_DATA, token=viewer)
    assert status == 403, body
    status, _ = await put(api, "/v1/groups/x", {"countries": ["DE"]}, token=viewer)
    assert status == 403
    status, _ = await api.call("DELETE", "/v1/policies/eu-patient-data", token=viewer)
    assert status == 403
    status, _ = await api.call("DELETE", "/v1/groups/us-cloud-act", token=viewer)
    assert status == 403
    status, _ = await api.call("GET", "/v1/policies", token=None)
    assert status == 401


async def test_invalid_names_in_the_path_are_422(api: Api) -> None:
    status, body = await api.call("GET", "/v1/policies/Bad_Name")
    assert status == 422
    assert error_fields(body) == ["policy"]
    status, body = await put(api, "/v1/groups/Bad_Name", {"countries": []})
    assert status == 422
    assert error_fields(body) == ["group"]
