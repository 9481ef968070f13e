"""Every `federation` command line in deploy/ is one the CLI accepts, so they cannot rot,
and every file runs the parts over TLS: servers serve HTTPS and present a certificate
to etcd, agents speak HTTPS, etcd requires client certificates.

No container engine or systemd runs here, so the files are parsed instead: systemd
`ExecStart=`, compose `command:`, Kubernetes `args:`/`command:` (and the shell
command lines inside them) and shell scripts. Each `federation` command line is
parsed by the real click CLI (options, subcommands, required values), without
running it; each etcd flag is checked against the shipped etcd's `--help`.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from federation.cli import main
from federation.processes.local_etcd import find_tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _lines_from_yaml(node: Any) -> Iterator[list[str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("command", "args") and isinstance(value, list) and value:
                if all(isinstance(v, str) for v in value):
                    yield [str(v) for v in value]
            elif key == "command" and isinstance(value, str):
                yield shlex.split(value)
            else:
                yield from _lines_from_yaml(value)
    elif isinstance(node, list):
        for item in node:
            yield from _lines_from_yaml(item)


def _argvs(path: Path) -> Iterator[list[str]]:
    """Every command line of one deploy file, and the shell command lines inside them
    (`sh -c "..."`, split at `;`, `&&`, `||` and new lines)."""
    text = path.read_text()
    argvs: list[list[str]] = []
    if path.suffix in (".yaml", ".yml"):
        for doc in yaml.safe_load_all(text):
            argvs.extend(_lines_from_yaml(doc))
    else:
        joined = text.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            if path.suffix == ".service":
                if not line.startswith("ExecStart"):
                    continue
                # ExecStart=-cmd: systemd carries on when cmd fails.
                line = line.split("=", 1)[1].lstrip("-")
            elif line.startswith("#"):
                continue
            argvs.append(shlex.split(line, comments=True))
    for argv in argvs:
        yield argv
        for word in argv:
            if " " in word.strip():
                for part in re.split(r";|&&|\|\||\n", word):
                    if part.strip():
                        yield shlex.split(part, comments=True)


def command_lines(program: str) -> list[tuple[str, list[str]]]:
    """(file, the arguments) of every command line in deploy/ that runs `program`: as
    the command itself or after `exec`."""
    found: list[tuple[str, list[str]]] = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        for argv in _argvs(path):
            for i, word in enumerate(argv):
                if Path(word).name == program and (i == 0 or argv[i - 1] == "exec"):
                    # "$@" in a wrapper script passes the user's own arguments through.
                    found.append(
                        (f"{path.relative_to(DEPLOY)}", [a for a in argv[i + 1 :] if a != "$@"])
                    )
                    break
    return found


def federation_command_lines() -> list[tuple[str, list[str]]]:
    return [(where, args) for where, args in command_lines("federation") if args]


def _rest(ctx: click.Context) -> list[str]:
    with warnings.catch_warnings():
        # protected_args is how click 8 hands a group its subcommand's words.
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*ctx.protected_args, *ctx.args]


def parse(args: list[str]) -> dict[str, Any]:
    """Parse `federation ARGS` down to the leaf command, without invoking anything; the
    leaf's parameters."""
    ctx = main.make_context("federation", list(args))
    command: click.Command = main
    rest = _rest(ctx)
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None, f"unknown command {name!r}"
        ctx = sub.make_context(name or "", list(rest), parent=ctx)
        command, rest = sub, _rest(ctx)
    return dict(ctx.params)


@contextlib.contextmanager
def files_on_the_target_host() -> Iterator[None]:
    """Let `--tls-cert=/etc/federation/...` parse here: the files are on the host the
    unit runs on, not on this one (their options' names and values are still checked)."""
    path_types: list[click.Path] = []

    def walk(command: click.Command) -> None:
        for param in command.params:
            if isinstance(param.type, click.Path) and param.type.exists:
                path_types.append(param.type)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(main)
    for path_type in path_types:
        path_type.exists = False
    try:
        yield
    finally:
        for path_type in path_types:
            path_type.exists = True


LINES = federation_command_lines()


def test_deploy_files_hold_federation_command_lines() -> None:
    files = {name.split("/")[0] for name, _ in LINES}
    assert {"systemd", "compose", "kubernetes"} <= files
    assert any(args[0] == "serve" for _, args in LINES)
    assert any(args[0] == "agent" for _, args in LINES)


