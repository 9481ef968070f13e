"""`federation plan`, `diff` and `apply`: a directory of groups, policies, services,
region labels and secrets' metadata, planned as one by the server (`POST /v1/plan`)
and applied resource by resource.

Exit codes follow `terraform plan -detailed-exitcode` (docs/gitops.md): 0 no changes,
1 an error (a usage error too, which click would make 2), 2 changes, 3 changes that
would leave a service without compliant room. `apply` writes in dependency order, each
write with the revision the plan saw as `If-Match`, so a resource changed since the
plan is a 409 and is not overwritten; with `--plan FILE` (a saved `plan -o json`) it
first checks that nothing the plan covers has moved, and writes nothing if it has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from federation.cli.documents import SET_KINDS, Document, load_set
from federation.cli.gitops_render import markdown, show_diff, show_plan
from federation.cli.render import console, err_console, print_api_error
from federation.cli.services import wait_running
from federation.cli.session import call
from federation.client import ApiClient, ApiError

JSON = dict[str, Any]
MANAGED_BY = "managed-by"
# Regions join by registration and secrets hold values files never do: neither is
# deleted for being absent from the files.
PRUNABLE = ("group", "policy", "service", "drill-schedule")
EXIT_ERROR = 1


class _UsageError(click.UsageError):
    exit_code = EXIT_ERROR


class _UsageExitsOne(click.Command):
    """A command whose usage errors exit 1, not click's 2: for `plan`, 2 means changes."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _UsageError(exc.format_message(), exc.ctx) from None


def _fail(message: str) -> None:
    err_console.print(f"[red]error[/red] {escape(message)}")
    raise SystemExit(EXIT_ERROR)


def _documents(paths: tuple[Path, ...], prune: bool) -> tuple[list[Document], JSON | None]:
    """The documents of PATHS, and the `--prune` selector (their common managed-by
    label); exit 1 naming every document that did not load."""
    docs, errors = load_set(paths)
    for error in errors:
        err_console.print(f"[red]error[/red] {escape(error)}")
    if errors:
        raise SystemExit(EXIT_ERROR)
    if not docs:
        _fail("no documents (" + ", ".join(SET_KINDS) + ") in " + ", ".join(map(str, paths)))
    if not prune:
        return docs, None
    values = {
        d.body.get("labels", {}).get(MANAGED_BY) if isinstance(d.body.get("labels"), dict) else None
        for d in docs
        if d.kind in PRUNABLE
    }
    if len(values) != 1 or None in values:
        _fail(
            f"--prune deletes what carries the same {MANAGED_BY} label as the files: every "
            f"document needs labels: {{{MANAGED_BY}: NAME}}, the same NAME (found: "
            f"{', '.join(sorted(map(str, values)))})"
        )
    return docs, {MANAGED_BY: values.pop()}


def _ask(ctx: click.Context, docs: list[Document], prune: JSON | None) -> JSON:
    body = [{"kind": d.kind, "spec": d.body} for d in docs]

    async def go(client: ApiClient) -> JSON:
        return await client.plan(body, prune=prune)

    return call(ctx, go)


_FILES = click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A YAML file or a directory of them (repeatable).",
)
_PRUNE = click.option(
    "--prune",
    is_flag=True,
    help=f"Also delete what carries the files' {MANAGED_BY} label but is not in them.",
)


@click.command("plan", cls=_UsageExitsOne)
@_FILES
@_PRUNE
@click.option("-o", "--output", type=click.Choice(["table", "json", "markdown"]), default="table")
@click.pass_context
def plan(ctx: click.Context, paths: tuple[Path, ...], prune: bool, output: str) -> None:
    """What applying PATHS would change: resources, replicas, rejections, warnings.
    Exit 0 no changes, 1 error, 2 changes, 3 a service left without compliant room."""
    docs, selector = _documents(paths, prune)
    answer = _ask(ctx, docs, selector)
    if output == "json":
        click.echo(json.dumps(answer, indent=2, sort_keys=True))
    elif output == "markdown":
        click.echo(markdown(answer))
    else:
        show_plan(answer)
    raise SystemExit(int(answer["exit_code"]))


