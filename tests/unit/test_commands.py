"""The command lines `up`, the tests and the benchmarks start are ones the CLI accepts,
with every option the builders know, so a renamed option fails here and not in a
child process's log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from federation.processes.commands import (
    REGION_TOKEN_ENV,
    agent_command,
    federation_command,
    serve_command,
)
from tests.unit.test_deploy_files import parse


def _args(argv: list[str]) -> list[str]:
    assert argv[:3] == [sys.executable, "-m", "federation"]
    return argv[3:]


def test_every_serve_option_is_one_the_cli_accepts(tmp_path: Path) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    etcd_ca, etcd_cert, etcd_key = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "c.key"
    kek = tmp_path / "kek"
    for path in (cert, key, etcd_ca, etcd_cert, etcd_key, kek):
        path.touch()
    argv = serve_command(
        etcd=["127.0.0.1:2379", "127.0.0.1:2380"],
        port=8080,
        identity="replica-1",
        prefix="/test/",
        region_ttl=2,
        election_ttl=3,
        tls_cert=cert,
        tls_key=key,
        etcd_ca=etcd_ca,
        etcd_cert=etcd_cert,
        etcd_key=etcd_key,
        etcd_server_name="etcd.internal",
        kek_file=kek,
        log_level="warning",
    )
    assert _args(argv)[:2] == ["--log-level=warning", "serve"]
    assert "--etcd=127.0.0.1:2379,127.0.0.1:2380" in argv
    params = parse(_args(argv))
    assert (params["etcd_ca"], params["etcd_cert"], params["etcd_key"]) == (
        etcd_ca,
        etcd_cert,
        etcd_key,
    )
    assert params["etcd_server_name"] == "etcd.internal"
    assert params["kek_file"] == kek


def test_options_left_out_are_not_passed() -> None:
    argv = serve_command(etcd=["127.0.0.1:2379"], port=8080, identity="replica-1")
    assert _args(argv) == ["serve", "--etcd=127.0.0.1:2379", "--port=8080", "--identity=replica-1"]
    assert federation_command("version") == [sys.executable, "-m", "federation", "version"]


def test_every_agent_option_is_one_the_cli_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.touch()
    argv = agent_command(
        servers=["http://127.0.0.1:8080", "http://127.0.0.1:8081"],
        region="eu-de-1",
        state_dir=tmp_path / "state",
        cpu=16.0,
        memory_mb=65536,
        keep_instances=True,
        ca=ca,
        log_level="debug",
    )
    assert "--server=http://127.0.0.1:8080,http://127.0.0.1:8081" in argv
    assert not any("token" in arg for arg in argv)  # tokens travel in the environment
    monkeypatch.setenv(REGION_TOKEN_ENV, "from-the-environment")
    parse(_args(argv))
