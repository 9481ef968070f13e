"""HTTPS between the parts: plain HTTP is refused, and an agent checks whom it talks to."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from federation.model.token import new_secret
from federation.processes.children import free_port, with_parent_death
from federation.processes.commands import (
    ADMIN_TOKEN_ENV,
    REGION_TOKEN_ENV,
    agent_command,
    serve_command,
)
from federation.processes.local_etcd import LocalEtcd
from tests.conftest import ServerProcess


@pytest.fixture
def tls_server(
    etcd: LocalEtcd, prefix: str, tmp_path: Path
) -> Iterator[tuple[ServerProcess, Path, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = (
        tmp_path / "server.pem",
        tmp_path / "server.key",
        tmp_path / "ca.pem",
    )
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    admin, port = new_secret(), free_port()
    log = tmp_path / "server.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            with_parent_death(
                serve_command(
                    etcd=[etcd.endpoint],
                    port=port,
                    identity="tls",
                    prefix=prefix,
                    region_ttl=2,
                    election_ttl=2,
                    tls_cert=cert_file,
                    tls_key=key_file,
                )
            ),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, ADMIN_TOKEN_ENV: admin},
            start_new_session=True,
        )
    server = ServerProcess(proc, f"https://127.0.0.1:{port}", "tls", log)
    context = ssl.create_default_context(cafile=str(ca_file))
    end = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(server.url + "/v1/ready", context=context, timeout=1):
                break
        except (urllib.error.URLError, OSError):
            assert time.monotonic() < end, "TLS server did not come up"
            time.sleep(0.1)
    try:
        yield server, ca_file, admin
    finally:
        server.stop()


def call(
    url: str, token: str, ca_file: Path, method: str, path: str, body: object = None
) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(req, context=context, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_plain_http_to_a_tls_server_fails(tls_server: tuple[ServerProcess, Path, str]) -> None:
    server, _, _ = tls_server
    plain = server.url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, OSError, ConnectionError)) as err:
        urllib.request.urlopen(plain + "/v1/health", timeout=3)
    assert not isinstance(err.value, urllib.error.HTTPError) or err.value.code >= 400


def test_an_agent_checks_the_servers_certificate(
    tls_server: tuple[ServerProcess, Path, str], tmp_path: Path
) -> None:
    server, ca_file, admin = tls_server
    _, body = call(
        server.url, admin, ca_file, "POST", "/v1/regions", {"name": "eu-de-1", "country": "DE"}
    )
    token = str(body["token"])
    wrong_ca = tmp_path / "wrong-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong_ca))

    def agent(ca: Path, name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            with_parent_death(
                agent_command(
                    servers=[server.url], region="eu-de-1", state_dir=tmp_path / name, ca=ca
                )
            ),
            stdout=open(tmp_path / f"{name}.log", "wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, REGION_TOKEN_ENV: token},
            start_new_session=True,
        )

    def state() -> str:
        return str(call(server.url, admin, ca_file, "GET", "/v1/regions/eu-de-1")[1]["state"])

    impostor_check = agent(wrong_ca, "wrong")
    try:
        time.sleep(3)
        assert state() == "unreachable"  # it never got a heartbeat through
        assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "wrong.log").read_text()
    finally:
        impostor_check.terminate()
        impostor_check.wait(10)
    good = agent(ca_file, "right")
    try:
        end = time.monotonic() + 10
        while state() != "ready":
            assert time.monotonic() < end, "the agent with the right CA did not connect"
            time.sleep(0.2)
    finally:
        good.terminate()
        good.wait(10)
