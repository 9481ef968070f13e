"""Named residency cases: the hard ones, each a row a reviewer can read (DESIGN section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from federation.model.policy import Group, Policy
from federation.residency.evaluate import Evaluation, MalformedPolicy, evaluate


@dataclass(frozen=True)
class Region:
    name: str
    country: str | None


@dataclass(frozen=True)
class Case:
    id: str
    policies: list[dict[str, Any] | MalformedPolicy]
    data_classes: list[str]
    regions: dict[str, str | None]
    allowed: set[str]
    now: str = "2026-03-01T12:00:00Z"
    service: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    # region -> a substring that must appear in one of its reasons
    reasons: dict[str, str] = field(default_factory=dict)
    # (policy, region) pairs audit-mode policies must report
    findings: set[tuple[str, str]] = field(default_factory=set)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def policy(name: str, classes: list[str], **fields: Any) -> dict[str, Any]:
    return {"name": name, "data_classes": classes, **fields}


EXPIRES = "2027-06-30T00:00:00Z"
RESEARCH = {"service": "research-export", "allow": ["GB"], "expires": EXPIRES, "reason": "SEC-123"}
EU_PATIENT = policy("eu-patient-data", ["phi-eu"], allow=["group:eea", "CH"])
ADEQUACY = policy("adequacy", ["personal"], allow=["group:eu-adequacy"])

CASES = [
    Case(
        "deny-inside-an-allowed-group",
        [policy("eu-not-fr", ["phi-eu"], allow=["group:eu"], deny=["FR"])],
        ["phi-eu"],
        {"de-1": "DE", "fr-1": "FR"},
        {"de-1"},
        reasons={"fr-1": "is denied by deny [FR]", "de-1": "via group:eu"},
    ),
    Case(
        "two-policies-on-one-service-intersect",
        [EU_PATIENT, policy("german-hospitals", ["phi-eu"], allow=["DE", "US"])],
        ["phi-eu"],
        {"de-1": "DE", "fr-1": "FR", "us-1": "US"},
        {"de-1"},
        reasons={
            "us-1": "policy eu-patient-data (enforce): country US",
            "fr-1": "german-hospitals",
        },
    ),
    Case(
        "two-policies-with-disjoint-allow-lists-allow-nothing",
        [policy("only-us", ["x"], allow=["US"]), policy("only-de", ["x"], allow=["DE"])],
        ["x"],
        {"de-1": "DE", "us-1": "US"},
        set(),
    ),
    Case(
        "exemption-not-admitted-on-its-expiry-second",
        [{**EU_PATIENT, "exemptions": [RESEARCH]}],
        ["phi-eu"],
        {"gb-1": "GB", "de-1": "DE"},
        {"de-1"},
        now=EXPIRES,
        service="research-export",
        reasons={"gb-1": "expired at 2027-06-30T00:00:00Z"},
    ),
    Case(
        "exemption-admitted-one-second-before-expiry",
        [{**EU_PATIENT, "exemptions": [RESEARCH]}],
        ["phi-eu"],
        {"gb-1": "GB", "de-1": "DE"},
        {"gb-1", "de-1"},
        now=(at(EXPIRES) - timedelta(seconds=1)).isoformat(),
        service="research-export",
        reasons={"gb-1": "allowed by exemption for service research-export until 2027-06-30"},
    ),
    Case(
        "exemption-does-not-apply-to-another-service",
        [{**EU_PATIENT, "exemptions": [RESEARCH]}],
        ["phi-eu"],
        {"gb-1": "GB"},
        set(),
        service="patient-records",
    ),
    Case(
        "exemption-does-not-apply-without-a-service",
        [{**EU_PATIENT, "exemptions": [RESEARCH]}],
        ["phi-eu"],
        {"gb-1": "GB"},
        set(),
    ),
    Case(
        "deny-wins-over-an-exemption",
        [{**EU_PATIENT, "deny": ["GB"], "exemptions": [RESEARCH]}],
        ["phi-eu"],
        {"gb-1": "GB"},
        set(),
        service="research-export",
        reasons={"gb-1": "deny wins over the exemption for service research-export"},
    ),
    Case(
        "exemption-relaxes-only-its-own-policy",
        [
            {**EU_PATIENT, "exemptions": [RESEARCH]},
            policy("eu-only", ["phi-eu"], allow=["group:eu"]),
        ],
        ["phi-eu"],
        {"gb-1": "GB", "de-1": "DE"},
        {"de-1"},
        service="research-export",
        reasons={"gb-1": "policy eu-only (enforce): country GB"},
    ),
    Case(
        "admin-group-is-resolved-at-evaluation-time",
        [policy("nordic", ["hr"], allow=["group:nordics"])],
        ["hr"],
        {"se-1": "SE", "fi-1": "FI", "is-1": "IS"},
        {"se-1", "is-1"},
        # `nordics` as edited after the policy was written: FI was removed.
        groups=[{"name": "nordics", "countries": ["SE", "IS", "DK", "NO"]}],
        reasons={"se-1": "via group:nordics"},
    ),
    Case(
        "admin-group-nesting-a-builtin-group",
        [policy("eea-plus-ch", ["hr"], allow=["group:eea-ch"])],
        ["hr"],
        {"ch-1": "CH", "no-1": "NO", "gb-1": "GB"},
        {"ch-1", "no-1"},
        groups=[{"name": "eea-ch", "countries": ["group:eea", "CH"]}],
    ),
    Case(
        "service-with-two-data-classes-is-bound-by-both",
        [EU_PATIENT, policy("de-only", ["de-only"], allow=["DE"])],
        ["phi-eu", "de-only"],
        {"de-1": "DE", "at-1": "AT", "ch-1": "CH"},
        {"de-1"},
    ),
    Case(
        "a-policy-on-another-class-does-not-bind",
        [EU_PATIENT, policy("us-phi", ["phi-us"], allow=["US"])],
        ["phi-eu"],
        {"de-1": "DE", "us-1": "US"},
        {"de-1"},
    ),
    Case(
        "region-with-no-country-is-rejected-fail-closed",
        [EU_PATIENT],
        ["phi-eu"],
        {"de-1": "DE", "lost-1": None},
        {"de-1"},
        reasons={"lost-1": "no country"},
    ),
    Case(
        "region-with-a-non-iso-country-is-rejected-fail-closed",
        [],
        ["public"],
        {"uk-1": "UK", "gb-1": "GB"},
        {"gb-1"},
        reasons={"uk-1": "not an ISO 3166-1 alpha-2 code"},
    ),
    Case(
        "public-needs-no-policy",
        [],
        ["public"],
        {"us-1": "US", "cn-1": "CN"},
        {"us-1", "cn-1"},
        reasons={"us-1": "no enforce policy binds"},
    ),
    Case(
        "no-data-classes-counts-as-public",
        [policy("public-not-kp", ["public"], deny=["KP"])],
        [],
        {"us-1": "US", "kp-1": "KP"},
        {"us-1"},
    ),
    Case(
        "public-plus-a-regulated-class-is-bound-by-the-regulated-one",
        [EU_PATIENT],
        ["public", "phi-eu"],
        {"de-1": "DE", "us-1": "US"},
        {"de-1"},
    ),
    Case(
        "unknown-data-class-rejects-everything-with-a-suggestion",
        [EU_PATIENT],
        ["phi-euu"],
        {"de-1": "DE"},
        set(),
        reasons={"de-1": "did you mean 'phi-eu'?"},
    ),
    Case(
        "ch-is-not-in-the-eea",
        [policy("eea", ["x"], allow=["group:eea"])],
        ["x"],
        {"ch-1": "CH", "li-1": "LI"},
        {"li-1"},
    ),
    Case(
        "fo-is-not-dk",
        [policy("eu", ["x"], allow=["group:eu"], deny=["FO"])],
        ["x"],
        {"dk-1": "DK", "fo-1": "FO"},
        {"dk-1"},
    ),
    Case(
        "denying-dk-does-not-deny-fo-or-gl",
        [policy("no-dk", ["x"], deny=["DK"])],
        ["x"],
        {"dk-1": "DK", "fo-1": "FO", "gl-1": "GL"},
        {"fo-1", "gl-1"},
    ),
    Case(
        "gl-is-not-eu",
        [policy("eu", ["x"], allow=["group:eu"])],
        ["x"],
        {"gl-1": "GL"},
        set(),
    ),
    Case(
        "crown-dependencies-are-not-gb",
        [policy("no-gb", ["x"], deny=["GB"])],
        ["x"],
        {"gb-1": "GB", "gg-1": "GG", "je-1": "JE", "im-1": "IM"},
        {"gg-1", "je-1", "im-1"},
    ),
    Case(
        "fo-and-crown-dependencies-are-adequate-in-their-own-right",
        [ADEQUACY],
        ["personal"],
        {"fo-1": "FO", "gg-1": "GG", "je-1": "JE", "im-1": "IM", "gl-1": "GL"},
        {"fo-1", "gg-1", "je-1", "im-1"},
    ),
    Case(
        "gb-not-adequate-the-day-before-the-2021-decision",
        [ADEQUACY],
        ["personal"],
        {"gb-1": "GB"},
        set(),
        now="2021-06-27T23:59:59Z",
    ),
    Case(
        "gb-adequate-under-the-2021-decision",
        [ADEQUACY],
        ["personal"],
        {"gb-1": "GB"},
        {"gb-1"},
        now="2021-06-28T00:00:00Z",
    ),
    Case(
        "gb-adequate-during-the-2025-extension",
        [ADEQUACY],
        ["personal"],
        {"gb-1": "GB"},
        {"gb-1"},
        now="2025-09-01T00:00:00Z",
    ),
    Case(
        "gb-adequate-after-the-december-2025-renewal",
        [ADEQUACY],
        ["personal"],
        {"gb-1": "GB"},
        {"gb-1"},
        now="2026-06-01T00:00:00Z",
    ),
    Case(
        "gb-not-adequate-after-the-renewal-lapses-in-2031",
        [ADEQUACY],
        ["personal"],
        {"gb-1": "GB"},
        set(),
        now="2031-12-28T00:00:00Z",
    ),
    Case(
        "br-not-adequate-before-january-2026",
        [ADEQUACY],
        ["personal"],
        {"br-1": "BR"},
        set(),
        now="2026-01-25T23:59:59Z",
    ),
    Case(
        "br-adequate-from-the-2026-decision",
        [ADEQUACY],
        ["personal"],
        {"br-1": "BR"},
        {"br-1"},
        now="2026-01-26T00:00:00Z",
    ),
    Case(
        "us-not-adequate-between-schrems-ii-and-the-dpf",
        [ADEQUACY],
        ["personal"],
        {"us-1": "US"},
        set(),
        now="2022-01-01T00:00:00Z",
    ),
    Case(
        "us-adequate-under-the-dpf",
        [ADEQUACY],
        ["personal"],
        {"us-1": "US"},
        {"us-1"},
        now="2023-07-10T00:00:00Z",
    ),
    Case(
        "audit-policy-never-restricts-but-reports",
        [EU_PATIENT, policy("de-audit", ["phi-eu"], allow=["DE"], mode="audit")],
        ["phi-eu"],
        {"de-1": "DE", "fr-1": "FR"},
        {"de-1", "fr-1"},
        findings={("de-audit", "fr-1")},
    ),
    Case(
        "malformed-stored-policy-rejects-what-it-binds",
        [EU_PATIENT, MalformedPolicy("broken", "allow.0: unknown country", ("phi-eu",))],
        ["phi-eu"],
        {"de-1": "DE"},
        set(),
        reasons={"de-1": "policy broken (enforce): cannot be evaluated"},
    ),
    Case(
        "malformed-policy-of-unknown-scope-binds-everything",
        [MalformedPolicy("broken", "not JSON")],
        ["public"],
        {"de-1": "DE"},
        set(),
    ),
    Case(
        "unknown-group-at-evaluation-rejects-fail-closed",
        [policy("gone", ["x"], allow=["DE"], deny=["group:sanctioned"])],
        ["x"],
        {"de-1": "DE"},
        set(),
        reasons={"de-1": "unknown group 'group:sanctioned'"},
    ),
    Case(
        "group-cycle-at-evaluation-rejects-fail-closed",
        [policy("loop", ["x"], allow=["group:a"])],
        ["x"],
        {"de-1": "DE"},
        set(),
        groups=[
            {"name": "a", "countries": ["DE", "group:b"]},
            {"name": "b", "countries": ["group:a"]},
        ],
        reasons={"de-1": "group cycle: group:a -> group:b -> group:a"},
    ),
    Case(
        "empty-allow-means-anywhere-but-an-empty-group-means-nowhere",
        [policy("anywhere", ["x"]), policy("nowhere", ["x"], allow=["group:empty"])],
        ["x"],
        {"de-1": "DE"},
        set(),
        groups=[{"name": "empty", "countries": []}],
        reasons={"de-1": "policy nowhere (enforce): country DE"},
    ),
]


def run(case: Case) -> Evaluation:
    policies = [
        p if isinstance(p, MalformedPolicy) else Policy.model_validate(p) for p in case.policies
    ]
    groups = {g["name"]: Group.model_validate(g) for g in case.groups}
    regions = [Region(name, country) for name, country in case.regions.items()]
    return evaluate(
        data_classes=case.data_classes,
        service=case.service,
        regions=regions,
        policies=policies,
        groups=groups,
        now=at(case.now),
    )


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case) -> None:
    result = run(case)

    assert set(result.allowed_regions) == case.allowed
    assert [v.region for v in result.verdicts] == sorted(case.regions)
    for verdict in result.verdicts:
        assert verdict.reasons, f"{verdict.region} has no reason"
    by_region = {v.region: v for v in result.verdicts}
    for region, expected in case.reasons.items():
        reasons = by_region[region].reasons
        assert any(expected in r for r in reasons), (region, reasons)
    assert {(f.policy, f.region) for f in result.audit_findings} == case.findings
