"""Evaluation API beyond the case table: group edits, unknown classes, empty classes, purity."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from federation.model.errors import UnknownDataClassError
from federation.model.policy import Group, Policy
from federation.residency.evaluate import (
    MalformedPolicy,
    bound_policies,
    check_data_classes,
    empty_data_classes,
    evaluate,
    unknown_data_classes,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Region:
    name: str
    country: str | None


def policy(name: str, classes: list[str], **fields: Any) -> Policy:
    return Policy.model_validate({"name": name, "data_classes": classes, **fields})


REGIONS = [Region("se-1", "SE"), Region("fi-1", "FI"), Region("de-1", "DE")]


def test_editing_a_group_changes_the_policies_that_use_it() -> None:
    policies = [policy("nordic", ["hr"], allow=["group:nordics"])]
    before = {"nordics": Group(name="nordics", countries=["SE", "FI"])}
    after = {"nordics": Group(name="nordics", countries=["SE", "DE"])}

    def allowed(groups: dict[str, Group]) -> list[str]:
        result = evaluate(
            data_classes=["hr"],
            service=None,
            regions=REGIONS,
            policies=policies,
            groups=groups,
            now=NOW,
        )
        return result.allowed_regions

    assert allowed(before) == ["fi-1", "se-1"]
    assert allowed(after) == ["de-1", "se-1"]


def test_evaluation_reports_bound_policies_and_the_time() -> None:
    policies = [
        policy("b-audit", ["x"], allow=["DE"], mode="audit"),
        policy("a", ["x", "y"], allow=["group:eu"]),
        policy("unrelated", ["z"]),
    ]
    result = evaluate(
        data_classes=["x", "x"],
        service="svc",
        regions=REGIONS,
        policies=policies,
        groups={},
        now=NOW,
    )
    assert result.bound_policies == ["a", "b-audit"]
    assert result.data_classes == ["x"]
    assert result.at == NOW
    assert result.service == "svc"
    assert result.unknown_data_classes == []
    assert {(f.policy, f.region) for f in result.audit_findings} == {
        ("b-audit", "se-1"),
        ("b-audit", "fi-1"),
    }


def test_reasons_read_like_sentences() -> None:
    policies = [
        policy("eu-patient-data", ["phi-eu"], allow=["group:eea", "CH"], deny=["RU"]),
    ]
    regions = [Region("us-east-1", "US"), Region("ru-1", "RU"), Region("de-1", "DE")]
    result = evaluate(
        data_classes=["phi-eu"],
        service=None,
        regions=regions,
        policies=policies,
        groups={},
        now=NOW,
    )
    reasons = {v.region: v.reasons for v in result.verdicts}
    assert reasons["us-east-1"] == [
        "policy eu-patient-data (enforce): country US (United States) is not in allow "
        "[group:eea, CH]"
    ]
    assert reasons["ru-1"] == [
        "policy eu-patient-data (enforce): country RU (Russian Federation) is denied by deny [RU]"
    ]
    assert reasons["de-1"] == [
        "policy eu-patient-data (enforce): country DE (Germany) is in allow [group:eea, CH] "
        "via group:eea; deny [RU] does not name it"
    ]


def test_verdicts_serialise_to_json_for_the_api() -> None:
    result = evaluate(
        data_classes=["public"], service=None, regions=REGIONS, policies=[], groups={}, now=NOW
    )
    body = result.model_dump(mode="json")
    assert body["verdicts"][0] == {
        "region": "de-1",
        "country": "DE",
        "allowed": True,
        "reasons": ["no enforce policy binds data classes [public]"],
    }


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(
            data_classes=[],
            service=None,
            regions=[],
            policies=[],
            groups={},
            now=datetime(2026, 1, 1),
        )


def test_check_data_classes_raises_with_suggestions() -> None:
    policies = [policy("eu-patient-data", ["phi-eu"]), policy("us-phi", ["phi-us"])]
    check_data_classes(["phi-eu", "public"], policies)
    with pytest.raises(UnknownDataClassError) as info:
        check_data_classes(["phi-euu", "zzz", "phi-us"], policies)
    assert info.value.data_classes == ["phi-euu", "zzz"]
    assert info.value.suggestions == {"phi-euu": "phi-eu"}
    assert "'phi-euu' (did you mean 'phi-eu'?)" in str(info.value)


def test_a_class_named_only_by_an_audit_policy_is_known() -> None:
    assert unknown_data_classes(["x"], [policy("a", ["x"], mode="audit")]) == []


def test_malformed_policy_of_unknown_scope_binds_every_class() -> None:
    broken = MalformedPolicy("broken", "bad json")
    assert bound_policies(["anything"], [broken]) == [broken]
    assert unknown_data_classes(["anything"], [broken]) == []


def test_disjoint_enforce_policies_leave_a_class_empty() -> None:
    policies = [
        policy("only-us", ["phi"], allow=["US"]),
        policy("only-eu", ["phi", "pii"], allow=["group:eu"]),
        policy("audit-de", ["pii"], allow=["US"], mode="audit"),
    ]
    warnings = empty_data_classes(policies, {}, NOW)
    assert [w.data_class for w in warnings] == ["phi"]
    assert warnings[0].policies == ["only-eu", "only-us"]
    assert "data class 'phi' has no allowed country" in warnings[0].message


def test_deny_covering_the_allow_list_leaves_a_class_empty() -> None:
    policies = [policy("p", ["x"], allow=["group:eu"]), policy("q", ["x"], deny=["group:eea"])]
    assert [w.data_class for w in empty_data_classes(policies, {}, NOW)] == ["x"]


def test_overlapping_policies_leave_no_warning() -> None:
    policies = [policy("p", ["x"], allow=["group:eea"]), policy("q", ["x"], allow=["DE", "US"])]
    assert empty_data_classes(policies, {}, NOW) == []


def test_an_unresolvable_policy_empties_its_classes_and_says_why() -> None:
    warnings = empty_data_classes([policy("p", ["x"], allow=["group:gone"])], {}, NOW)
    assert len(warnings) == 1
    assert "unknown group 'group:gone'" in warnings[0].message


def test_empty_classes_depend_on_now() -> None:
    policies = [policy("p", ["x"], allow=["group:eu-adequacy"]), policy("q", ["x"], allow=["BR"])]
    assert empty_data_classes(policies, {}, datetime(2026, 1, 1, tzinfo=UTC)) != []
    assert empty_data_classes(policies, {}, NOW) == []


FORBIDDEN_MODULES = {
    "asyncio", "aiohttp", "etcd3aio", "os", "pathlib", "random", "requests", "shutil",
    "socket", "subprocess", "time", "urllib", "federation.store", "federation.api",
}  # fmt: skip
FORBIDDEN_CALLS = {"now", "today", "utcnow", "open"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path",
    sorted(
        [*(ROOT / "federation/residency").glob("*.py"), ROOT / "federation/model/policy.py"],
        key=str,
    ),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_residency_is_pure(path: Path) -> None:
    """No I/O and no clock: the engine is a function of its arguments."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert not any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES), name
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert called not in FORBIDDEN_CALLS, f"{path}:{node.lineno} calls {called}()"
