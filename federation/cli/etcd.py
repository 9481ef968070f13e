"""`federation etcd`: etcd's status, defragmentation and alarms, through the API (admin).

The server holds etcd's credentials; these commands need only an admin token
(docs/operations.md, "etcd maintenance", says why they go through the API). Under
etcd auth only etcd's root may defragment, so `defrag --etcd` talks to etcd directly
with the certificate given, as `federation backup` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.render import console, err_console, progress
from federation.cli.session import call, run
from federation.client import ApiClient
from federation.store import Store, StoreError, StoreUnavailable, maintenance


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


Members = list[dict[str, Any]]
Defrag = Callable[[str], Awaitable[dict[str, Any]]]


async def _defrag_each(members: Members, defrag: Defrag) -> list[tuple[Any, Any]]:
    """Defragment `members` one after the other, followers first, with progress."""
    done = []
    with progress("members") as bars:
        task = bars.add_task("defragmenting", total=len(members), phase="")
        for member in _order(members):
            bars.update(task, phase=escape(member["name"]))
            done.append((member, await defrag(member["id"])))
            bars.advance(task)
        bars.update(task, phase="done")
    return done


async def _defrag_direct(store: Store) -> list[tuple[Any, Any]]:
    async def defrag(member: str) -> dict[str, Any]:
        after = await maintenance.defragment(store, member)
        if after is None:
            raise StoreUnavailable(f"member {member} left the cluster")
        return after.as_json()

    async with store:
        members = [m.as_json() for m in await maintenance.status(store)]
        return await _defrag_each(members, defrag)


def _tls_file(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@etcd.command("defrag")
@click.option(
    "--etcd",
    "endpoints",
    default=None,
    help="Talk to these etcd endpoints (comma-separated) directly, not through the API: "
    "under etcd auth only etcd's root may defragment (give root's certificate).",
)
@click.option("--etcd-ca", type=_FILE, default=None, help="With --etcd: etcd's CA.")
@click.option("--etcd-cert", type=_FILE, default=None, help="With --etcd: a client certificate.")
@click.option("--etcd-key", type=_FILE, default=None, help="With --etcd: its key.")
@click.pass_context
def etcd_defrag(
    ctx: click.Context,
    endpoints: str | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
) -> None:
    """Defragment every member, one at a time (a member being defragmented answers
    nothing; the others keep the quorum), and give back the space compaction freed."""
    if endpoints is None:

        async def through_api(client: ApiClient) -> list[tuple[Any, Any]]:
            members = (await client.etcd_status())["members"]
            return await _defrag_each(members, client.etcd_defrag)

        done = call(ctx, through_api)
    else:
        store = Store(
            [e.strip() for e in endpoints.split(",") if e.strip()],
            ca_cert=_tls_file(etcd_ca),
            cert_chain=_tls_file(etcd_cert),
            cert_key=_tls_file(etcd_key),
        )
        try:
            done = run(_defrag_direct(store))
        except StoreError as exc:
            err_console.print(f"[red]defragmentation failed[/red]: {escape(str(exc))}")
            raise SystemExit(1) from None
    table = Table(title="etcd defragmented")
    for col in ("member", "db size before", "after", "in use"):
        table.add_column(col)
    for before, after in done:
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
