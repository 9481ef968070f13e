"""`federation drill`: plan and run failover drills, follow them live, read their reports."""

from __future__ import annotations

import asyncio
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.render import console, err_console, moment, outcome, progress, seconds
from federation.cli.schedules import history, schedule
from federation.cli.session import call
from federation.client import ApiClient


@click.group("drill")
def drill() -> None:
    """Plan and run failover drills, schedule practice drills, and read their reports."""


drill.add_command(schedule)
drill.add_command(history)


@drill.command("plan")
@click.option("--region", "regions", multiple=True, required=True, help="Repeatable.")
@click.pass_context
def drill_plan(ctx: click.Context, regions: tuple[str, ...]) -> None:
    """Show what losing REGIONs would do to every service in them (changes nothing)."""
    answer = call(ctx, lambda c: c.plan_drill(list(regions)))
    table = Table(title=f"drill plan: {', '.join(regions)}")
    for col in ("service", "outcome", "to regions", "reason"):
        table.add_column(col)
    for s in answer["plan"]["services"]:
        to = ", ".join(f"{r}={n}" for r, n in s["to"].items()) or "-"
        table.add_row(
            s["service"],
            outcome(s["outcome"]),
            f"{to} ({s['placed']}/{s['replicas']})",
            escape(f"{s['reason']}: {s['message']}"),
        )
    console.print(table)
    summary = answer["summary"]
    console.print(
        f"{summary['recoverable']} recoverable, {summary['degraded']} degraded, "
        f"{summary['unrecoverable']} unrecoverable; {summary['unaffected']} service(s) unaffected"
    )


def _drill_summary(view: dict[str, Any]) -> None:
    report = view["report"]
    summary, recovery, failback = report["summary"], report["recovery"], report["failback"]
    table = Table(title=f"drill {view['id']} ({', '.join(view['regions'])})")
    table.add_column("")
    table.add_column("")
    if failback["restored"]:
        restore = f"restored in {seconds(failback['restore_s'])}"
    elif failback["done"]:
        restore = "regions uncordoned; restore not measured"
    else:
        restore = "regions not uncordoned yet"
    rows = [
        ("state", outcome(view["state"]) + f" {escape(report['message'])}"),
        ("affected services", str(summary["affected"])),
        ("recovered", str(summary["recovered"])),
        ("degraded", str(summary["degraded"])),
        ("unrecoverable", str(summary["unrecoverable"])),
        ("not recovered", str(summary["waiting"])),
        (
            "recovery p50 / p95 / max",
            " / ".join(seconds(recovery[k]) for k in ("p50_s", "p95_s", "max_s")),
        ),
        (
            "residency violations",
            ("[green]0[/]" if not summary["violations"] else f"[red]{summary['violations']}[/]"),
        ),
        ("failback", restore if failback["requested"] else "not requested (regions cordoned)"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for kind in ("unrecoverable", "degraded"):
        for s in report[kind]:
            console.print(
                f"{outcome(kind)} {s['service']} ({s['ready']}/{s['replicas']} ready): "
                f"{escape(s['reason'])}: {escape(s['message'])}"
            )
    for v in report["violations"]:
        console.print(
            f"[red]violation[/] {v['service']} in {v['region']} ({v['country']}): "
            f"{escape('; '.join(v['reasons']))}"
        )


@drill.command("run")
@click.option("--region", "regions", multiple=True, required=True, help="Repeatable.")
@click.option("--force", is_flag=True, help="Run even if the plan finds unrecoverable services.")
@click.option("--no-failback", is_flag=True, help="Leave the regions cordoned at the end.")
@click.option("--max-duration", default=300.0, show_default=True, help="Seconds before abort.")
@click.option(
    "--abort-on-unrecoverable",
    default=0,
    show_default=True,
    help="Abort when more services than this turn out unrecoverable.",
)
@click.pass_context
def drill_run(
    ctx: click.Context,
    regions: tuple[str, ...],
    force: bool,
    no_failback: bool,
    max_duration: float,
    abort_on_unrecoverable: int,
) -> None:
    """Run a live drill: cordon REGIONs, watch their services recover elsewhere, fail back.
    Ctrl-C aborts the drill and uncordons the regions."""
    started = call(
        ctx,
        lambda c: c.start_drill(
            list(regions),
            force=force,
            failback=not no_failback,
            max_duration_s=max_duration,
            abort_on_unrecoverable=abort_on_unrecoverable,
        ),
    )
    drill_id = started["id"]
    console.print(f"drill [bold]{drill_id}[/] started: {', '.join(regions)} cordoned by the drill")

    async def watch(client: ApiClient) -> dict[str, Any]:
        with progress("services recovered") as bars:
            bar = bars.add_task(drill_id, total=None, phase="cordoning")
            while True:
                view = await client.drill(drill_id)
                p = view["progress"]
                extra = f"{p['phase']}"
                if p["violations"]:
                    extra += f" [red]{p['violations']} violation(s)[/]"
                bars.update(
                    bar,
                    total=max(1, p["affected"]),
                    completed=p["recovered"],
                    phase=extra,
                )
                if view["state"] not in ("running", "planned"):
                    return view
                await asyncio.sleep(0.5)

    try:
        view = call(ctx, watch)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted: aborting drill {drill_id}[/]")
        view = call(ctx, lambda c: c.abort_drill(drill_id, "interrupted from the CLI"))
    _drill_summary(view)
    console.print(f"report: federation drill report {drill_id} --format md")
    if view["state"] != "completed" or view["report"]["summary"]["violations"]:
        raise SystemExit(1)


@drill.command("list")
@click.pass_context
def drill_list(ctx: click.Context) -> None:
    """Show every live drill."""
    answer = call(ctx, lambda c: c.drills())
    table = Table(title="drills")
    for col in ("id", "regions", "state", "recovered", "violations", "started"):
        table.add_column(col)
    for item in answer["items"]:
        p = item["progress"]
        table.add_row(
            item["id"],
            ", ".join(item["regions"]),
            outcome(item["state"]),
            f"{p['recovered']}/{p['affected']}",
            str(p["violations"]),
            moment(item["created_at"]),
        )
    console.print(table)


@drill.command("abort")
@click.argument("drill_id")
@click.option("--reason", default="")
@click.pass_context
def drill_abort(ctx: click.Context, drill_id: str, reason: str) -> None:
    """Abort drill DRILL_ID and uncordon its regions at once."""
    view = call(ctx, lambda c: c.abort_drill(drill_id, reason))
    _drill_summary(view)


@drill.command("report")
@click.argument("drill_id")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.pass_context
def drill_report(ctx: click.Context, drill_id: str, fmt: str) -> None:
    """Print the report of drill DRILL_ID (Markdown to file, or JSON)."""
    import json

    from federation.drills.report import render_markdown

    view = call(ctx, lambda c: c.drill(drill_id))
    if fmt == "json":
        click.echo(json.dumps(view["report"], indent=2))
    else:
        # The same renderer the server's report.md uses, so both always agree.
        click.echo(render_markdown(view["report"]), nl=False)
