"""Groups: resolution at `now`, reference checks with suggestions, cycles, who refers to whom."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from federation.model.errors import (
    BuiltinGroupConflictError,
    GroupCycleError,
    UnknownGroupError,
)
from federation.model.jurisdictions import BUILTIN_GROUPS
from federation.model.policy import Group, Policy
from federation.residency.groups import (
    find_group_cycle,
    references_to_group,
    resolve,
    resolve_group,
    resolve_sources,
    suggest_group,
    validate_group,
    validate_references,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def groups(*defs: tuple[str, list[str]]) -> dict[str, Group]:
    return {name: Group(name=name, countries=members) for name, members in defs}


def policy(**fields: Any) -> Policy:
    return Policy.model_validate({"name": "p", "data_classes": ["x"], **fields})


def test_resolve_countries_and_groups() -> None:
    known = groups(("nordics", ["SE", "FI", "group:iceland"]), ("iceland", ["IS"]))
    assert resolve(["DE", "group:nordics"], known, NOW) == {"DE", "SE", "FI", "IS"}
    assert resolve_group("eea", known, NOW) == BUILTIN_GROUPS["eea"].countries(NOW)


def test_resolve_sources_names_the_first_entry_that_contains_a_country() -> None:
    sources = resolve_sources(["group:eea", "DE", "CH"], {}, NOW)
    assert sources["DE"] == "group:eea"
    assert sources["CH"] == "CH"


def test_unknown_group_suggests_the_closest_known_one() -> None:
    with pytest.raises(UnknownGroupError) as info:
        resolve(["group:eeaa"], {}, NOW)
    assert info.value.suggestion == "group:eea"
    assert str(info.value) == "unknown group 'group:eeaa'; did you mean 'group:eea'?"


def test_suggestions_include_admin_groups_and_are_not_wild() -> None:
    known = groups(("us-cloud-act", ["US"]))
    assert suggest_group("group:us-cloud-acts", known) == "group:us-cloud-act"
    assert suggest_group("group:mars", known) is None


def test_cycle_is_an_error_naming_the_path() -> None:
    known = groups(("a", ["group:b"]), ("b", ["DE", "group:a"]))
    with pytest.raises(GroupCycleError) as info:
        resolve_group("a", known, NOW)
    assert info.value.cycle == ["group:a", "group:b", "group:a"]
    assert find_group_cycle(known) == ["group:a", "group:b", "group:a"]


def test_self_reference_is_a_cycle() -> None:
    assert find_group_cycle(groups(("a", ["group:a"]))) == ["group:a", "group:a"]


def test_diamond_is_not_a_cycle() -> None:
    known = groups(("top", ["group:l", "group:r"]), ("l", ["group:base"]), ("r", ["group:base"]))
    known |= groups(("base", ["DE"]))
    assert find_group_cycle(known) is None
    assert resolve_group("top", known, NOW) == {"DE"}


def test_admin_group_shadowing_a_builtin_fails_closed() -> None:
    shadow = {"eu": Group.model_construct(name="eu", countries=["US"], description="")}
    with pytest.raises(BuiltinGroupConflictError):
        resolve(["group:eu"], shadow, NOW)


def test_validate_references_locates_each_unknown_group() -> None:
    p = policy(
        allow=["group:eeaa", "CH"],
        deny=["group:us-cloud-act"],
        exemptions=[
            {
                "service": "s",
                "allow": ["group:nope"],
                "expires": "2027-01-01T00:00:00Z",
                "reason": "r",
            }
        ],
    )
    problems = validate_references(p, {})
    assert [x.field for x in problems] == ["allow.0", "deny.0", "exemptions.0.allow.0"]
    assert problems[0].message == "unknown group 'group:eeaa'; did you mean 'group:eea'?"
    assert problems[0].suggestion == "group:eea"
    assert validate_references(p, groups(("us-cloud-act", ["US"]))) != []
    ok = groups(("us-cloud-act", ["US"]), ("nope", []), ("eeaa", []))
    assert validate_references(p, ok) == []


def test_validate_group_rejects_an_edit_that_creates_a_cycle() -> None:
    known = groups(("a", ["group:b"]), ("b", ["DE"]))
    problems = validate_group(Group(name="b", countries=["group:a"]), known)
    assert len(problems) == 1
    assert "group cycle: group:a -> group:b -> group:a" in problems[0].message
    assert validate_group(Group(name="b", countries=["FR"]), known) == []


def test_validate_group_reports_unknown_members() -> None:
    problems = validate_group(Group(name="g", countries=["DE", "group:eu", "group:nordix"]), {})
    assert [p.field for p in problems] == ["countries.2"]


def test_references_to_group_for_a_409_on_delete() -> None:
    known = groups(("us-cloud-act", ["US"]), ("wider", ["group:us-cloud-act", "CN"]), ("x", []))
    policies = [
        policy(name="eu-patient-data", deny=["group:us-cloud-act"]),
        policy(name="other", allow=["DE"]),
        policy(
            name="research",
            exemptions=[
                {
                    "service": "s",
                    "allow": ["group:us-cloud-act"],
                    "expires": "2027-01-01T00:00:00Z",
                    "reason": "r",
                }
            ],
        ),
    ]
    refs = references_to_group("us-cloud-act", policies=policies, groups=known)
    assert [str(r) for r in refs] == [
        "group wider (countries.0)",
        "policy eu-patient-data (deny.0)",
        "policy research (exemptions.0.allow.0)",
    ]
    assert references_to_group("x", policies=policies, groups=known) == []
