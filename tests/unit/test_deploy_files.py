"""Every `federation` command line in deploy/ is one the CLI accepts, so they cannot rot.

No container engine or systemd runs here, so the files are parsed instead: systemd
`ExecStart=`, compose `command:`, Kubernetes `args:`/`command:` and shell scripts.
Each command line is parsed by the real click CLI (options, subcommands, required
values), without running it.
"""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from federation.cli import main

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


def federation_command_lines() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
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
                    if not line.startswith("ExecStart="):
                        continue
                    line = line.removeprefix("ExecStart=")
                elif line.startswith("#"):
                    continue
                if "federation" in line:
                    argvs.append(shlex.split(line, comments=True))
        for argv in argvs:
            for i, word in enumerate(argv):
                if Path(word).name == "federation" and i + 1 < len(argv):
                    # "$@" in a wrapper script passes the user's own arguments through.
                    args = [a for a in argv[i + 1 :] if a != "$@"]
                    found.append((f"{path.relative_to(DEPLOY)}", args))
                    break
    return found


def _rest(ctx: click.Context) -> list[str]:
    with warnings.catch_warnings():
        # protected_args is how click 8 hands a group its subcommand's words.
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*ctx.protected_args, *ctx.args]


def parse(args: list[str]) -> None:
    """Parse `federation ARGS` down to the leaf command, without invoking anything."""
    ctx = main.make_context("federation", list(args))
    command: click.Command = main
    rest = _rest(ctx)
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None, f"unknown command {name!r}"
        ctx = sub.make_context(name or "", list(rest), parent=ctx)
        command, rest = sub, _rest(ctx)


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
    parse(args)


def test_a_wrong_flag_is_caught() -> None:
    with pytest.raises(click.UsageError):
        parse(["serve", "--etcd-endpoints=x"])
    with pytest.raises(click.UsageError):
        parse(["agnet", "--region=x"])
