"""`federation policy` and `federation group`: data-residency policies and the
jurisdiction groups they name (apply, list, delete, evaluate)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.documents import apply_order, load_documents
from federation.cli.render import console, entries, err_console, print_api_error
from federation.cli.session import call
from federation.client import ApiClient, ApiError


@click.group("policy")
def policy() -> None:
    """Apply, list and evaluate data-residency policies."""


@policy.command("apply")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--dry-run", is_flag=True, help="Validate and show warnings; change nothing.")
@click.pass_context
def policy_apply(ctx: click.Context, files: tuple[Path, ...], dry_run: bool) -> None:
    """Create or update the policies and groups in FILES (YAML, several documents each)."""
    docs, errors = load_documents(files)
    for error in errors:
        err_console.print(f"[red]error[/red] {escape(error)}")

    async def apply_all(client: ApiClient) -> int:
        failed = 0
        shown: set[str] = set()
        for doc in apply_order(docs):
            put = client.put_policy if doc.kind == "policy" else client.put_group
            try:
                answer = await put(doc.name, doc.body, dry_run=dry_run)
            except ApiError as exc:
                print_api_error(exc, f"{doc.source}: {doc.kind} {doc.name}")
                if exc.status == 0:  # the server is not there: the rest would fail alike
                    return failed + 1
                failed += 1
                continue
            verb = "created" if answer.get("created") else "updated"
            if dry_run:
                console.print(f"{doc.kind} [bold]{doc.name}[/] would be {verb} (dry run)")
            else:
                console.print(
                    f"{doc.kind} [bold]{doc.name}[/] {verb} (revision {answer['revision']})"
                )
            # Warnings are about all policies, so later answers repeat them: show each once.
            for warning in answer.get("warnings", []):
                if warning not in shown:
                    shown.add(warning)
                    console.print(f"  [yellow]warning[/yellow]: {escape(warning)}")
        return failed

    failed = call(ctx, apply_all)
    if errors or failed:
        raise SystemExit(1)


@policy.command("list")
@click.pass_context
def policy_list(ctx: click.Context) -> None:
    """Show every policy."""
    answer = call(ctx, lambda c: c.policies())
    table = Table(title="policies")
    for col in ("name", "mode", "data classes", "allow", "deny", "exemptions"):
        table.add_column(col)
    for item in answer["items"]:
        if item.get("malformed"):
            table.add_row(
                item["name"],
                "[red]malformed[/]",
                entries(item.get("data_classes")),
                f"[red]{escape(item['error'])}[/]",
                "",
                "",
            )
            continue
        mode = item["mode"]
        table.add_row(
            item["name"],
            f"[yellow]{mode}[/]" if mode == "audit" else mode,
            entries(item["data_classes"]),
            entries(item["allow"]) if item["allow"] else "any country",
            entries(item["deny"]),
            str(len(item["exemptions"])),
        )
    console.print(table)


@policy.command("delete")
@click.argument("name")
@click.pass_context
def policy_delete(ctx: click.Context, name: str) -> None:
    """Delete policy NAME."""
    call(ctx, lambda c: c.delete_policy(name))
    console.print(f"policy {name} deleted")


@policy.command("evaluate")
@click.option("--data-class", "data_classes", multiple=True, help="Repeatable; none = public.")
@click.option("--service", default=None, help="Apply this service's exemptions.")
@click.option("--at", default=None, help="Evaluate at this instant (ISO 8601 with zone).")
@click.pass_context
def policy_evaluate(
    ctx: click.Context, data_classes: tuple[str, ...], service: str | None, at: str | None
) -> None:
    """Show, for every region, whether data of these classes may be placed there, and why."""
    answer = call(ctx, lambda c: c.evaluate(list(data_classes), service=service, at=at))
    shown = ", ".join(answer["data_classes"]) or "none (public)"
    table = Table(title=f"residency for data classes: {shown}")
    for col in ("region", "country", "verdict", "reasons"):
        table.add_column(col)
    for verdict in answer["regions"]:
        mark = "[green]allowed[/]" if verdict["allowed"] else "[red]rejected[/]"
        table.add_row(
            verdict["region"],
            verdict["country"] or "-",
            mark,
            escape("\n".join(verdict["reasons"])),
        )
    console.print(table)
    bound = ", ".join(answer["bound_policies"]) or "none"
    console.print(f"bound policies: {bound}")
    for finding in answer["audit_findings"]:
        console.print(f"[yellow]audit[/yellow] {finding['region']}: {escape(finding['reason'])}")
    for warning in answer["warnings"]:
        console.print(f"[yellow]warning[/yellow]: {escape(warning)}")


@click.group("group")
def group() -> None:
    """Show jurisdiction groups (built-in and admin-defined)."""


@group.command("list")
@click.pass_context
def group_list(ctx: click.Context) -> None:
    """Show every group; built-in ones with their members in force today."""
    answer = call(ctx, lambda c: c.groups())
    table = Table(title="groups")
    for col in ("name", "kind", "countries"):
        table.add_column(col)
    for item in answer["items"]:
        if item.get("malformed"):
            table.add_row(item["name"], "[red]malformed[/]", f"[red]{escape(item['error'])}[/]")
            continue
        kind = "built-in" if item["builtin"] else "admin"
        table.add_row(item["name"], kind, entries(item["countries"]))
    console.print(table)
