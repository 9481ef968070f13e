"""A practice run's drill report names its schedule and the checks' states before and
during the run, in JSON and in Markdown (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from federation.drills.checks import query_value
from federation.drills.report import build_report, render_markdown
from federation.model.drill import DrillPlan, DrillRecord, DrillRequest, DrillState
from federation.model.schedule import CheckResult

AT = datetime(2026, 6, 9, 8, 30, tzinfo=UTC)


def check(name: str, phase: str, ok: bool, value: str) -> CheckResult:
    return CheckResult.model_validate(
        {
            "name": name,
            "kind": "http",
            "phase": phase,
            "ok": ok,
            "value": value,
            "message": f"{name} saw {value}",
            "at": AT,
        }
    )


def test_report_names_the_schedule_and_the_checks() -> None:
    record = DrillRecord(
        id="drill-0000abcd",
        regions=["eu-fr-1"],
        state=DrillState.ABORTED,
        phase="done",
        request=DrillRequest(regions=["eu-fr-1"], mode="live"),
        created_at=AT,
        created_by="schedule:weekly",
        plan=DrillPlan(regions=["eu-fr-1"], at=AT, services=[], unaffected=0),
        schedule="weekly",
        checks_before=[check("health", "blocking", True, "200")],
        checks_during=[
            check("errors", "outcome", True, "0"),
            check("errors", "outcome", False, "3"),
        ],
    )
    report = build_report(record)
    assert report["schedule"] == "weekly"
    assert [c["value"] for c in report["checks"]["during"]] == ["0", "3"]
    text = render_markdown(report)
    assert "Started by drill schedule `weekly`" in text
    assert "## Checks before the run" in text and "## Checks during the run" in text
    assert "| FAIL | errors saw 3 |" in text


def test_prometheus_answers() -> None:
    def answer(kind: str, result: object) -> dict[str, object]:
        return {"status": "success", "data": {"resultType": kind, "result": result}}

    assert query_value(answer("vector", [])) == (True, "no series (0)")
    assert query_value(answer("vector", [{"value": [1, "0"]}, {"value": [1, "0"]}]))[0]
    assert query_value(answer("vector", [{"value": [1, "2"]}])) == (False, "2")
    assert query_value(answer("scalar", [1, "0"])) == (True, "0")
    assert query_value(answer("vector", [{"value": [1, "+Inf"]}]))[0] is False
    bad: object
    for bad in ({"status": "error", "error": "parse error"}, answer("matrix", []), [], "x"):
        try:
            query_value(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
