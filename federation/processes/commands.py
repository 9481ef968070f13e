"""The `federation serve` and `federation agent` command lines, built in one place.

`federation up`, the tests and the benchmarks start servers and agents as child
processes; each builds its argv here, so an option the CLI renames is renamed once and
every child runs this interpreter's `federation` (`python -m federation`), whatever is
on PATH. An option left at None is not passed, so the CLI's default applies.

Secrets never go on a command line, which `ps` shows to every user of the machine: the
admin token travels in `ADMIN_TOKEN_ENV`, a region's token in `REGION_TOKEN_ENV`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

ADMIN_TOKEN_ENV = "FEDERATION_ADMIN_TOKEN"
REGION_TOKEN_ENV = "FEDERATION_REGION_TOKEN"


def federation_command(*args: str, log_level: str | None = None) -> list[str]:
    """`python -m federation [--log-level=LEVEL] ARGS...` with the running interpreter."""
    argv = [sys.executable, "-m", "federation"]
    if log_level is not None:
        argv.append(f"--log-level={log_level}")
    return [*argv, *args]


def serve_command(
    *,
    etcd: Sequence[str],
    port: int,
    identity: str,
    prefix: str | None = None,
    region_ttl: int | None = None,
    election_ttl: int | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    audit_key: Path | None = None,
    kek_file: Path | None = None,
    etcd_ca: Path | None = None,
    etcd_cert: Path | None = None,
    etcd_key: Path | None = None,
    etcd_server_name: str | None = None,
    etcd_history: float | None = None,
    log_level: str | None = None,
) -> list[str]:
    """A server replica named `identity` on `port`, against the etcd endpoints `etcd`
    (over TLS with `etcd_ca`, presenting `etcd_cert` and `etcd_key`, checking the
    members' certificates for `etcd_server_name`)."""
    args = ["serve", f"--etcd={','.join(etcd)}", f"--port={port}", f"--identity={identity}"]
    if prefix is not None:
        args.append(f"--prefix={prefix}")
    if region_ttl is not None:
        args.append(f"--region-ttl={region_ttl}")
    if election_ttl is not None:
        args.append(f"--election-ttl={election_ttl}")
    if etcd_history is not None:
        args.append(f"--etcd-history={etcd_history:g}")
    if tls_cert is not None:
        args.append(f"--tls-cert={tls_cert}")
    if tls_key is not None:
        args.append(f"--tls-key={tls_key}")
    if audit_key is not None:
        args.append(f"--audit-key={audit_key}")
    if kek_file is not None:
        args.append(f"--kek-file={kek_file}")
    for option, path in (("etcd-ca", etcd_ca), ("etcd-cert", etcd_cert), ("etcd-key", etcd_key)):
        if path is not None:
            args.append(f"--{option}={path}")
    if etcd_server_name is not None:
        args.append(f"--etcd-server-name={etcd_server_name}")
    return federation_command(*args, log_level=log_level)


def agent_command(
    *,
    servers: Sequence[str],
    region: str,
    state_dir: Path,
    cpu: float | None = None,
    memory_mb: int | None = None,
    keep_instances: bool = False,
    ca: Path | None = None,
    log_level: str | None = None,
    driver: str = "raw",
) -> list[str]:
    """The agent of `region`, failing over between `servers`, recording its instances
    in `state_dir`; `cpu` and `memory_mb` are what it offers (default: the host's).
    `driver` is `raw` unless told: `up`'s demo and the tests run plain processes on a
    developer's machine, where bubblewrap and cgroups may be absent."""
    args = [
        "agent",
        f"--server={','.join(servers)}",
        f"--region={region}",
        f"--state-dir={state_dir}",
        f"--driver={driver}",
    ]
    if cpu is not None:
        args.append(f"--cpu={cpu}")
    if memory_mb is not None:
        args.append(f"--memory-mb={memory_mb}")
    if keep_instances:
        args.append("--keep-instances")
    if ca is not None:
        args.append(f"--ca={ca}")
    return federation_command(*args, log_level=log_level)
