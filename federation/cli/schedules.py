"""`federation drill schedule ...` and `federation drill history`: practice drills run
by the leader on a schedule (docs/drills.md#practice-runs)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.render import console, err_console, moment, print_api_error
from federation.cli.session import call
from federation.client import ApiClient, ApiError
from federation.model.safe_yaml import YamlRefused, load_all

_COLOURS = {
    "SUCCEEDED": "green",
    "INTERRUPTED": "yellow",
    "FAILED": "red",
    "CAPACITY_CHECK_FAILED": "red",
    "BLOCKED": "yellow",
    "RUNNING": "cyan",
}


def _outcome(word: str | None) -> str:
    return f"[{_COLOURS.get(word, 'white')}]{word}[/]" if word else "-"


@click.group("schedule")
def schedule() -> None:
    """Practice drills the leader runs weekly inside allowed windows."""


@schedule.command("apply")
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.pass_context
def schedule_apply(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Create or update the drill schedules in FILE (YAML, several documents each)."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in files:
        try:
            loaded = load_all(path.read_bytes())
        except (YamlRefused, OSError) as exc:
            err_console.print(f"[red]error[/] {escape(str(path))}: {escape(str(exc))}")
            raise SystemExit(1) from None
        for i, doc in enumerate(loaded):
            if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
                err_console.print(
                    f"[red]error[/] {escape(str(path))} document {i + 1}: needs a name"
                )
                raise SystemExit(1)
            docs.append((f"{path}#{i + 1}", doc))

    async def apply_all(client: ApiClient) -> int:
        failed = 0
        for source, doc in docs:
            try:
                answer = await client.schedules(doc["name"], body=doc)
            except ApiError as exc:
                print_api_error(exc, f"{source}: drill schedule {doc['name']}")
                failed += 1
                continue
            console.print(
                f"drill schedule [bold]{escape(doc['name'])}[/] applied (revision "
                f"{answer['revision']}); next run {moment(answer['next_run'])}"
            )
        return failed

    if call(ctx, apply_all):
        raise SystemExit(1)


@schedule.command("list")
@click.pass_context
def schedule_list(ctx: click.Context) -> None:
    """Every schedule: regions, windows, next run, last outcome."""
    answer = call(ctx, lambda c: c.schedules())
    table = Table(title="drill schedules")
    for col in ("name", "regions", "windows", "next run (UTC)", "last outcome", "last run"):
        table.add_column(col)
    for item in answer["items"]:
        last = item["last_run"] or {}
        table.add_row(
            item["name"],
            ", ".join(item["regions"]),
            escape(f"{', '.join(item['windows'])} ({item['time_zone']})"),
            moment(item["next_run"]) if item["enabled"] else "disabled",
            _outcome(last.get("outcome")),
            moment(last.get("started_at")),
        )
    console.print(table)


def _runs_table(title: str, runs: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("schedule", "run", "trigger", "started", "outcome", "drill", "why"):
        table.add_column(col)
    for run in runs:
        table.add_row(
            run["schedule"],
            run["id"],
            run["trigger"],
            moment(run["started_at"]),
            _outcome(run["outcome"]),
            run["drill_id"] or "-",
            escape(run["message"][:120]),
        )
    return table


@schedule.command("show")
@click.argument("name")
@click.pass_context
def schedule_show(ctx: click.Context, name: str) -> None:
    """One schedule and its recent runs."""

    async def both(client: ApiClient) -> tuple[dict[str, Any], dict[str, Any]]:
        return await client.schedules(name), await client.schedules(name, "runs")

    item, runs = call(ctx, both)
    table = Table(title=f"drill schedule {name}")
    table.add_column("")
    table.add_column("")
    checks = (
        [c["name"] for c in item["blocking_checks"]],
        [c["name"] for c in item["outcome_checks"]],
    )
    for key, value in [
        ("regions", ", ".join(item["regions"])),
        ("windows", f"{', '.join(item['windows'])} ({item['time_zone']})"),
        ("blocked dates", ", ".join(item["blocked_dates"]) or "-"),
        ("blocked windows", ", ".join(item["blocked_windows"]) or "-"),
        ("duration", f"{item['duration_s']:g} s; fail back: {item['fail_back']}"),
        ("blocking checks", ", ".join(checks[0]) or "-"),
        ("outcome checks", ", ".join(checks[1]) or "-"),
        ("webhooks", str(len(item["notifications"]["webhooks"]))),
        ("next run", moment(item["next_run"]) if item["enabled"] else "disabled"),
    ]:
        table.add_row(key, escape(value))
    console.print(table)
    console.print(_runs_table("recent runs", runs["items"][-10:]))


@schedule.command("run")
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Return once the run is asked for.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def schedule_run(ctx: click.Context, name: str, no_wait: bool, timeout: float) -> None:
    """Run schedule NAME now (outside its windows; checks and the capacity pre-check
    still apply), and wait for its outcome."""

    async def go(client: ApiClient) -> dict[str, Any] | None:
        before = {r["id"] for r in (await client.schedules(name, "runs"))["items"]}
        await client.schedules(name, "run")
        console.print(f"run of [bold]{escape(name)}[/] asked for")
        if no_wait:
            return None
        with console.status("waiting for the leader to start the run") as status:
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while loop.time() < end:
                new = [
                    r
                    for r in (await client.schedules(name, "runs"))["items"]
                    if r["id"] not in before
                ]
                if new:
                    run: dict[str, Any] = new[-1]
                    if run["outcome"] != "RUNNING":
                        return run
                    status.update(f"run {run['id']}: drill {run['drill_id']} running")
                await asyncio.sleep(1)
        return None

    run = call(ctx, go)
    if run is None:
        if not no_wait:
            err_console.print("[yellow]still running[/]: federation drill history")
        return
    console.print(_runs_table(f"run of {name}", [run]))
    if run["drill_id"]:
        console.print(f"report: federation drill report {run['drill_id']} --format md")
    if run["outcome"] != "SUCCEEDED":
        raise SystemExit(1)


@schedule.command("delete")
@click.argument("name")
@click.pass_context
def schedule_delete(ctx: click.Context, name: str) -> None:
    """Delete schedule NAME (its runs stay in the history)."""
    call(ctx, lambda c: c.schedules(name, "delete"))
    console.print(f"drill schedule [bold]{escape(name)}[/] deleted")


@click.command("history")
@click.option("--schedule", "only", default=None, help="Only this schedule's runs.")
@click.pass_context
def history(ctx: click.Context, only: str | None) -> None:
    """Practice runs of every schedule (or one), oldest first, with their drills."""

    async def gather(client: ApiClient) -> list[dict[str, Any]]:
        names = [only] if only else [s["name"] for s in (await client.schedules())["items"]]
        runs: list[dict[str, Any]] = []
        for name in names:
            runs += (await client.schedules(name, "runs"))["items"]
        return sorted(runs, key=lambda r: r["started_at"])

    runs = call(ctx, gather)
    console.print(_runs_table("practice runs", runs))
