"""The drill report (pure): JSON a compliance officer can file, and its Markdown.

Built from the drill record alone, so it is the same whoever serves it and can be
rebuilt at any time; while a drill runs it shows what has been measured so far.
Percentiles are nearest-rank over the services that recovered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from federation.model.drill import DrillRecord


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _since(start: datetime | None, at: datetime | None) -> float | None:
    if start is None or at is None:
        return None
    return round((at - start).total_seconds(), 3)


def build_report(record: DrillRecord) -> dict[str, Any]:
    """The report of a live drill, as JSON-ready data."""
    times = {
        n: s.recovery_s for n, s in sorted(record.services.items()) if s.recovery_s is not None
    }
    values = list(times.values())

    def settled(kind: str) -> list[dict[str, Any]]:
        return [
            {
                "service": n,
                "reason": s.reason,
                "message": s.message,
                "ready": s.ready_elsewhere,
                "replicas": s.replicas,
            }
            for n, s in sorted(record.services.items())
            if s.settled == kind
        ]

    waiting = [n for n, s in sorted(record.services.items()) if s.settled is None]
    restore_s = _since(record.uncordoned_at, record.restored_at)
    return {
        "id": record.id,
        "regions": record.regions,
        "state": record.state.value,
        "final": record.state.terminal,
        "message": record.outcome_message,
        "started_at": record.created_at.isoformat(),
        "cordoned_at": record.cordoned_at.isoformat() if record.cordoned_at else None,
        "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        "duration_s": _since(record.created_at, record.ended_at),
        "summary": {
            "affected": len(record.services),
            "recovered": len(times),
            "degraded": len(settled("degraded")),
            "unrecoverable": len(settled("unrecoverable")),
            "waiting": len(waiting),
            "violations": len(record.violations),
        },
        "recovery": {
            "per_service_s": times,
            "p50_s": percentile(values, 50),
            "p95_s": percentile(values, 95),
            "max_s": max(values) if values else None,
        },
        "degraded": settled("degraded"),
        "unrecoverable": settled("unrecoverable"),
        "not_recovered": waiting,
        "expected": {
            "unrecoverable": record.plan.names("unrecoverable"),
            "degraded": record.plan.names("degraded"),
            "accepted_with_force": record.accepted_unrecoverable,
        },
        "violations": [v.model_dump(mode="json") for v in record.violations],
        "failback": {
            "requested": record.request.failback,
            "done": record.uncordoned_at is not None,
            "uncordoned_at": record.uncordoned_at.isoformat() if record.uncordoned_at else None,
            "restored": record.restored_at is not None,
            "restore_s": restore_s,
        },
        "schedule": record.schedule,
        "checks": {
            "before": [c.model_dump(mode="json") for c in record.checks_before],
            "during": [c.model_dump(mode="json") for c in record.checks_during],
        },
        "timeline": [
            {
                "at": e.at.isoformat(),
                "t_s": _since(record.created_at, e.at),
                "event": e.event,
            }
            for e in record.timeline
        ],
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown, for filing."""
    summary, recovery, failback = report["summary"], report["recovery"], report["failback"]
    lines = [
        f"# Failover drill {report['id']}",
        "",
        f"- Regions: {', '.join(report['regions'])}",
        f"- State: **{report['state']}**"
        + (f" ({report['message']})" if report["message"] else ""),
        f"- Started: {report['started_at']}",
        f"- Ended: {report['ended_at'] or 'still running'}",
        f"- Duration: {_s(report['duration_s'])}",
        "",
        "## Summary",
        "",
        "| affected | recovered | degraded | unrecoverable | not recovered | violations |",
        "|---|---|---|---|---|---|",
        f"| {summary['affected']} | {summary['recovered']} | {summary['degraded']} "
        f"| {summary['unrecoverable']} | {summary['waiting']} | {summary['violations']} |",
        "",
        "## Recovery time",
        "",
        "From the cordon to every replica ready outside the drilled regions.",
        "",
        f"- p50: {_s(recovery['p50_s'])}",
        f"- p95: {_s(recovery['p95_s'])}",
        f"- max: {_s(recovery['max_s'])}",
        "",
    ]
    if recovery["per_service_s"]:
        lines += ["| service | recovery |", "|---|---|"]
        ordered = sorted(recovery["per_service_s"].items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [f"| {_cell(n)} | {_s(v)} |" for n, v in ordered]
        lines.append("")
    lines += ["## Residency violations", ""]
    if report["violations"]:
        lines += ["| service | region | country | at | reasons |", "|---|---|---|---|---|"]
        lines += [
            f"| {_cell(v['service'])} | {v['region']} | {v['country'] or '?'} | {v['at']} "
            f"| {_cell('; '.join(v['reasons']))} |"
            for v in report["violations"]
        ]
    else:
        lines.append("None: no replica was placed in a region residency rejects.")
    lines.append("")
    for kind in ("unrecoverable", "degraded"):
        lines += [f"## {kind.capitalize()} services", ""]
        if report[kind]:
            lines += ["| service | ready / replicas | reason | message |", "|---|---|---|---|"]
            lines += [
                f"| {_cell(s['service'])} | {s['ready']}/{s['replicas']} | {s['reason']} "
                f"| {_cell(s['message'])} |"
                for s in report[kind]
            ]
        else:
            lines.append("None.")
        lines.append("")
    if report["not_recovered"]:
        lines += ["## Not recovered when the drill ended", ""]
        lines += [f"- {_cell(n)}" for n in report["not_recovered"]]
        lines.append("")
    accepted = report["expected"]["accepted_with_force"]
    if accepted:
        lines += [
            "Started with `force`, accepting as unrecoverable: " + ", ".join(accepted),
            "",
        ]
    lines += ["## Failback", ""]
    if not failback["requested"]:
        lines.append(
            "Not requested: the drilled regions stay cordoned until an operator uncordons."
        )
    elif not failback["done"]:
        lines.append("Not done.")
    else:
        restored = (
            f"every affected service Running again after {_s(failback['restore_s'])}"
            if failback["restored"]
            else "services not all Running again when the drill ended"
        )
        lines.append(f"Regions uncordoned at {failback['uncordoned_at']}; {restored}.")
    if report.get("schedule"):
        lines += ["", f"Started by drill schedule `{report['schedule']}` (a practice run)."]
    for when in ("before", "during"):
        checks = report.get("checks", {}).get(when, [])
        if checks:
            lines += ["", f"## Checks {when} the run", "", "| check | at | state | value |"]
            lines.append("|---|---|---|---|")
            lines += [
                f"| {_cell(c['name'])} ({c['phase']}) | {c['at']} "
                f"| {'pass' if c['ok'] else 'FAIL'} | {_cell(c['message'])} |"
                for c in checks
            ]
    lines += ["", "## Timeline", "", "| t | at | event |", "|---|---|---|"]
    lines += [f"| {_s(e['t_s'])} | {e['at']} | {_cell(e['event'])} |" for e in report["timeline"]]
    lines.append("")
    return "\n".join(lines)
