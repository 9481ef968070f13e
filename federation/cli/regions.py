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
            f"{free['cpu']:g}/{cap['cpu']:g}",
            ", ".join(f"{k}={v}" for k, v in item["labels"].items()),
        )
    return table


@region.command("add")
@click.argument("name")
@click.option("--country", required=True, help="ISO 3166-1 alpha-2 code, e.g. DE.")
@click.option("--label", "labels", multiple=True, help="key=value, repeatable.")
@click.option("--endpoint", default=None)
@click.pass_context
def region_add(
    ctx: click.Context, name: str, country: str, labels: tuple[str, ...], endpoint: str | None
) -> None:
    """Register region NAME in COUNTRY and print its token (shown once)."""
    parsed: dict[str, str] = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep:
            raise click.BadParameter(f"{label!r} is not key=value", param_hint="--label")
        parsed[key] = value
    answer = call(
        ctx, lambda c: c.register_region(name, country=country, labels=parsed, endpoint=endpoint)
    )
    console.print(f"region [bold]{name}[/] registered in {answer['region']['country']}")
    console.print(f"region token (shown once): {answer['token']}")


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
