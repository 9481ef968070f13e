"""How a plan (`POST /v1/plan`) is shown: tables for a terminal, Markdown for a review.

Every name, value and reason comes from the files or the server and is escaped before
rich sees it, and made safe for a Markdown table cell (a `|` would end the cell).
"""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape
from rich.table import Table

from federation.cli.render import console, err_console

JSON = dict[str, Any]
_SYMBOL = {"create": "+", "update": "~", "delete": "-", "none": " "}
_COLOUR = {"create": "green", "update": "yellow", "delete": "red", "none": "dim"}


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def _fields(resource: JSON) -> str:
    return ", ".join(c["field"] for c in resource["diff"])


def _subject(warning: JSON) -> str:
    for key in ("service", "policy", "data_class"):
        if key in warning:
            return f"{key.replace('_', ' ')} {warning[key]}"
    return ""


def _summary(answer: JSON) -> str:
    s = answer["summary"]
    return (
        f"Plan: {s['create']} to create, {s['update']} to update, {s['delete']} to delete, "
        f"{s['none']} unchanged."
    )


def show_plan(answer: JSON) -> None:
    """The plan as tables: problems, resources, placement moves, rejections, warnings."""
    if answer["problems"]:
        table = Table(title="Problems (nothing can be applied)", title_style="bold red")
        for column in ("kind", "name", "field", "message"):
            table.add_column(column)
        for p in answer["problems"]:
            table.add_row(*(escape(str(p[k])) for k in ("kind", "name", "field", "message")))
        err_console.print(table)
        return
    table = Table(title="Resources")
    for column in ("", "kind", "name", "action", "fields"):
        table.add_column(column)
    for r in answer["resources"]:
        colour = _COLOUR[r["action"]]
        table.add_row(
            f"[{colour}]{_SYMBOL[r['action']]}[/]",
            r["kind"],
            escape(r["name"]),
            f"[{colour}]{r['action']}[/]",
            escape(_fields(r)),
        )
    console.print(table)
    if answer["moves"]:
        table = Table(title="Placement")
        for column in ("service", "region", "replicas", "reason"):
            table.add_column(column)
        for move in answer["moves"]:
            for region, counts in move["regions"].items():
                table.add_row(
                    escape(move["service"]),
                    escape(region),
                    f"{counts['from']} → {counts['to']}",
                    escape(move["reason"]),
                )
        console.print(table)
    if answer["rejections"]:
        table = Table(title="Newly rejected by residency")
        for column in ("service", "region", "country", "why"):
            table.add_column(column)
        for r in answer["rejections"]:
            table.add_row(
                escape(r["service"]),
                escape(r["region"]),
                escape(str(r.get("country") or "")),
                escape("; ".join(r["reasons"])),
            )
        console.print(table)
    if answer["warnings"]:
        table = Table(title="Warnings")
        for column in ("warning", "subject", "message", "new"):
            table.add_column(column)
        for w in answer["warnings"]:
            table.add_row(
                f"[yellow]{escape(w['code'])}[/]",
                escape(_subject(w)),
                escape(w["message"]),
                "yes" if w.get("caused_by_this_change") else "",
            )
        console.print(table)
    console.print(_summary(answer))


def show_diff(answer: JSON) -> bool:
    """Each changed resource and its fields, `from → to`; True when anything differs."""
    changed = False
    for r in answer["resources"]:
        action = r["action"]
        if action == "none":
            continue
        changed = True
        colour = _COLOUR[action]
        console.print(f"[{colour}]{_SYMBOL[action]} {r['kind']} {escape(r['name'])}[/]")
        for c in r["diff"]:
            console.print(
                escape(f"    {c['field']}: {_value(c['from'])} → {_value(c['to'])}"),
                highlight=False,
            )
    if not changed:
        console.print("no differences")
    return changed


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(answer: JSON) -> str:
    """The plan as Markdown, for a pull request comment (docs/gitops.md)."""
    lines = [f"### federation plan: exit {answer['exit_code']}", ""]
    if answer["problems"]:
        lines += ["**Problems (nothing can be applied)**", "", "| kind | name | field | message |"]
        lines.append("|---|---|---|---|")
        for p in answer["problems"]:
            lines.append(
                "| " + " | ".join(_cell(p[k]) for k in ("kind", "name", "field", "message")) + " |"
            )
        return "\n".join(lines) + "\n"
    lines += ["| | kind | name | action | fields |", "|---|---|---|---|---|"]
    for r in answer["resources"]:
        lines.append(
            f"| `{_SYMBOL[r['action']]}` | {r['kind']} | {_cell(r['name'])} | {r['action']} "
            f"| {_cell(_fields(r))} |"
        )
    if answer["moves"]:
        lines += ["", "| service | region | replicas | reason |", "|---|---|---|---|"]
        for move in answer["moves"]:
            for region, counts in move["regions"].items():
                lines.append(
                    f"| {_cell(move['service'])} | {_cell(region)} | "
                    f"{counts['from']} → {counts['to']} | {_cell(move['reason'])} |"
                )
    if answer["rejections"]:
        lines += ["", "| newly rejected | region | country | why |", "|---|---|---|---|"]
        for r in answer["rejections"]:
            lines.append(
                f"| {_cell(r['service'])} | {_cell(r['region'])} | {_cell(r.get('country'))} "
                f"| {_cell('; '.join(r['reasons']))} |"
            )
    if answer["warnings"]:
        lines += [""] + [
            f"- **{_cell(w['code'])}** {_cell(_subject(w))}: {_cell(w['message'])}"
            for w in answer["warnings"]
        ]
    lines += ["", _summary(answer)]
    return "\n".join(lines) + "\n"
