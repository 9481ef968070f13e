"""Plain HTTP where it matters: a server reachable from the network serves TLS unless
told otherwise, and a client that sends a token over plain HTTP to another host says so.

Real `federation serve`, `federation` CLI and `federation agent` processes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.model.token import new_secret
from federation.processes.children import free_port, launch
from federation.processes.commands import (
    ADMIN_TOKEN_ENV,
    REGION_TOKEN_ENV,
    agent_command,
    federation_command,
    serve_command,
)
from federation.processes.local_etcd import LocalEtcd
from tests.conftest import ServerProcess
from tests.e2e.test_failover import Http, wait_until

WARNING = "over plain HTTP"


def lan_address() -> str:
    """An address of this machine that is not loopback (skip the test if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.254", 9))  # no packet is sent: this only picks a route
            address = str(sock.getsockname()[0])
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback address")
    return address


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_serve_on_a_public_host_without_tls_exits_naming_insecure_http(
    etcd: LocalEtcd, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    command = serve_command(etcd=[etcd.endpoint], port=port, identity="open", prefix=prefix)
    log = tmp_path / "server.log"
    proc = launch([*command, "--host=0.0.0.0"], log=log, env={ADMIN_TOKEN_ENV: new_secret()})
    try:
        end = time.monotonic() + 20
        while proc.poll() is None:
            with contextlib.suppress(urllib.error.URLError, OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=1)
                pytest.fail("the server serves plain HTTP on 0.0.0.0")
            assert time.monotonic() < end, "serve neither exited nor served"
            time.sleep(0.1)
        assert proc.returncode != 0
        assert "--insecure-http" in log.read_text()
    finally:
        ServerProcess(proc, "", "open", log).stop()


@pytest.fixture
def insecure_server(
    etcd: LocalEtcd, prefix: str, tmp_path: Path
) -> Iterator[tuple[ServerProcess, str]]:
    """A server on every address, in plain HTTP because it was told so; its admin token."""
    port = free_port()
    command = serve_command(etcd=[etcd.endpoint], port=port, identity="insecure", prefix=prefix)
    log = tmp_path / "insecure.log"
    admin = new_secret()
    proc = launch(
        [*command, "--host=0.0.0.0", "--insecure-http"], log=log, env={ADMIN_TOKEN_ENV: admin}
    )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", "insecure", log)
    try:
        end = time.monotonic() + 20
        while not ready(server.url):
            assert proc.poll() is None, f"serve exited: {log.read_text()}"
            assert time.monotonic() < end, "serve --insecure-http did not come up"
            time.sleep(0.1)
        yield server, admin
    finally:
        server.stop()


def test_insecure_http_starts_and_says_so_in_the_log(
    insecure_server: tuple[ServerProcess, str],
) -> None:
    text = insecure_server[0].log.read_text()
    assert "--insecure-http" in text and "plain HTTP" in text, text


def cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        federation_command(f"--url={url}", *args),
        env={**os.environ, "FEDERATION_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_warns_when_a_token_goes_over_plain_http_to_another_host(
    insecure_server: tuple[ServerProcess, str],
) -> None:
    server, admin = insecure_server
    port = server.url.rsplit(":", 1)[1]
    remote = cli(f"http://{lan_address()}:{port}", admin, "region", "list")
    assert remote.returncode == 0, remote.stderr
    assert remote.stderr.count(WARNING) == 1, remote.stderr
    local = cli(f"http://127.0.0.1:{port}", admin, "region", "list")
    assert local.returncode == 0, local.stderr
    assert WARNING not in local.stderr, local.stderr


def test_an_agent_warns_once_when_its_token_goes_over_plain_http(
    insecure_server: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    server, admin = insecure_server
    http = Http(server.url, admin)
    status, body = http("POST", "/v1/regions", {"name": "eu-de-1", "country": "DE"})
    assert status == 201, body
    port = server.url.rsplit(":", 1)[1]
    log = tmp_path / "agent.log"
    command = agent_command(
        servers=[f"http://{lan_address()}:{port}"], region="eu-de-1", state_dir=tmp_path / "a"
    )
    proc = launch(command, log=log, env={REGION_TOKEN_ENV: body["token"]})
    try:
        # Ready means heartbeats got through, each with the token; warned once all the same.
        wait_until(lambda: http("GET", "/v1/regions/eu-de-1")[1]["state"] == "ready", 20, "ready")
        time.sleep(2)
        assert log.read_text().count(WARNING) == 1, log.read_text()
    finally:
        ServerProcess(proc, "", "agent", log).stop()