@click.command("diff", cls=_UsageExitsOne)
@_FILES
@_PRUNE
@click.pass_context
def diff(ctx: click.Context, paths: tuple[Path, ...], prune: bool) -> None:
    """The field-level difference between PATHS and what is stored. Exit 0 none,
    1 error, 2 differences."""
    docs, selector = _documents(paths, prune)
    answer = _ask(ctx, docs, selector)
    if answer["problems"]:
        show_plan(answer)
        raise SystemExit(EXIT_ERROR)
    changed = show_diff(answer)
    raise SystemExit(2 if changed else 0)


def _moved_since(saved: JSON, fresh: JSON) -> list[str]:
    """Resources whose stored revision or planned action differs between two plans."""
    was = {(r["kind"], r["name"]): r for r in saved.get("resources", [])}
    now = {(r["kind"], r["name"]): r for r in fresh["resources"]}
    moved = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key), now.get(key)
        if a is None or b is None or a["revision"] != b["revision"] or a["action"] != b["action"]:
            seen = f"revision {a['revision']}" if a else "not in the plan"
            found = f"revision {b['revision']}" if b else "not planned now"
            moved.append(f"{key[0]} {key[1]}: {seen} in the plan, {found} now")
    return moved


def _write_order(resources: list[JSON]) -> list[JSON]:
    """Creates and updates in dependency order (SET_KINDS), then deletes the other way
    round."""
    rank = {kind: i for i, kind in enumerate(SET_KINDS)}
    writes = [r for r in resources if r["action"] in ("create", "update")]
    deletes = [r for r in resources if r["action"] == "delete"]
    writes.sort(key=lambda r: rank[r["kind"]])
    deletes.sort(key=lambda r: -rank[r["kind"]])
    return writes + deletes


@click.command("apply", cls=_UsageExitsOne)
@_FILES
@_PRUNE
@click.option(
    "--plan",
    "saved",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A plan saved with `plan -o json`: apply only if nothing it covers has moved.",
)
@click.option("--wait", is_flag=True, help="Show progress until the services run.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds --wait waits.")
@click.pass_context
def apply(
    ctx: click.Context,
    paths: tuple[Path, ...],
    prune: bool,
    saved: Path | None,
    wait: bool,
    timeout: float,
) -> None:
    """Apply PATHS: region labels, groups, policies, then services (deletes last, with
    --prune), each only if unchanged since the plan (If-Match). Secrets are checked,
    never written."""
    docs, selector = _documents(paths, prune)
    reviewed: JSON | None = None
    if saved is not None:
        try:
            reviewed = json.loads(saved.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"{saved}: not a saved plan ({exc})")
        if not isinstance(reviewed, dict) or "resources" not in reviewed:
            _fail(f"{saved}: not a saved plan (run `federation plan -o json`)")
    bodies = {(d.kind, d.name): d.body for d in docs}

    async def go(client: ApiClient) -> int:
        fresh = await client.plan([{"kind": d.kind, "spec": d.body} for d in docs], prune=selector)
        if fresh["problems"]:
            show_plan(fresh)
            return EXIT_ERROR
        the_plan = fresh
        if reviewed is not None:
            moved = _moved_since(reviewed, fresh)
            if moved:
                err_console.print(
                    "[red]conflict[/red] (HTTP 409): changed since the plan; nothing applied"
                )
                for line in moved:
                    err_console.print(escape(f"  {line}"))
                return EXIT_ERROR
            the_plan = reviewed
        show_plan(the_plan)
        steps = _write_order(the_plan["resources"])
        generations: dict[str, int] = {}
        for done, r in enumerate(steps):
            kind, name, action = r["kind"], r["name"], r["action"]
            try:
                if action == "delete":
                    await client.delete_resource(kind, name, if_match=r["revision"])
                else:
                    answer = await client.put_resource(
                        kind, name, bodies[(kind, name)], if_match=r["revision"]
                    )
                    if kind == "service":
                        generations[name] = int(answer["generation"])
            except ApiError as exc:
                print_api_error(exc, f"{kind} {name}")
                if exc.status == 409:
                    err_console.print(
                        f"{kind} {escape(name)} changed since the plan; stopped after "
                        f"{done} of {len(steps)} changes: plan again"
                    )
                return EXIT_ERROR
            console.print(f"{kind} [bold]{escape(name)}[/] {action}d")
        if not steps:
            console.print("nothing to apply")
        if wait and generations:
            return EXIT_ERROR if await wait_running(client, generations, timeout) else 0
        return 0

    raise SystemExit(call(ctx, go))
