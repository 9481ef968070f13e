"""`federation etcd`: etcd's status, defragmentation and alarms, through the API (admin).

The server holds etcd's credentials; these commands need only an admin token
(docs/operations.md, "etcd maintenance", says why they go through the API).
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.render import console, err_console, progress
from federation.cli.session import call
from federation.client import ApiClient


def size(value: int | None) -> str:
    """Bytes as people read them: `512 B`, `3.4 MiB`; `-` when unknown."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"  # pragma: no cover


@click.group("etcd")
def etcd() -> None:
    """etcd's members, history, alarms and defragmentation (admin)."""


@etcd.command("status")
@click.pass_context
def etcd_status(ctx: click.Context) -> None:
    """One row per member: endpoint, database size, in-use size, revision, alarms,
    leader; then how much history etcd keeps."""
    data = call(ctx, lambda c: c.etcd_status())
    table = Table(title="etcd members")
    for col in ("member", "endpoint", "db size", "in use", "revision", "alarms", "leader"):
        table.add_column(col)
    for m in data["members"]:
        alarms = ", ".join(m["alarms"])
        table.add_row(
            escape(f"{m['name']} ({m['id']})"),
            escape(m["endpoint"]),
            size(m["db_size"]),
            size(m["db_size_in_use"]),
            "-" if m["revision"] is None else str(m["revision"]),
            f"[red]{escape(alarms)}[/]" if alarms else "-",
            "yes" if m["leader"] else "",
        )
    console.print(table)
    for m in data["members"]:
        for error in m["errors"]:
            err_console.print(f"[yellow]{escape(m['name'])}[/]: {escape(error)}")
    revision, compacted = data["revision"], data["compacted_revision"]
    window = data.get("history_window_s")
    kept = f"window {window:g} s" if window else "no window"
    console.print(
        f"revision {revision}, compacted to {compacted}: "
        f"{revision - compacted} revisions of history kept ({kept})"
    )
    if any(a["alarm"] == "NOSPACE" for a in data["alarms"]):
        err_console.print(
            "[red]NOSPACE[/]: etcd refuses writes. Compaction has run at once; now "
            "`federation etcd defrag`, then `federation etcd disarm` (docs/operations.md)."
        )


def _order(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Followers first, the leader last: one leader change at most, at the end."""
    return sorted(members, key=lambda m: bool(m["leader"]))


@etcd.command("defrag")
@click.pass_context
def etcd_defrag(ctx: click.Context) -> None:
    """Defragment every member, one at a time (a member being defragmented answers
    nothing; the others keep the quorum), and give back the space compaction freed."""

    async def go(client: ApiClient) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        members = _order((await client.etcd_status())["members"])
        done = []
        with progress("members") as bars:
            task = bars.add_task("defragmenting", total=len(members), phase="")
            for member in members:
                bars.update(task, phase=escape(member["name"]))
                done.append((member, await client.etcd_defrag(member["id"])))
                bars.advance(task)
            bars.update(task, phase="done")
        return done

    table = Table(title="etcd defragmented")
    for col in ("member", "db size before", "after", "in use"):
        table.add_column(col)
    for before, after in call(ctx, go):
        table.add_row(
            escape(f"{after['name']} ({after['id']})"),
            size(before["db_size"]),
            size(after["db_size"]),
            size(after["db_size_in_use"]),
        )
    console.print(table)


@etcd.command("disarm")
@click.pass_context
def etcd_disarm(ctx: click.Context) -> None:
    """Deactivate etcd's raised alarms (after a NOSPACE: once compacted and
    defragmented, or the next write that does not fit raises it again)."""
    data = call(ctx, lambda c: c.etcd_disarm())
    if not data["disarmed"]:
        console.print("no alarm was raised")
        return
    for alarm in data["disarmed"]:
        console.print(f"disarmed {escape(alarm['alarm'])} on member {escape(alarm['member'])}")
