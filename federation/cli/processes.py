"""The long-running processes: `serve` (an API replica), `agent` (a region master) and
`up` (a whole local federation in the foreground).

These commands build their configuration from flags and the environment (secrets
only from the environment, so they stay out of `ps`), then hand over to
`federation.api`, `federation.agent` or `federation.processes`; nothing here talks
to a server through the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import uuid
from pathlib import Path

import click

from federation.agent.drivers import DRIVERS
from federation.cli.render import console
from federation.cli.session import run
from federation.client import is_loopback

log = logging.getLogger(__name__)


def _server_tls(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> ssl.SSLContext | None:
    """The server's TLS: HTTPS with `cert`/`key`, and with `client_ca` mutual TLS (a
    client without a certificate signed by it is refused). None: plain HTTP."""
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if client_ca is not None and cert is None:
        raise click.UsageError("--client-ca needs --tls-cert and --tls-key")
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _refuse_plain_http(host: str, port: int, plain: bool, insecure_http: bool) -> None:
    """Plain HTTP only on loopback, unless asked for: a bearer token sent in clear over
    the network is anyone's who sees it. Asked for, it is logged at every start."""
    if not plain or is_loopback(host):
        return
    if not insecure_http:
        raise click.UsageError(
            f"--host {host} is reachable from the network: serve HTTPS (--tls-cert and "
            "--tls-key), or pass --insecure-http to serve plain HTTP anyway"
        )
    log.warning(
        "serving plain HTTP on %s:%d (--insecure-http): bearer tokens cross the network "
        "in clear; put TLS in front of this server",
        host,
        port,
    )


@click.command("serve")
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
@click.option(
    "--etcd-history",
    "etcd_history",
    default=300.0,
    show_default=True,
    type=click.FloatRange(1, 86400),
    help="Seconds' worth of etcd revisions the leader keeps when it compacts (watches "
    "resuming from further back list again); see docs/operations.md.",
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
    "--etcd-server-name",
    default=None,
    help="Check every etcd member's certificate for this name (needed with several "
    "--etcd endpoints over TLS: gRPC cannot tell which address a certificate is for).",
)
@click.option(
    "--etcd-user", default=None, help="etcd user (password from FEDERATION_ETCD_PASSWORD)."
)
@click.option(
    "--audit-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 private key (PEM, mode 0600) that signs audit checkpoints; never put "
    "in etcd. Every replica gets the same file. Without it, checkpoints are off.",
)
@click.option(
    "--kek-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Key-encryption keys of secrets (mode 0600, one `ID BASE64` a line, the primary "
    "first); never put in etcd. Every replica gets the same file. Without it, secrets "
    "can be neither written nor delivered.",
)
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Serve plain HTTP on a --host other than loopback (tokens cross the network in "
    "clear: only behind a TLS-terminating proxy on a trusted network).",
)
def serve(
    etcd: str,
    prefix: str,
    host: str,
    port: int,
    region_ttl: int,
    election_ttl: int,
    etcd_history: float,
    identity: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_server_name: str | None,
    etcd_user: str | None,
    audit_key: Path | None,
    kek_file: Path | None,
    insecure_http: bool,
) -> None:
    """Run a federation server: the API on every replica, the controller on the leader."""
    ssl_context = _server_tls(tls_cert, tls_key, client_ca)
    _refuse_plain_http(host, port, ssl_context is None, insecure_http)
    from aiohttp import web

    from federation.api.app import StartRefused, create_app
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
        history_window_s=etcd_history,
        identity=identity or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}",
        admin_token=os.environ.get("FEDERATION_ADMIN_TOKEN") or None,
        etcd_ca=etcd_ca,
        etcd_cert=etcd_cert,
        etcd_key=etcd_key,
        etcd_server_name=etcd_server_name,
        etcd_user=etcd_user,
        etcd_password=os.environ.get("FEDERATION_ETCD_PASSWORD") or None,
        audit_key=audit_key,
        kek_file=kek_file,
    )
    scheme = "http" if ssl_context is None else "https"
    try:
        app = create_app(config)
    except StartRefused as exc:
        raise click.ClickException(str(exc)) from None
    tune_gc()
    web.run_app(
        app,
        host=host,
        port=port,
        ssl_context=ssl_context,
        print=lambda *_: click.echo(
            f"federation server {config.identity} on {scheme}://{host}:{port}"
        ),
        access_log=None,
        handle_signals=True,
    )


@click.command("agent")
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
@click.option(
    "--driver",
    type=click.Choice(sorted(DRIVERS)),
    default="exec",
    show_default=True,
    help="What runs the region's instances: exec (isolated by bubblewrap and cgroups) "
    "or raw (plain processes as the agent's user, for development).",
)
@click.option(
    "--run-as",
    default=None,
    help="User the exec driver runs instances as (required when the agent is root).",
)
@click.option(
    "--allow-root-instances",
    is_flag=True,
    help="Let the exec driver run instances as root (when the agent is root, no --run-as).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where instances are recorded and logged (default: ./.federation-agent-REGION).",
)
@click.option("--cpu", type=float, default=None, help="CPU to offer (default: this host's).")
@click.option("--memory-mb", type=int, default=None, help="Memory to offer (default: host's).")
@click.option(
    "--allow-exec",
    "allow_exec",
    multiple=True,
    metavar="GLOB",
    help="Executables instances may run, as a glob on the absolute path (repeatable, "
    "e.g. /usr/bin/python3, '/opt/apps/*'); without it `raw` runs anything and `exec` "
    "refuses to start. See docs/agent.md.",
)
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
# Hidden: the fault suite starts an agent with it to show its checker catches the
# double run that fencing prevents. Never for production.
@click.option("--unsafe-no-fencing", "no_fencing", is_flag=True, hidden=True)
def agent(
    server: str,
    region: str,
    region_token: str,
    driver: str,
    run_as: str | None,
    allow_root_instances: bool,
    state_dir: Path | None,
    cpu: float | None,
    memory_mb: int | None,
    keep_instances: bool,
    allow_exec: tuple[str, ...],
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    no_fencing: bool,
) -> None:
    """Run a region master: heartbeats for REGION and runs what is assigned to it."""
    from federation.agent.allow import policy_problem
    from federation.agent.loop import Agent, AgentConfig, local_capacity

    allowlist = allow_exec or None
    problem = policy_problem(driver, allowlist)
    if problem is not None:
        raise click.UsageError(problem)
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
        driver=driver,
        fence_singletons=not no_fencing,
        allow_exec=allowlist,
        run_as=run_as,
        allow_root_instances=allow_root_instances,
        ca=ca,
        cert=cert,
        key=key,
    )

    from federation.agent.drivers.exec import DriverUnavailable

    try:
        # Built here, before any connection: a host that cannot isolate instances
        # refuses to start at once, with what it lacks.
        region_agent = Agent(config)
    except (DriverUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    async def until_stopped() -> None:
        task = asyncio.create_task(region_agent.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    click.echo(f"agent for region {region} -> {server} (driver {driver})")
    run(until_stopped())


@click.command("up")
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
