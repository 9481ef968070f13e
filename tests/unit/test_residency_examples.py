"""The example policies validate and mean what docs/residency.md says they mean."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from federation.model.policy import Policy
from federation.residency.evaluate import empty_data_classes, evaluate
from federation.residency.groups import validate_references

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
NOW = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Region:
    name: str
    country: str | None


REGIONS = [
    Region("eu-de-1", "DE"),
    Region("eu-fr-1", "FR"),
    Region("ch-zrh-1", "CH"),
    Region("uk-lon-1", "GB"),
    Region("us-east-1", "US"),
    Region("fo-tor-1", "FO"),
    Region("sg-1", "SG"),
]


def load() -> list[Policy]:
    paths = sorted(EXAMPLES.glob("*.yaml"))
    assert paths, EXAMPLES
    return [Policy.model_validate(doc) for p in paths for doc in yaml.safe_load_all(p.read_text())]


def test_examples_validate_and_reference_only_known_groups() -> None:
    policies = load()
    assert {p.name for p in policies} >= {"eu-patient-data", "us-phi", "de-only", "public-audit"}
    for policy in policies:
        assert validate_references(policy, {}) == []
    assert empty_data_classes(policies, {}, NOW) == []


@pytest.mark.parametrize(
    ("data_classes", "allowed"),
    [
        (["phi-eu"], ["ch-zrh-1", "eu-de-1", "eu-fr-1"]),
        (["phi-us"], ["us-east-1"]),
        (["de-only"], ["eu-de-1"]),
        (["phi-eu", "de-only"], ["eu-de-1"]),
        (["public"], [r.name for r in sorted(REGIONS, key=lambda r: r.name)]),
    ],
)
def test_examples_place_data_where_the_docs_say(
    data_classes: list[str], allowed: list[str]
) -> None:
    result = evaluate(
        data_classes=data_classes,
        service=None,
        regions=REGIONS,
        policies=load(),
        groups={},
        now=NOW,
    )
    assert result.allowed_regions == allowed


def test_public_audit_reports_but_does_not_restrict() -> None:
    result = evaluate(
        data_classes=[], service=None, regions=REGIONS, policies=load(), groups={}, now=NOW
    )
    assert len(result.allowed_regions) == len(REGIONS)
    assert [(f.policy, f.region) for f in result.audit_findings] == [("public-audit", "sg-1")]
