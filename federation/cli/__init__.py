"""The `federation` command: run the server, an agent or a local federation; talk to the API.

A package by job: `processes` runs things (`serve`, `agent`, `up`); `regions`,
`residency`, `services`, `drills` and `admin` are the commands that talk to the API,
each through `session.call` and the typed methods of `federation.client`; `documents`
reads the YAML files they apply; `render` holds how everything is shown. This module
is the `main` group, its global options, and the list of subcommands.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from federation.cli import (
    admin,
    drills,
    etcd,
    evidence,
    gitops,
    processes,
    regions,
    residency,
    secrets,
    services,
)


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


for _command in (
    processes.serve,
    processes.agent,
    processes.up,
    regions.region,
    residency.policy,
    residency.group,
    evidence.residency,
    services.deploy,
    services.status,
    services.explain,
    gitops.plan,
    gitops.diff,
    gitops.apply,
    drills.drill,
    admin.token,
    admin.audit,
    admin.backup,
    etcd.etcd,
    secrets.secret,
):
    main.add_command(_command)
