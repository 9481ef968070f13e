"""Administration: `federation token` (API tokens), `audit` (the tamper-evident log)
and `backup` (an etcd snapshot of the whole federation)."""

from __future__ import annotations

from pathlib import Path

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
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Check the hash chain; name the first entry that does not verify (exit 1)."""
    result = call(ctx, lambda c: c.audit_verify())
    if result["ok"]:
        console.print(f"ok: {result['entries']} entries verify (head {result['head'][:16]})")
        return
    err_console.print(
        f"[red]audit log does not verify[/red] (first bad entry: {result['first_bad']}): "
        f"{escape(str(result['reason']))}"
    )
    raise SystemExit(1)


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
    from federation.store import Store, StoreUnavailable

    async def snapshot() -> int:
        async with Store([e.strip() for e in etcd.split(",") if e.strip()]) as store:
            return await store.snapshot(file)

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
