"""The evidence replay over injected time: entries as the server writes them, at
chosen moments, so that what a report must say can be stated exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from federation.residency.evidence import replay

T0 = datetime(2026, 10, 1, tzinfo=UTC)


class Log:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, hours: float, action: str, resource: str, **details: Any) -> None:
        seq = len(self.entries) + 1
        self.entries.append(
            {
                "seq": seq,
                "hash": f"{seq:064x}",
                "at": (T0 + timedelta(hours=hours)).isoformat(),
                "actor": "admin:tok-1",
                "action": action,
                "resource": resource,
                "details": details,
                "after_revision": 100 + seq,
            }
        )

    def decide(self, hours: float, service: str, regions: dict[str, int], **extra: Any) -> None:
        d = {"regions": regions, "reason": "Placed", "generation": 1, "data_classes": ["phi-eu"]}
        self.add(hours, "placement.decide", "placements/", services={service: {**d, **extra}})


def base(policy: dict[str, Any]) -> Log:
    log = Log()
    for name, country in [("eu-de-1", "DE"), ("eu-fr-1", "FR"), ("us-east-1", "US")]:
        log.add(0, "region.create", f"regions/{name}", country=country)
    log.add(0.5, "policy.put", "policies/eu", value=policy)
    log.add(1, "service.put", "services/records", generation=1, data_classes=["phi-eu"])
    return log


DE_ONLY = {"name": "eu", "data_classes": ["phi-eu"], "allow": ["DE"]}


def test_a_placement_outside_the_policy_is_a_violation_listed_first() -> None:
    log = base(DE_ONLY)
    log.decide(1, "records", {"eu-de-1": 2})
    log.decide(2, "records", {"eu-de-1": 1, "us-east-1": 1})  # what must never happen
    log.decide(3, "records", {"eu-de-1": 2})
    report = replay("phi-eu", T0, T0 + timedelta(days=1), log.entries)
    assert report["summary"]["not_allowed"] == 1
    (bad,) = report["violations"]
    assert (bad["region"], bad["country"], bad["replicas"]) == ("us-east-1", "US", 1)
    assert (bad["from"], bad["to"]) == (
        (T0 + timedelta(hours=2)).isoformat(),
        (T0 + timedelta(hours=3)).isoformat(),
    )
    assert bad["policies"] == {"eu": 104}  # the revision the policy's write made
    assert report["summary"]["countries"] == ["DE", "US"]


def test_an_exemption_that_expires_while_replicas_stay_is_a_violation() -> None:
    expires = T0 + timedelta(hours=5)
    policy = {
        **DE_ONLY,
        "exemptions": [
            {
                "service": "records",
                "allow": ["FR"],
                "expires": expires.isoformat(),
                "reason": "move",
            }
        ],
    }
    log = base(policy)
    log.decide(1, "records", {"eu-fr-1": 2})
    log.decide(4, "records", {"eu-de-1": 2})  # moved before expiry: allowed
    log.decide(6, "records", {"eu-fr-1": 2})  # after expiry: not allowed
    report = replay("phi-eu", T0, T0 + timedelta(hours=8), log.entries)
    first, second = [i for i in report["intervals"] if i["region"] == "eu-fr-1"]
    assert first["allowed"] and first["exemptions"][0]["expires"] == expires.isoformat()
    assert not second["allowed"] and second["open_at_end"]
    assert report["summary"]["not_allowed"] == 1


def test_a_policy_change_splits_intervals_and_is_listed_with_its_diff() -> None:
    log = base({**DE_ONLY, "allow": ["DE", "FR"]})
    log.decide(1, "records", {"eu-de-1": 1, "eu-fr-1": 1})
    log.add(2, "policy.put", "policies/eu", value=DE_ONLY)  # FR no longer allowed
    log.decide(2.1, "records", {"eu-de-1": 2}, draining_replicas={"eu-fr-1": 1})
    log.decide(2.2, "records", {"eu-de-1": 2})
    report = replay("phi-eu", T0, T0 + timedelta(hours=3), log.entries)
    created, change = report["policy_changes"]
    assert created["before"] is None
    assert change["before"]["allow"] == ["DE", "FR"] and change["after"]["allow"] == ["DE"]
    fr = [i for i in report["intervals"] if i["region"] == "eu-fr-1"]
    assert [(i["draining"], i["allowed"]) for i in fr] == [
        (False, True),
        (False, False),
        (True, False),
    ]
    # From the change until the decision moved it, the replica was where it may no longer be.
    assert report["summary"]["not_allowed"] == 1
    assert report["summary"]["drains_not_allowed"] == 1


def test_the_period_clips_intervals_and_services_of_other_classes_are_not_listed() -> None:
    log = base(DE_ONLY)
    log.add(1, "service.put", "services/docs", generation=1, data_classes=["public"])
    log.decide(1, "records", {"eu-de-1": 2})
    log.decide(1, "docs", {"us-east-1": 2}, data_classes=["public"])
    report = replay("phi-eu", T0 + timedelta(hours=10), T0 + timedelta(hours=20), log.entries)
    (only,) = report["intervals"]
    assert only["service"] == "records" and only["open_at_end"]
    assert only["from"] == (T0 + timedelta(hours=10)).isoformat()
