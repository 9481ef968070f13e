"""The `federation` command: run the server, an agent or a local federation; talk to the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from federation.client import ApiClient, ApiError, tls_context

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)


def _setup_logging(level: str, fmt: str = "text") -> None:
    from federation.telemetry.logs import JsonFormatter, RedactingFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    # gRPC and aiohttp access logs are noise at INFO for operators.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def _api_call(ctx: click.Context, fn: Callable[[ApiClient], Awaitable[T]]) -> T:
    """Run one API interaction; print a readable error and exit 1 on failure."""
    url, token = ctx.obj["url"], ctx.obj["token"]
    tls = tls_context(ctx.obj.get("ca"))

    async def go() -> T:
        async with ApiClient(url, token, ssl_context=tls) as client:
            return await fn(client)

    try:
        return _run(go())
    except ApiError as exc:
        where = f"HTTP {exc.status}" if exc.status else "no answer"
        err_console.print(f"[red]error[/red] ({where}): {exc.message}")
        if exc.details:
            for detail in exc.details if isinstance(exc.details, list) else [exc.details]:
                err_console.print(f"  {detail}")
        raise SystemExit(1) from None


@click.group()
@click.option("--url", envvar="FEDERATION_URL", default="http://127.0.0.1:8080", show_default=True)
@click.option("--token", envvar="FEDERATION_TOKEN", default=None, help="API bearer token.")
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line (time, level, logger, message, trace_id, span_id).",
)
@click.option(
    "--ca",
    "ca",
    envvar="FEDERATION_CA",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify an HTTPS server with this CA (or FEDERATION_CA).",
)
@click.pass_context
def main(
    ctx: click.Context,
    url: str,
    token: str | None,
    log_level: str,
    log_format: str,
    ca: Path | None,
) -> None:
    """Federate datacenters in several countries under data-residency rules."""
    ctx.ensure_object(dict)
    ctx.obj.update(url=url, token=token, ca=ca)
    _setup_logging(log_level, log_format)


# -- server ---------------------------------------------------------------------------


@main.command()
@click.option(
    "--etcd",
    "etcd",
    default="127.0.0.1:2379",
    show_default=True,
    help="etcd endpoints, comma-separated.",
)
@click.option("--prefix", default="/federation/", show_default=True, help="etcd key prefix.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--region-ttl",
    default=10,
    show_default=True,
    type=click.IntRange(2, 3600),
    help="Seconds without a heartbeat before a region is unreachable.",
)
@click.option(
    "--election-ttl",
    default=10,
    show_default=True,
    type=click.IntRange(2, 3600),
    help="Seconds before a standby replaces a silent controller leader.",
)
@click.option("--identity", default=None, help="This replica's name (default: host-pid).")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve HTTPS with this certificate (PEM, chain first).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The certificate's private key (PEM).",
)
@click.option(
    "--client-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--etcd-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Talk to etcd over TLS, verifying it with this CA.",
)
@click.option(
    "--etcd-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Client certificate for etcd (mutual TLS).",
)
@click.option(
    "--etcd-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Key of the etcd client certificate.",
)
@click.option(
    "--etcd-user", default=None, help="etcd user (password from FEDERATION_ETCD_PASSWORD)."
)
def serve(
    etcd: str,
    prefix: str,
    host: str,
    port: int,
    region_ttl: int,
    election_ttl: int,
    identity: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_user: str | None,
) -> None:
    """Run a federation server: the API on every replica, the controller on the leader."""
    from aiohttp import web

    from federation.api.app import create_app
    from federation.api.context import ServerConfig
    from federation.runtime import tune_gc
    from federation.telemetry.setup import configure_from_env

    # Before the application is built: the aiohttp instrumentation hooks its creation.
    configure_from_env("federation-server")
    config = ServerConfig(
        etcd_endpoints=tuple(e.strip() for e in etcd.split(",") if e.strip()),
        prefix=prefix,
        host=host,
        port=port,
        region_ttl=region_ttl,
        election_ttl=election_ttl,
        identity=identity or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}",
        admin_token=os.environ.get("FEDERATION_ADMIN_TOKEN") or None,
        etcd_ca=etcd_ca,
        etcd_cert=etcd_cert,
        etcd_key=etcd_key,
        etcd_user=etcd_user,
        etcd_password=os.environ.get("FEDERATION_ETCD_PASSWORD") or None,
    )
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if client_ca is not None and tls_cert is None:
        raise click.UsageError("--client-ca needs --tls-cert and --tls-key")
    ssl_context = None
    scheme = "http"
    if tls_cert is not None and tls_key is not None:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_context.load_cert_chain(tls_cert, tls_key)
        if client_ca is not None:
            ssl_context.load_verify_locations(client_ca)
            ssl_context.verify_mode = ssl.CERT_REQUIRED
        scheme = "https"
    tune_gc()
    web.run_app(
        create_app(config),
        host=host,
        port=port,
        ssl_context=ssl_context,
        print=lambda *_: click.echo(
            f"federation server {config.identity} on {scheme}://{host}:{port}"
        ),
        access_log=None,
        handle_signals=True,
    )


@main.command()
@click.option(
    "--server",
    envvar="FEDERATION_URL",
    required=True,
    help="Federation server URL; several, comma-separated, to fail over between.",
)
@click.option("--region", required=True, help="The region this agent speaks for.")
@click.option(
    "--token",
    "region_token",
    envvar="FEDERATION_REGION_TOKEN",
    required=True,
    help="The region's token (or FEDERATION_REGION_TOKEN, which keeps it out of `ps`).",
)
@click.option("--driver", type=click.Choice(["process"]), default="process", show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where instances are recorded and logged (default: ./.federation-agent-REGION).",
)
@click.option("--cpu", type=float, default=None, help="CPU to offer (default: this host's).")
@click.option("--memory-mb", type=int, default=None, help="Memory to offer (default: host's).")
@click.option(
    "--keep-instances",
    is_flag=True,
    help="On stop, leave instances running for the next agent to adopt (upgrades).",
)
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Verify the server's certificate with this CA (PEM).",
)
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Client certificate for mutual TLS (PEM).",
)
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Key of the client certificate (PEM).",
)
def agent(
    server: str,
    region: str,
    region_token: str,
    driver: str,
    state_dir: Path | None,
    cpu: float | None,
    memory_mb: int | None,
    keep_instances: bool,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> None:
    """Run a region master: heartbeats for REGION and runs what is assigned to it."""
    from federation.agent.loop import Agent, AgentConfig, local_capacity
    from federation.telemetry.setup import configure_from_env

    configure_from_env(f"federation-agent-{region}")

    host_cpu, host_mem = local_capacity()
    config = AgentConfig(
        server=server,
        region=region,
        token=region_token,
        cpu=cpu if cpu is not None else host_cpu,
        memory_mb=memory_mb if memory_mb is not None else host_mem,
        state_dir=state_dir or Path(f".federation-agent-{region}"),
        keep_instances=keep_instances,
        ca=ca,
        cert=cert,
        key=key,
    )

    async def run() -> None:
        task = asyncio.create_task(Agent(config).run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    click.echo(f"agent for region {region} -> {server} (driver {driver})")
    _run(run())


@main.command()
@click.option("--port", default=8080, show_default=True, type=int, help="API port.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".federation"),
    show_default=True,
    help="Where etcd data, tokens and logs are kept.",
)
@click.option("--region-ttl", default=10, show_default=True, type=click.IntRange(2, 3600))
@click.option(
    "--etcd-members",
    default=1,
    show_default=True,
    type=click.IntRange(1, 7),
    help="etcd cluster size (3 for the production topology).",
)
@click.option(
    "--servers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 5),
    help="Server replicas, on consecutive ports from --port.",
)
def up(port: int, data_dir: Path, region_ttl: int, etcd_members: int, servers: int) -> None:
    """Start a local federation: etcd, a server and four demo regions (Ctrl-C stops all).

    `--etcd-members 3 --servers 2` runs the production topology on this machine."""
    from federation.processes.devcluster import LocalFederation

    federation = LocalFederation(
        data_dir=data_dir,
        port=port,
        region_ttl=region_ttl,
        etcd_members=etcd_members,
        servers=servers,
    )
    raise SystemExit(federation.run_foreground(console))


@main.command()
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

    async def run() -> int:
        async with Store([e.strip() for e in etcd.split(",") if e.strip()]) as store:
            return await store.snapshot(file)

    try:
        size = _run(run())
    except StoreUnavailable as exc:
        err_console.print(f"[red]backup failed[/red]: {escape(str(exc))}")
        raise SystemExit(1) from None
    console.print(f"snapshot written to {file} ({size} bytes)")


# -- regions --------------------------------------------------------------------------


@main.group()
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
            (item.get("last_heartbeat") or "never")[:19].replace("T", " "),
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
    body: dict[str, Any] = {"name": name, "country": country, "labels": parsed}
    if endpoint:
        body["endpoint"] = endpoint
    answer = _api_call(ctx, lambda c: c.request("POST", "/v1/regions", body=body))
    console.print(f"region [bold]{name}[/] registered in {answer['region']['country']}")
    console.print(f"region token (shown once): {answer['token']}")


@region.command("list")
@click.pass_context
def region_list(ctx: click.Context) -> None:
    """Show every region with its state."""
    answer = _api_call(ctx, lambda c: c.request("GET", "/v1/regions"))
    console.print(_region_table(answer["items"]))


@region.command("cordon")
@click.argument("name")
@click.option("--reason", default="")
@click.pass_context
def region_cordon(ctx: click.Context, name: str, reason: str) -> None:
    """Stop placing anything new in region NAME."""
    answer = _api_call(
        ctx, lambda c: c.request("POST", f"/v1/regions/{name}/cordon", body={"reason": reason})
    )
    console.print(f"region {name}: {answer['state']}")


@region.command("uncordon")
@click.argument("name")
@click.pass_context
def region_uncordon(ctx: click.Context, name: str) -> None:
    """Let region NAME take placements again."""
    answer = _api_call(ctx, lambda c: c.request("POST", f"/v1/regions/{name}/uncordon"))
    console.print(f"region {name}: {answer['state']}")


# -- residency policies ---------------------------------------------------------------


@main.group()
def policy() -> None:
    """Apply, list and evaluate data-residency policies."""


@dataclass(frozen=True)
class _Document:
    """One YAML document of `policy apply`: a policy or a group, and where it came from."""

    source: str
    kind: str
    name: str
    body: dict[str, Any]


def _classify(source: str, doc: Any) -> _Document:
    """Tell a policy from a group: `kind:` if given, else `data_classes` or `countries`."""
    if not isinstance(doc, dict):
        raise ValueError("a document must be a mapping (a policy or a group)")
    body = dict(doc)
    kind = body.pop("kind", None)
    if kind is not None:
        kind = str(kind).lower()
        if kind not in ("policy", "group"):
            raise ValueError(f"kind: must be 'policy' or 'group', not {kind!r}")
    elif "data_classes" in body:
        kind = "policy"
    elif "countries" in body:
        kind = "group"
    else:
        raise ValueError(
            "cannot tell a policy (data_classes) from a group (countries); add kind: policy|group"
        )
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("name: required")
    return _Document(source, kind, name, body)


def _load_documents(paths: tuple[Path, ...]) -> tuple[list[_Document], list[str]]:
    """Every document of every file, and the errors that kept some from loading."""
    import yaml

    docs: list[_Document] = []
    errors: list[str] = []
    for path in paths:
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            errors.append(f"{path}: {exc}")
            continue
        for i, doc in enumerate(loaded, start=1):
            if doc is None:  # an empty document, e.g. after a trailing `---`
                continue
            source = f"{path}#{i}" if len(loaded) > 1 else str(path)
            try:
                docs.append(_classify(source, doc))
            except ValueError as exc:
                errors.append(f"{source}: {exc}")
    return docs, errors


def _apply_order(docs: list[_Document]) -> list[_Document]:
    """Groups before policies, and a group after the groups of this batch it includes."""
    groups = {d.name: d for d in docs if d.kind == "group"}
    ordered: list[_Document] = []
    placed: set[str] = set()

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in placed or name in seen:  # a cycle: the server names it (422)
            return
        doc = groups[name]
        for entry in doc.body.get("countries") or []:
            ref = entry.removeprefix("group:") if isinstance(entry, str) else None
            if ref in groups and ref != entry:
                visit(ref, (*seen, name))
        placed.add(name)
        ordered.append(doc)

    for name in groups:
        visit(name, ())
    return ordered + [d for d in docs if d.kind == "policy"]


_COLLECTIONS = {"policy": "/v1/policies", "group": "/v1/groups"}


def _print_api_error(what: str, exc: ApiError) -> None:
    where = f"HTTP {exc.status}" if exc.status else "no answer"
    err_console.print(f"[red]error[/red] {escape(what)} ({where}): {escape(exc.message)}")
    if isinstance(exc.details, list):
        for detail in exc.details:
            if isinstance(detail, dict) and "field" in detail:
                err_console.print(escape(f"  {detail['field']}: {detail.get('message', '')}"))


@policy.command("apply")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--dry-run", is_flag=True, help="Validate and show warnings; change nothing.")
@click.pass_context
def policy_apply(ctx: click.Context, files: tuple[Path, ...], dry_run: bool) -> None:
    """Create or update the policies and groups in FILES (YAML, several documents each)."""
    docs, errors = _load_documents(files)
    for error in errors:
        err_console.print(f"[red]error[/red] {escape(error)}")
    query = "?dry_run=true" if dry_run else ""

    async def apply_all(client: ApiClient) -> int:
        failed = 0
        shown: set[str] = set()
        for doc in _apply_order(docs):
            what = f"{doc.source}: {doc.kind} {doc.name}"
            try:
                answer = await client.request(
                    "PUT", f"{_COLLECTIONS[doc.kind]}/{doc.name}{query}", body=doc.body
                )
            except ApiError as exc:
                _print_api_error(what, exc)
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

    failed = _api_call(ctx, apply_all)
    if errors or failed:
        raise SystemExit(1)


def _entries(values: list[str] | None) -> str:
    return escape(", ".join(values)) if values else "-"


@policy.command("list")
@click.pass_context
def policy_list(ctx: click.Context) -> None:
    """Show every policy."""
    answer = _api_call(ctx, lambda c: c.request("GET", "/v1/policies"))
    table = Table(title="policies")
    for col in ("name", "mode", "data classes", "allow", "deny", "exemptions"):
        table.add_column(col)
    for item in answer["items"]:
        if item.get("malformed"):
            table.add_row(
                item["name"],
                "[red]malformed[/]",
                _entries(item.get("data_classes")),
                f"[red]{escape(item['error'])}[/]",
                "",
                "",
            )
            continue
        mode = item["mode"]
        table.add_row(
            item["name"],
            f"[yellow]{mode}[/]" if mode == "audit" else mode,
            _entries(item["data_classes"]),
            _entries(item["allow"]) if item["allow"] else "any country",
            _entries(item["deny"]),
            str(len(item["exemptions"])),
        )
    console.print(table)


@policy.command("delete")
@click.argument("name")
@click.pass_context
def policy_delete(ctx: click.Context, name: str) -> None:
    """Delete policy NAME."""
    _api_call(ctx, lambda c: c.request("DELETE", f"/v1/policies/{name}"))
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
    body: dict[str, Any] = {"data_classes": list(data_classes)}
    if service:
        body["service"] = service
    if at:
        body["at"] = at
    answer = _api_call(ctx, lambda c: c.request("POST", "/v1/residency/evaluate", body=body))
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


@main.group("group")
def group_cmd() -> None:
    """Show jurisdiction groups (built-in and admin-defined)."""


@group_cmd.command("list")
@click.pass_context
def group_list(ctx: click.Context) -> None:
    """Show every group; built-in ones with their members in force today."""
    answer = _api_call(ctx, lambda c: c.request("GET", "/v1/groups"))
    table = Table(title="groups")
    for col in ("name", "kind", "countries"):
        table.add_column(col)
    for item in answer["items"]:
        if item.get("malformed"):
            table.add_row(item["name"], "[red]malformed[/]", f"[red]{escape(item['error'])}[/]")
            continue
        kind = "built-in" if item["builtin"] else "admin"
        table.add_row(item["name"], kind, _entries(item["countries"]))
    console.print(table)


# -- services -------------------------------------------------------------------------

_PHASE_COLOURS = {
    "Running": "green",
    "Progressing": "cyan",
    "Pending": "yellow",
    "Degraded": "yellow",
    "Failed": "red",
}


def _phase(phase: str) -> str:
    return f"[{_PHASE_COLOURS.get(phase, 'white')}]{phase}[/]"


@main.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait (with a progress bar) until every service is Running.",
)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def deploy(ctx: click.Context, files: tuple[Path, ...], wait: bool, timeout: float) -> None:
    """Create or update the services in FILES (YAML) and wait until they run."""
    import yaml
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    specs: list[dict[str, Any]] = []
    for path in files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            err_console.print(f"[red]error[/red] {escape(str(path))}: not valid YAML ({exc})")
            raise SystemExit(1) from None
        for doc in docs:
            if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
                err_console.print(f"[red]error[/red] {escape(str(path))}: a service needs a name")
                raise SystemExit(1)
            specs.append(doc)

    async def run(client: ApiClient) -> int:
        generations: dict[str, int] = {}
        failed = 0
        for spec in specs:
            try:
                answer = await client.request("PUT", f"/v1/services/{spec['name']}", body=spec)
            except ApiError as exc:
                _print_api_error(f"service {spec['name']}", exc)
                failed += 1
                continue
            generations[spec["name"]] = int(answer["generation"])
            console.print(
                f"service [bold]{spec['name']}[/] accepted (generation {answer['generation']})"
            )
        if not wait or not generations:
            return failed
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} ready"),
            TextColumn("{task.fields[phase]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bars = {name: progress.add_task(name, total=1, phase="Pending") for name in generations}
            pending = set(generations)
            while pending and loop.time() < end:
                for name in sorted(pending):
                    svc = await client.request("GET", f"/v1/services/{name}")
                    st = svc["status"]
                    progress.update(
                        bars[name],
                        total=max(1, st["replicas"]["desired"]),
                        completed=st["replicas"]["ready"],
                        phase=_phase(st["phase"]),
                    )
                    caught_up = st["observed_generation"] >= generations[name]
                    if caught_up and st["phase"] in ("Running", "Failed"):
                        pending.discard(name)
                        if st["phase"] == "Failed":
                            failed += 1
                await asyncio.sleep(0.5)
        for name in sorted(pending):
            svc = await client.request("GET", f"/v1/services/{name}")
            reasons = "; ".join(c["message"] for c in svc["status"]["conditions"])
            err_console.print(
                f"[yellow]{name}[/]: still {svc['status']['phase']} after {timeout:g} s: "
                f"{escape(reasons)}"
            )
        return failed + len(pending)

    if _api_call(ctx, run):
        raise SystemExit(1)


@main.command()
@click.argument("service", required=False)
@click.pass_context
def status(ctx: click.Context, service: str | None) -> None:
    """Show every service (or one, in detail) with its phase and placements."""
    if service is None:
        answer = _api_call(ctx, lambda c: c.request("GET", "/v1/services"))
        table = Table(title="services")
        for col in ("name", "version", "phase", "ready", "placements", "residency"):
            table.add_column(col)
        for item in answer["items"]:
            st = item["status"]
            table.add_row(
                item["name"],
                escape(item["version"]),
                _phase(st["phase"]),
                f"{st['replicas']['ready']}/{st['replicas']['desired']}",
                ", ".join(
                    f"{r} {p['ready']}/{p['desired']}" + (" (draining)" if p["draining"] else "")
                    for r, p in st["placements"].items()
                )
                or "-",
                "[green]compliant[/]" if st["residency"]["compliant"] else "[red]NOT compliant[/]",
            )
        console.print(table)
        return
    item = _api_call(ctx, lambda c: c.request("GET", f"/v1/services/{service}"))
    st = item["status"]
    console.print(
        f"[bold]{item['name']}[/] version {escape(item['version'])} "
        f"generation {item['generation']}: {_phase(st['phase'])}, "
        f"{st['replicas']['ready']}/{st['replicas']['desired']} ready"
    )
    table = Table(title="placements")
    for col in ("region", "country", "desired", "ready", "version", "draining"):
        table.add_column(col)
    for region, p in st["placements"].items():
        table.add_row(
            region,
            st["residency"]["countries"].get(region) or "?",
            str(p["desired"]),
            str(p["ready"]),
            escape(p["version"]),
            "yes" if p["draining"] else "",
        )
    console.print(table)
    for cond in st["conditions"]:
        console.print(f"{cond['type']}: {cond['reason']}: {escape(cond['message'])}")
    policies = ", ".join(f"{n} (rev {r})" for n, r in st["residency"]["policies"].items())
    console.print(f"residency: decided under {policies or 'no policy (public)'}")


@main.command()
@click.argument("service")
@click.pass_context
def explain(ctx: click.Context, service: str) -> None:
    """Every region: chosen or rejected for SERVICE, and why."""
    answer = _api_call(ctx, lambda c: c.request("GET", f"/v1/services/{service}/explain"))
    decision = answer["decision"]
    console.print(
        f"[bold]{service}[/] (data classes: {escape(', '.join(answer['data_classes']) or 'none')}; "
        f"policies: {escape(', '.join(answer['bound_policies']) or 'none')})"
    )
    console.print(f"decision: {decision['reason']}: {escape(decision['message'])}")
    table = Table(title="regions")
    for col in ("region", "country", "outcome", "replicas", "why"):
        table.add_column(col)
    colours = {"chosen": "green", "kept": "yellow", "eligible": "cyan", "rejected": "red"}
    for r in answer["regions"]:
        table.add_row(
            r["region"],
            r["country"] or "?",
            f"[{colours.get(r['outcome'], 'white')}]{r['outcome']}[/]",
            str(r["replicas"]),
            escape("\n".join(r["reasons"])),
        )
    console.print(table)


# -- drills ---------------------------------------------------------------------------

_OUTCOME_COLOURS = {
    "recoverable": "green",
    "recovered": "green",
    "degraded": "yellow",
    "unrecoverable": "red",
    "completed": "green",
    "running": "cyan",
    "aborted": "yellow",
    "failed": "red",
}


def _coloured(word: str) -> str:
    return f"[{_OUTCOME_COLOURS.get(word, 'white')}]{word}[/]"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


@main.group()
def drill() -> None:
    """Plan and run failover drills, and read their reports."""


@drill.command("plan")
@click.option("--region", "regions", multiple=True, required=True, help="Repeatable.")
@click.pass_context
def drill_plan(ctx: click.Context, regions: tuple[str, ...]) -> None:
    """Show what losing REGIONs would do to every service in them (changes nothing)."""
    body = {"regions": list(regions), "mode": "plan"}
    answer = _api_call(ctx, lambda c: c.request("POST", "/v1/drills", body=body))
    table = Table(title=f"drill plan: {', '.join(regions)}")
    for col in ("service", "outcome", "to regions", "reason"):
        table.add_column(col)
    for s in answer["plan"]["services"]:
        to = ", ".join(f"{r}={n}" for r, n in s["to"].items()) or "-"
        table.add_row(
            s["service"],
            _coloured(s["outcome"]),
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
        restore = f"restored in {_secs(failback['restore_s'])}"
    elif failback["done"]:
        restore = "regions uncordoned; restore not measured"
    else:
        restore = "regions not uncordoned yet"
    rows = [
        ("state", _coloured(view["state"]) + f" {escape(report['message'])}"),
        ("affected services", str(summary["affected"])),
        ("recovered", str(summary["recovered"])),
        ("degraded", str(summary["degraded"])),
        ("unrecoverable", str(summary["unrecoverable"])),
        ("not recovered", str(summary["waiting"])),
        (
            "recovery p50 / p95 / max",
            " / ".join(_secs(recovery[k]) for k in ("p50_s", "p95_s", "max_s")),
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
                f"{_coloured(kind)} {s['service']} ({s['ready']}/{s['replicas']} ready): "
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
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    body = {
        "regions": list(regions),
        "mode": "live",
        "force": force,
        "failback": not no_failback,
        "max_duration_s": max_duration,
        "abort_on": {"unrecoverable": abort_on_unrecoverable},
    }
    started = _api_call(ctx, lambda c: c.request("POST", "/v1/drills", body=body))
    drill_id = started["id"]
    console.print(f"drill [bold]{drill_id}[/] started: {', '.join(regions)} cordoned by the drill")

    async def watch(client: ApiClient) -> dict[str, Any]:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} services recovered"),
            TextColumn("{task.fields[phase]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task(drill_id, total=None, phase="cordoning")
            while True:
                view = await client.request("GET", f"/v1/drills/{drill_id}")
                p = view["progress"]
                extra = f"{p['phase']}"
                if p["violations"]:
                    extra += f" [red]{p['violations']} violation(s)[/]"
                progress.update(
                    bar,
                    total=max(1, p["affected"]),
                    completed=p["recovered"],
                    phase=extra,
                )
                if view["state"] not in ("running", "planned"):
                    return dict(view)
                await asyncio.sleep(0.5)

    try:
        view = _api_call(ctx, watch)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted: aborting drill {drill_id}[/]")
        view = _api_call(
            ctx,
            lambda c: c.request(
                "POST", f"/v1/drills/{drill_id}/abort", body={"reason": "interrupted from the CLI"}
            ),
        )
    _drill_summary(view)
    console.print(f"report: federation drill report {drill_id} --format md")
    if view["state"] != "completed" or view["report"]["summary"]["violations"]:
        raise SystemExit(1)


@drill.command("list")
@click.pass_context
def drill_list(ctx: click.Context) -> None:
    """Show every live drill."""
    answer = _api_call(ctx, lambda c: c.request("GET", "/v1/drills"))
    table = Table(title="drills")
    for col in ("id", "regions", "state", "recovered", "violations", "started"):
        table.add_column(col)
    for item in answer["items"]:
        p = item["progress"]
        table.add_row(
            item["id"],
            ", ".join(item["regions"]),
            _coloured(item["state"]),
            f"{p['recovered']}/{p['affected']}",
            str(p["violations"]),
            item["created_at"][:19].replace("T", " "),
        )
    console.print(table)


@drill.command("abort")
@click.argument("drill_id")
@click.option("--reason", default="")
@click.pass_context
def drill_abort(ctx: click.Context, drill_id: str, reason: str) -> None:
    """Abort drill DRILL_ID and uncordon its regions at once."""
    view = _api_call(
        ctx,
        lambda c: c.request("POST", f"/v1/drills/{drill_id}/abort", body={"reason": reason}),
    )
    _drill_summary(view)


@drill.command("report")
@click.argument("drill_id")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.pass_context
def drill_report(ctx: click.Context, drill_id: str, fmt: str) -> None:
    """Print the report of drill DRILL_ID (Markdown to file, or JSON)."""
    import json

    from federation.drills.report import render_markdown

    view = _api_call(ctx, lambda c: c.request("GET", f"/v1/drills/{drill_id}"))
    if fmt == "json":
        click.echo(json.dumps(view["report"], indent=2))
    else:
        # The same renderer the server's report.md uses, so both always agree.
        click.echo(render_markdown(view["report"]), nl=False)


# -- tokens and audit -----------------------------------------------------------------


@main.group()
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
    body: dict[str, Any] = {"role": role, "description": description}
    if region_name is not None:
        body["region"] = region_name
    if ttl is not None:
        body["ttl_s"] = ttl
    made = _api_call(ctx, lambda c: c.request("POST", "/v1/tokens", body=body))
    expires = made.get("expires_at") or "never"
    err_console.print(f"token [bold]{made['id']}[/] ({made['role']}), expires {expires}")
    # Only the secret on stdout, so `$(federation token create ...)` captures just it.
    click.echo(made["token"])


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """Every token: id, role, region, created, expires, description (never a secret)."""
    data = _api_call(ctx, lambda c: c.request("GET", "/v1/tokens"))
    table = Table(title="tokens")
    for col in ("id", "role", "region", "created", "expires", "description"):
        table.add_column(col)
    for item in data["items"]:
        table.add_row(
            item["id"],
            item["role"],
            item.get("region") or "",
            str(item["created_at"])[:19].replace("T", " "),
            str(item.get("expires_at") or "never")[:19].replace("T", " "),
            escape(item.get("description") or ""),
        )
    console.print(table)


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke token TOKEN_ID; every server replica refuses it from now on."""
    _api_call(ctx, lambda c: c.request("DELETE", f"/v1/tokens/{token_id}"))
    console.print(f"token {token_id} revoked")


@main.group()
def audit() -> None:
    """Read and verify the tamper-evident audit log (admin)."""


@audit.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Check the hash chain; name the first entry that does not verify (exit 1)."""
    result = _api_call(ctx, lambda c: c.request("GET", "/v1/audit/verify"))
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
    data = _api_call(ctx, lambda c: c.request("GET", f"/v1/audit?since={since}"))
    table = Table(title="audit")
    for col in ("seq", "at", "actor", "action", "resource", "before", "after"):
        table.add_column(col)
    for item in data["items"]:
        table.add_row(
            str(item["seq"]),
            str(item["at"])[:19].replace("T", " "),
            escape(item["actor"]),
            item["action"],
            escape(item["resource"]),
            str(item.get("before_revision") if item.get("before_revision") is not None else ""),
            str(item.get("after_revision", "")),
        )
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
