"""Administration: `federation token` (API tokens), `audit` (the tamper-evident log)
and `backup` (an etcd snapshot of the whole federation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.render import console, err_console, moment
from federation.cli.session import call, run


@click.group("token")
def token() -> None:
    """Make, list and revoke API tokens (admin)."""


@token.command("create")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["admin", "operator", "viewer", "region"]),
    help="What the token may do.",
)
@click.option("--region", "region_name", default=None, help="The region (role region only).")
@click.option("--ttl", type=int, default=None, help="Seconds until it expires (default: never).")
@click.option("--description", default="", help="Who or what the token is for.")
@click.pass_context
def token_create(
    ctx: click.Context, role: str, region_name: str | None, ttl: int | None, description: str
) -> None:
    """Make a token; its secret is printed once, on stdout, and never shown again."""
    made = call(
        ctx,
        lambda c: c.create_token(role=role, region=region_name, ttl_s=ttl, description=description),
    )
    expires = made.get("expires_at") or "never"
    err_console.print(f"token [bold]{made['id']}[/] ({made['role']}), expires {expires}")
    # Only the secret on stdout, so `$(federation token create ...)` captures just it.
    click.echo(made["token"])


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """Every token: id, role, region, created, expires, description (never a secret)."""
    data = call(ctx, lambda c: c.tokens())
    table = Table(title="tokens")
    for col in ("id", "role", "region", "created", "expires", "description"):
        table.add_column(col)
    for item in data["items"]:
        table.add_row(
            item["id"],
            item["role"],
            item.get("region") or "",
            moment(item["created_at"]),
            moment(item.get("expires_at")),
            escape(item.get("description") or ""),
        )
    console.print(table)


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke token TOKEN_ID; every server replica refuses it from now on."""
    call(ctx, lambda c: c.revoke_token(token_id))
    console.print(f"token {token_id} revoked")


@click.group("audit")
def audit() -> None:
    """Read and verify the tamper-evident audit log (admin)."""


@audit.command("verify")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A checkpoint from `audit checkpoint`: also fail when the log no longer holds it.",
)
@click.pass_context
def audit_verify(ctx: click.Context, checkpoint_file: Path | None) -> None:
    """Check the hash chain; name the first entry that does not verify (exit 1).

    With --checkpoint, the server checks the checkpoint's signature with its own key,
    then that the log still holds the entry it signed, and that every entry after it
    verifies: a log cut back, wiped or rewritten since then fails (exit 1)."""
    checkpoint = _read_checkpoint(checkpoint_file) if checkpoint_file else None
    result = call(ctx, lambda c: c.audit_verify(checkpoint=checkpoint))
    against = f", checkpoint seq {result['checkpoint']} held" if result.get("checkpoint") else ""
    if result["ok"]:
        console.print(
            f"ok: {result['entries']} entries verify (head {result['head'][:16]}){against}"
        )
        return
    err_console.print(
        f"[red]audit log does not verify[/red] (first bad entry: {result['first_bad']}): "
        f"{escape(str(result['reason']))}"
    )
    raise SystemExit(1)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]cannot read checkpoint {escape(str(path))}[/red]: {exc}")
        raise SystemExit(1) from None
    if not isinstance(found, dict):
        err_console.print(f"[red]{escape(str(path))} is not a checkpoint[/red] (not an object)")
        raise SystemExit(1)
    return found


@audit.command("checkpoint")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write it to this file (default: stdout).",
)
@click.pass_context
def audit_checkpoint(ctx: click.Context, output: Path | None) -> None:
    """Sign the head of the audit log (it must verify) with the server's audit key.

    Keep the file where whoever runs etcd cannot write (a ticket, a WORM bucket), and
    check the log against it with `audit verify --checkpoint FILE`."""
    signed = call(ctx, lambda c: c.audit_checkpoint())
    text = json.dumps(signed, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        err_console.print(f"[red]cannot write {escape(str(output))}[/red]: {exc.strerror}")
        raise SystemExit(1) from None
    err_console.print(f"checkpoint seq {signed['seq']} written to {escape(str(output))}")


@audit.command("list")
@click.option("--since", default=0, show_default=True, type=click.IntRange(0), help="After seq.")
@click.pass_context
def audit_list(ctx: click.Context, since: int) -> None:
    """Entries after --since, oldest first."""
    data = call(ctx, lambda c: c.audit(since=since))
    table = Table(title="audit")
    for col in ("seq", "at", "actor", "action", "resource", "before", "after"):
        table.add_column(col)
    for item in data["items"]:
        table.add_row(
            str(item["seq"]),
            moment(item["at"]),
            escape(item["actor"]),
            item["action"],
            escape(item["resource"]),
            str(item.get("before_revision") if item.get("before_revision") is not None else ""),
            str(item.get("after_revision", "")),
        )
    console.print(table)


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--etcd",
    "etcd",
    default="127.0.0.1:2379",
    show_default=True,
    help="etcd endpoints, comma-separated.",
)
def backup(file: Path, etcd: str) -> None:
    """Write an etcd snapshot of the whole federation to FILE (see docs/operations.md
    for the restore)."""
    from federation.store import Store, StoreUnavailable, maintenance

    async def snapshot() -> int:
        async with Store([e.strip() for e in etcd.split(",") if e.strip()]) as store:
            return await maintenance.snapshot(store, file)

    try:
        size = run(snapshot())
    except StoreUnavailable as exc:
        err_console.print(f"[red]backup failed[/red]: {escape(str(exc))}")
        raise SystemExit(1) from None
    except OSError as exc:
        where = exc.filename or file
        err_console.print(f"[red]backup failed[/red]: {escape(str(where))}: {exc.strerror}")
        raise SystemExit(1) from None
    console.print(f"snapshot written to {file} ({size} bytes)")
