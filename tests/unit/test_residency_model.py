"""Policy and Group models: static validation that an API turns into a 422 naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from federation.model.policy import Exemption, Group, Mode, Policy

EXEMPTION = {
    "service": "research-export",
    "allow": ["GB"],
    "expires": "2027-06-30T00:00:00Z",
    "reason": "ticket SEC-123",
}


def errors(model: type[Policy] | type[Group], data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in info.value.errors()}


def test_design_example_validates() -> None:
    policy = Policy.model_validate(
        {
            "name": "eu-patient-data",
            "data_classes": ["phi-eu"],
            "allow": ["group:eea", "CH"],
            "deny": ["group:us-cloud-act"],
            "mode": "enforce",
            "exemptions": [EXEMPTION],
        }
    )
    assert policy.mode is Mode.ENFORCE
    assert policy.exemptions[0].expires.utcoffset() is not None


def test_defaults() -> None:
    policy = Policy.model_validate({"name": "p", "data_classes": ["x"]})
    assert policy.allow == []
    assert policy.deny == []
    assert policy.mode is Mode.ENFORCE
    assert policy.exemptions == []


def test_ger_is_rejected_at_allow_0_with_a_suggestion() -> None:
    found = errors(Policy, {"name": "p", "data_classes": ["x"], "allow": ["GER"]})
    assert "did you mean 'DE'?" in found["allow.0"]


@pytest.mark.parametrize(("typed", "meant"), [("UK", "GB"), ("EL", "GR"), ("EU", "group:eu")])
def test_deny_codes_get_suggestions(typed: str, meant: str) -> None:
    found = errors(Policy, {"name": "p", "data_classes": ["x"], "deny": ["DE", typed]})
    assert f"did you mean {meant!r}?" in found["deny.1"]


def test_exemption_without_expires_is_rejected() -> None:
    exemption = {k: v for k, v in EXEMPTION.items() if k != "expires"}
    found = errors(Policy, {"name": "p", "data_classes": ["x"], "exemptions": [exemption]})
    assert "exemptions.0.expires" in found


def test_exemption_with_a_naive_expiry_is_rejected() -> None:
    exemption = {**EXEMPTION, "expires": "2027-06-30T00:00:00"}
    found = errors(Policy, {"name": "p", "data_classes": ["x"], "exemptions": [exemption]})
    assert "exemptions.0.expires" in found


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"allow": []}, "allow"),
        ({"reason": ""}, "reason"),
        ({"service": "Research_Export"}, "service"),
        ({"allow": ["XX"]}, "allow.0"),
    ],
)
def test_exemption_fields(patch: dict[str, Any], loc: str) -> None:
    with pytest.raises(ValidationError) as info:
        Exemption.model_validate({**EXEMPTION, **patch})
    assert loc in {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"name": "p", "data_classes": []}, "data_classes"),
        ({"name": "p"}, "data_classes"),
        ({"name": "P", "data_classes": ["x"]}, "name"),
        ({"name": "p", "data_classes": ["PHI EU"]}, "data_classes.0"),
        ({"name": "p", "data_classes": ["x"], "mode": "warn"}, "mode"),
        ({"name": "p", "data_classes": ["x"], "priority": 1}, "priority"),
        ({"name": "p", "data_classes": ["x"], "allow": ["group:EEA"]}, "allow.0"),
    ],
)
def test_policy_field_errors(data: dict[str, Any], loc: str) -> None:
    assert loc in errors(Policy, data)


def test_group_with_countries_and_group_refs() -> None:
    group = Group.model_validate({"name": "eea-ch", "countries": ["group:eea", "CH"]})
    assert group.description == ""


@pytest.mark.parametrize("name", ["eu", "eea", "eu-adequacy"])
def test_group_name_may_not_collide_with_a_builtin(name: str) -> None:
    assert "reserved for a built-in group" in errors(Group, {"name": name, "countries": []})["name"]


def test_group_member_codes_are_validated() -> None:
    found = errors(Group, {"name": "g", "countries": ["DE", "GER"]})
    assert "did you mean 'DE'?" in found["countries.1"]


def test_policy_round_trips_through_json() -> None:
    policy = Policy.model_validate(
        {"name": "p", "data_classes": ["x"], "allow": ["DE"], "exemptions": [EXEMPTION]}
    )
    assert Policy.model_validate_json(policy.model_dump_json()) == policy