@pytest.mark.parametrize(("where", "args"), LINES, ids=[f"{w}:{a[0]}" for w, a in LINES])
def test_the_cli_accepts_every_command_line(
    where: str, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Secrets come from the environment in every deploy file, never the command line.
    monkeypatch.setenv("FEDERATION_REGION_TOKEN", "from-the-environment")
    with files_on_the_target_host():
        parse(args)


def test_a_wrong_flag_is_caught() -> None:
    with pytest.raises(click.UsageError):
        parse(["serve", "--etcd-endpoints=x"])
    with pytest.raises(click.UsageError):
        parse(["agnet", "--region=x"])


def _parsed(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("FEDERATION_REGION_TOKEN", "from-the-environment")
    with files_on_the_target_host():
        return parse(args)


def test_every_server_serves_https_and_shows_etcd_a_client_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers = [(where, args) for where, args in LINES if args[0] == "serve"]
    assert {where.split("/")[0] for where, _ in servers} == {"systemd", "compose", "kubernetes"}
    for where, args in servers:
        params = _parsed(args, monkeypatch)
        options = (
            "tls_cert",
            "tls_key",
            "etcd_ca",
            "etcd_cert",
            "etcd_key",
            "audit_key",
            "kek_file",
        )
        for option in options:
            assert params[option] is not None, (
                f"{where}: serve without --{option.replace('_', '-')}"
            )
        assert not params.get("insecure_http"), f"{where}: serve --insecure-http"
        # Several endpoints are one gRPC target: certificates are checked for one name.
        if "," in params["etcd"]:
            assert params["etcd_server_name"], f"{where}: several etcds, no --etcd-server-name"


def test_every_agent_speaks_https_and_verifies_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agents = [(where, args) for where, args in LINES if args[0] == "agent"]
    assert agents
    for where, args in agents:
        params = _parsed(args, monkeypatch)
        for url in params["server"].split(","):
            assert url.startswith("https://"), f"{where}: agent --server={url}"
        # The servers' certificates come from the installation's own CA.
        assert params["ca"] is not None, f"{where}: agent without --ca"
        # Every region runs only what its owner allows; a host (systemd) isolates each
        # instance with the exec driver (in compose, the container is the sandbox).
        assert params["allow_exec"], f"{where}: agent without --allow-exec"
        if where.startswith("systemd"):
            assert params["driver"] == "exec", f"{where}: agent --driver={params['driver']}"
            assert params["run_as"], f"{where}: agent without --run-as"


def test_agents_and_servers_of_one_file_agree() -> None:
    """An agent's --server names a port a server of its file serves on (with TLS, as
    checked above), so the two cannot drift apart within a file."""
    for where in {w for w, args in LINES if args[0] == "agent"}:
        ports = {
            a.split("=", 1)[1]
            for w, args in LINES
            if w == where and args[0] == "serve"
            for a in args
            if a.startswith("--port=")
        }
        if not ports:  # agents in their own file (systemd): servers are on other hosts
            continue
        for w, args in LINES:
            if w == where and args[0] == "agent":
                urls = next(a for a in args if a.startswith("--server=")).split("=", 1)[1]
                for url in urls.split(","):
                    assert url.rsplit(":", 1)[1] in ports, f"{where}: {url} serves nothing"


ETCD = command_lines("etcd")


def _flags(args: list[str]) -> dict[str, str]:
    flags = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            flags[name] = value or "true"
    return flags


def test_every_etcd_requires_client_certificates() -> None:
    assert {where.split("/")[0] for where, _ in ETCD} == {"systemd", "compose", "kubernetes"}
    for where, args in ETCD:
        flags = _flags(args)
        for flag in (
            "--client-cert-auth",
            "--trusted-ca-file",
            "--cert-file",
            "--key-file",
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            "--peer-cert-file",
            "--peer-key-file",
        ):
            assert flag in flags, f"{where}: etcd without {flag}"
        for flag in (
            "--listen-client-urls",
            "--advertise-client-urls",
            "--listen-peer-urls",
            "--initial-advertise-peer-urls",
        ):
            for url in flags[flag].split(","):
                assert url.startswith("https://"), f"{where}: {flag}={url}"
        for member in flags["--initial-cluster"].split(","):
            assert member.split("=", 1)[1].startswith("https://"), f"{where}: {member}"


def test_every_etcd_flag_is_one_etcd_accepts() -> None:
    help_text = subprocess.run(
        [find_tool("etcd"), "--help"], capture_output=True, text=True, check=False
    )
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", help_text.stdout + help_text.stderr, re.M))
    assert "--client-cert-auth" in known
    for where, args in ETCD:
        for flag in _flags(args):
            assert flag in known, f"{where}: etcd has no {flag}"


def test_etcd_auth_is_enabled_and_the_server_may_write_only_its_prefix() -> None:
    """With auth on, etcd takes the user from the client certificate's common name:
    the servers' certificate says `federation`, whose role covers `/federation/` only."""
    etcdctl = command_lines("etcdctl")
    for kind in ("systemd", "compose", "kubernetes"):
        lines = [args for where, args in etcdctl if where.startswith(kind)]
        words = [[a for a in args if not a.startswith("--")] for args in lines]
        assert ["auth", "enable"] in words, f"{kind}: etcd auth is never enabled"
        assert ["user", "add", "root"] in words, f"{kind}: no root user"
        assert ["user", "add", "federation"] in words, f"{kind}: no federation user"
        assert ["role", "grant-permission", "federation", "readwrite", "/federation/"] in words
        grant = next(a for a, w in zip(lines, words, strict=True) if w[1] == "grant-permission")
        assert "--prefix" in grant, f"{kind}: the grant is for one key, not the prefix"
        for args in lines:
            flags = _flags(args)
            assert flags["--cacert"] and flags["--cert"] and flags["--key"], f"{kind}: {args}"
            for url in flags["--endpoints"].split(","):
                assert url.startswith("https://"), f"{kind}: etcdctl --endpoints={url}"


def test_every_etcd_has_a_quota_and_compacts_on_its_own() -> None:
    # The leader compacts (federation.store.compaction); etcd's own revision-mode
    # auto-compaction is the second line of defence, and the quota is said out loud.
    for where, args in ETCD:
        flags = _flags(args)
        assert int(flags.get("--quota-backend-bytes", "0")) >= 2 * 1024**3, where
        assert flags.get("--auto-compaction-mode") == "revision", where
        assert int(flags.get("--auto-compaction-retention", "0")) >= 100_000, where
