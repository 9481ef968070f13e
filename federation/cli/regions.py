"""`federation region`: register, list, cordon and uncordon regions."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from federation.cli.render import console, moment
from federation.cli.session import call


@click.group("region")
def region() -> None:
    """Register, list and cordon regions."""


def _region_table(items: list[dict[str, Any]]) -> Table:
    table = Table(title="regions")
    for col in ("name", "country", "state", "last heartbeat", "cpu free/total", "labels"):
        table.add_column(col)
    colours = {"ready": "green", "unreachable": "red", "cordoned": "yellow"}
    for item in items:
        cap, free = item["capacity"], item["free"]
        state = item["state"]
        table.add_row(
            item["name"],
            item["country"],
            f"[{colours.get(state, 'white')}]{state}[/]",
            moment(item.get("last_heartbeat")),
            f"{free['cpu']:g}/{cap['cpu']:g}" + _claimed(item),
            ", ".join(f"{k}={v}" for k, v in item["labels"].items()),
        )
    return table


def _claimed(item: dict[str, Any]) -> str:
    """What a region claims above its ceiling, if it does (it is planned at the ceiling)."""
    claimed = item.get("capacity_claimed")
    return f" (claims {claimed['cpu']:g}: capped)" if claimed else ""


@region.command("add")
@click.argument("name")
@click.option("--country", required=True, help="ISO 3166-1 alpha-2 code, e.g. DE.")
@click.option("--label", "labels", multiple=True, help="key=value, repeatable.")
@click.option("--endpoint", default=None)
@click.option(
    "--cpu-limit",
    type=click.FloatRange(min=0),
    default=None,
    help="The most CPU its heartbeats may claim (with --memory-limit).",
)
@click.option(
    "--memory-limit",
    type=click.IntRange(min=0),
    default=None,
    help="The most memory (MB) its heartbeats may claim (with --cpu-limit).",
)
@click.pass_context
def region_add(
    ctx: click.Context,
    name: str,
    country: str,
    labels: tuple[str, ...],
    endpoint: str | None,
    cpu_limit: float | None,
    memory_limit: int | None,
) -> None:
    """Register region NAME in COUNTRY and print its token (shown once)."""
    parsed: dict[str, str] = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep:
            raise click.BadParameter(f"{label!r} is not key=value", param_hint="--label")
        parsed[key] = value
    if (cpu_limit is None) != (memory_limit is None):
        raise click.UsageError("--cpu-limit and --memory-limit go together")
    limit = {"cpu": cpu_limit, "memory_mb": memory_limit} if cpu_limit is not None else None
    answer = call(
        ctx,
        lambda c: c.register_region(
            name, country=country, labels=parsed, endpoint=endpoint, capacity_limit=limit
        ),
    )
    console.print(f"region [bold]{name}[/] registered in {answer['region']['country']}")
    console.print(f"region token (shown once): {answer['token']}")


@region.command("limit")
@click.argument("name")
@click.option("--cpu", type=click.FloatRange(min=0), default=None)
@click.option("--memory", "memory_mb", type=click.IntRange(min=0), default=None, help="MB")
@click.option("--remove", is_flag=True, help="Lift the ceiling.")
@click.pass_context
def region_limit(
    ctx: click.Context, name: str, cpu: float | None, memory_mb: int | None, remove: bool
) -> None:
    """Set (admin) the most region NAME's heartbeats may claim, or --remove it."""
    if remove == (cpu is not None or memory_mb is not None) or (cpu is None) != (memory_mb is None):
        raise click.UsageError("give --cpu and --memory, or --remove")
    limit = None if remove else {"cpu": cpu, "memory_mb": memory_mb}
    answer = call(ctx, lambda c: c.set_capacity_limit(name, limit))
    ceiling = answer["capacity_limit"]
    shown = f"cpu {ceiling['cpu']:g}, memory {ceiling['memory_mb']} MB" if ceiling else "none"
    console.print(f"region {name}: capacity ceiling {shown}")


@region.command("list")
@click.pass_context
def region_list(ctx: click.Context) -> None:
    """Show every region with its state."""
    answer = call(ctx, lambda c: c.regions())
    console.print(_region_table(answer["items"]))


@region.command("cordon")
@click.argument("name")
@click.option("--reason", default="")
@click.pass_context
def region_cordon(ctx: click.Context, name: str, reason: str) -> None:
    """Stop placing anything new in region NAME."""
    answer = call(ctx, lambda c: c.cordon(name, reason))
    console.print(f"region {name}: {answer['state']}")


@region.command("uncordon")
@click.argument("name")
@click.pass_context
def region_uncordon(ctx: click.Context, name: str) -> None:
    """Let region NAME take placements again."""
    answer = call(ctx, lambda c: c.uncordon(name))
    console.print(f"region {name}: {answer['state']}")
