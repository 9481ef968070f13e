"""`federation secret`: write secrets, list their metadata, rotate them, rewrap them.

Values are given as `KEY=VALUE` or, better (a command line is seen by `ps`),
`KEY=@FILE` (the file's content, one trailing newline dropped) or `KEY=@-` (stdin).
Nothing the server answers holds a value: the tables show keys and fingerprints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.render import console, err_console, moment
from federation.cli.services import wait_running
from federation.cli.session import call
from federation.client import ApiClient


@click.group("secret")
def secret() -> None:
    """Secrets: sealed at rest, never shown, delivered only where residency allows."""


def _values(pairs: tuple[str, ...]) -> dict[str, str]:
    data: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{key or pair!r}: expected KEY=VALUE or KEY=@FILE")
        if value == "@-":
            value = sys.stdin.read().removesuffix("\n")
        elif value.startswith("@"):
            try:
                value = Path(value[1:]).read_text().removesuffix("\n")
            except OSError as exc:
                raise click.BadParameter(
                    f"{key}: cannot read {value[1:]}: {exc.strerror}"
                ) from None
        data[key] = value
    return data


def _show(answer: dict[str, Any]) -> None:
    rolled = answer.get("rolled") or []
    console.print(
        f"secret [bold]{escape(answer['name'])}[/] version {answer['version']} "
        f"({escape(answer.get('outcome', ''))}); data classes: "
        f"{escape(', '.join(answer['data_classes']))}"
    )
    table = Table(title="keys (values are never shown)")
    table.add_column("key")
    table.add_column("fingerprint")
    for key, fp in answer["fingerprints"].items():
        table.add_row(escape(key), fp)
    console.print(table)
    if rolled:
        console.print(f"rolling out to: {escape(', '.join(rolled))}")


@secret.command("set")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True)
@click.option(
    "--data-class",
    "data_classes",
    multiple=True,
    required=True,
    help="A data class of the secret (repeat for several; `public` for none).",
)
@click.pass_context
def secret_set(
    ctx: click.Context, name: str, pairs: tuple[str, ...], data_classes: tuple[str, ...]
) -> None:
    """Create or replace secret NAME with KEY=VALUE, KEY=@FILE or KEY=@- (stdin) pairs."""
    data = _values(pairs)
    _show(call(ctx, lambda c: c.put_secret(name, data_classes=list(data_classes), data=data)))


@secret.command("rotate")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the rollout.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def secret_rotate(
    ctx: click.Context, name: str, pairs: tuple[str, ...], wait: bool, timeout: float
) -> None:
    """A new version of NAME with these keys' new values; every service using it rolls
    region by region, each waiting for health."""
    data = _values(pairs)

    async def run(client: ApiClient) -> int:
        answer = await client.rotate_secret(name, data)
        _show(answer)
        if not wait or not answer.get("rolled"):
            return 0
        # Each rolled service runs its newest generation (the rotation's) when done.
        rolled = list(answer["rolled"])
        wanted = {n: int((await client.service(n))["generation"]) for n in rolled}
        return await wait_running(client, wanted, timeout)

    if call(ctx, run):
        raise SystemExit(1)


@secret.command("list")
@click.pass_context
def secret_list(ctx: click.Context) -> None:
    """Every secret's metadata: keys, version, data classes, KEKs, who and when."""
    answer = call(ctx, lambda c: c.secrets())
    table = Table(title="secrets (values are never shown)")
    for col in ("name", "version", "data classes", "keys", "kek", "updated", "by"):
        table.add_column(col)
    for item in answer["items"]:
        table.add_row(
            escape(item["name"]),
            str(item["version"]),
            escape(", ".join(item["data_classes"])),
            escape(", ".join(item["keys"])),
            escape(", ".join(item["keks"])),
            moment(item["updated_at"]),
            escape(item["updated_by"]),
        )
    console.print(table)


@secret.command("show")
@click.argument("name")
@click.pass_context
def secret_show(ctx: click.Context, name: str) -> None:
    """One secret's metadata: a fingerprint per key (never a value), who and when."""
    answer = call(ctx, lambda c: c.secret(name))
    _show(
        {**answer, "outcome": f"updated {moment(answer['updated_at'])} by {answer['updated_by']}"}
    )


@secret.command("delete")
@click.argument("name")
@click.pass_context
def secret_delete(ctx: click.Context, name: str) -> None:
    """Delete secret NAME (refused while a service references it)."""
    call(ctx, lambda c: c.delete_secret(name))
    console.print(f"secret [bold]{escape(name)}[/] deleted")


@secret.command("rewrap")
@click.pass_context
def secret_rewrap(ctx: click.Context) -> None:
    """Wrap every secret's keys with the server's primary KEK (after a KEK rotation;
    the old KEK stays accepted until this is done)."""
    answer = call(ctx, lambda c: c.rewrap_secrets())
    console.print(
        f"rewrapped {len(answer['rewrapped'])} of {answer['secrets']} secrets with KEK "
        f"{escape(answer['kek'])}"
    )
    unopened = answer.get("unopened") or []
    if unopened:
        err_console.print(
            f"[red]{len(unopened)} secret(s) have a key no KEK of the server opens[/]: "
            f"{escape(', '.join(unopened))}. Put the old KEK back in the file and run "
            "this again, or set their values anew (`federation secret set`)."
        )
        raise SystemExit(1)


@secret.command("new-kek")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def secret_new_kek(file: Path) -> None:
    """Put a new primary KEK first in the KEK FILE (made 0600 if new). Copy it to every
    server, then run `federation secret rewrap`, then remove the old key's line."""
    from federation.model.secret import KeyringError
    from federation.processes.certs import add_kek

    try:
        kek_id = add_kek(file)
    except (KeyringError, OSError) as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    console.print(f"new primary KEK {kek_id} in {file}; now run `federation secret rewrap`")
