"""`federation up`: a whole federation on this machine, as real processes.

A local etcd, one server and four demo regions (eu-de-1 DE, eu-fr-1 FR,
us-east-1 US, ap-in-1 IN), each region with its own agent process. Tokens, ports
and the audit checkpoint key (`audit.key`) are kept in the data dir so a second `up`
on the same dir resumes the same federation. Every child runs in its own session and
is stopped in order (agents, server, etcd) on Ctrl-C or SIGTERM, so nothing is left
behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from federation.model.token import admin_token_weakness, new_secret
from federation.processes.children import free_port, launch, stop_processes
from federation.processes.commands import (
    ADMIN_TOKEN_ENV,
    REGION_TOKEN_ENV,
    agent_command,
    serve_command,
)
from federation.processes.local_etcd import LocalEtcd


@dataclass(frozen=True)
class DemoRegion:
    name: str
    country: str
    labels: dict[str, str]


DEMO_REGIONS = (
    DemoRegion("eu-de-1", "DE", {"provider": "onprem", "zone": "fra"}),
    DemoRegion("eu-fr-1", "FR", {"provider": "onprem", "zone": "par"}),
    DemoRegion("us-east-1", "US", {"provider": "cloud", "zone": "iad"}),
    DemoRegion("ap-in-1", "IN", {"provider": "cloud", "zone": "bom"}),
)

DEMO_CPU = 16.0
DEMO_MEMORY_MB = 65536


class StartupError(RuntimeError):
    """Something `up` started did not come up; the message says what and where its log is."""


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)


def make_audit_key(path: Path) -> Path:
    """The Ed25519 key that signs audit checkpoints (`serve --audit-key`): made once per
    data dir, mode 0600, and kept, so checkpoints taken earlier still verify."""
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_secret(path, pem.decode())
    return path


def _http(
    method: str, url: str, token: str, body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class LocalFederation:
    """Starts, watches and stops the processes of a local federation."""

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int = 8080,
        region_ttl: int = 10,
        etcd_members: int = 1,
        servers: int = 1,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.region_ttl = region_ttl
        self.etcd_members = etcd_members
        self.urls = [f"http://127.0.0.1:{port + i}" for i in range(servers)]
        self.url = self.urls[0]
        self.etcd: list[LocalEtcd] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.admin_token = ""

    # -- state kept in the data dir ---------------------------------------------------

    def _members(self) -> list[LocalEtcd]:
        """etcd members with ports fixed per data dir, since etcd remembers its peers."""
        path = self.data_dir / "etcd-ports.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        ports = saved.get("members")
        if saved and ports is None:  # a data dir from before clusters: one member
            ports = [{"client": saved["client"], "peer": saved["peer"]}]
        if not ports or len(ports) != self.etcd_members:
            if ports:
                raise StartupError(
                    f"{self.data_dir} holds a {len(ports)}-member etcd; "
                    f"use --etcd-members {len(ports)} or another --data-dir"
                )
            ports = [{"client": free_port(), "peer": free_port()} for _ in range(self.etcd_members)]
            path.write_text(json.dumps({"members": ports}))
        if self.etcd_members == 1:
            return [
                LocalEtcd(
                    self.data_dir / "etcd",
                    client_port=ports[0]["client"],
                    peer_port=ports[0]["peer"],
                )
            ]
        members = [
            LocalEtcd(
                self.data_dir / f"etcd-{i}",
                client_port=p["client"],
                peer_port=p["peer"],
                name=f"etcd-{i}",
            )
            for i, p in enumerate(ports)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for member in members:
            member.initial_cluster = initial
        return members

    def _admin_token(self) -> str:
        env = os.environ.get(ADMIN_TOKEN_ENV)
        if env:
            weakness = admin_token_weakness(env)
            if weakness is not None:
                raise StartupError(f"{ADMIN_TOKEN_ENV} {weakness}")
            return env
        path = self.data_dir / "admin.token"
        if path.exists():
            return path.read_text().strip()
        secret = new_secret()
        _write_secret(path, secret)
        return secret

    # -- processes --------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return launch(argv, log=self.data_dir / "logs" / f"{name}.log", env=env)

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for i, url in enumerate(self.urls):
            while True:
                server = self.servers[i]
                if server.poll() is not None:
                    raise StartupError(
                        f"server exited with {server.returncode}; "
                        f"see {self.data_dir / 'logs' / self._server_name(i)}.log"
                    )
                try:
                    status, _ = _http("GET", f"{url}/v1/ready", "", timeout=1)
                    if status == 200:
                        break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > end:
                    raise StartupError(f"server {url} not ready within {timeout} s")
                time.sleep(0.1)

    def _server_name(self, i: int) -> str:
        return "server" if len(self.urls) == 1 else f"server-{i + 1}"

    def _region_token(self, region: DemoRegion) -> str:
        path = self.data_dir / "regions" / f"{region.name}.token"
        status, answer = _http(
            "POST",
            f"{self.url}/v1/regions",
            self.admin_token,
            {"name": region.name, "country": region.country, "labels": region.labels},
        )
        if status == 201:
            _write_secret(path, answer["token"])
            return str(answer["token"])
        if status == 409 and path.exists():
            return path.read_text().strip()
        if status == 409:
            # Registered by an earlier run whose token file is gone: rotate it.
            status, answer = _http(
                "POST", f"{self.url}/v1/regions/{region.name}/token", self.admin_token, {}
            )
            if status == 201:
                _write_secret(path, answer["token"])
                return str(answer["token"])
        raise StartupError(f"cannot register region {region.name}: HTTP {status} {answer}")

    def start(self, *, timeout: float = 30.0) -> None:
        """Start etcd, the servers and the agents; return once the servers are ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token = self._admin_token()
        audit_key = make_audit_key(self.data_dir / "audit.key")
        self.etcd = self._members()
        for member in self.etcd:
            member.launch()
        for member in self.etcd:
            member.wait_healthy(timeout)
        endpoints = [m.endpoint for m in self.etcd]
        for i in range(len(self.urls)):
            command = serve_command(
                etcd=endpoints,
                port=self.port + i,
                identity=f"up-{self._server_name(i)}",
                region_ttl=self.region_ttl,
                audit_key=audit_key,
            )
            self.servers.append(
                self._spawn(self._server_name(i), command, {ADMIN_TOKEN_ENV: self.admin_token})
            )
        self._wait_ready(timeout)
        for region in DEMO_REGIONS:
            self.start_agent(region.name)

    def start_agent(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) the agent of demo region `name`, against every server."""
        region = next(r for r in DEMO_REGIONS if r.name == name)
        token = self._region_token(region)
        command = agent_command(
            servers=self.urls,
            region=name,
            state_dir=self.data_dir / "agents" / name,
            cpu=DEMO_CPU,
            memory_mb=DEMO_MEMORY_MB,
        )
        self.agents[name] = self._spawn(f"agent-{name}", command, {REGION_TOKEN_ENV: token})
        return self.agents[name]

    def regions(self) -> list[dict[str, Any]]:
        status, answer = _http("GET", f"{self.url}/v1/regions", self.admin_token)
        return list(answer["items"]) if status == 200 else []

    def stop(self) -> None:
        """Stop everything, in order: agents, servers, etcd. Safe to call twice."""
        for group in (list(self.agents.values()), self.servers):
            stop_processes(group)
        self.agents.clear()
        self.servers = []
        for member in self.etcd:
            member.stop()
        self.etcd = []

    def run_foreground(self, console: Console) -> int:
        """`federation up`: start, show where things are, wait for Ctrl-C, stop cleanly."""
        stopping = False

        def on_signal(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            with console.status("starting etcd, the server and four regions..."):
                self.start()
                end = time.monotonic() + 30
                while time.monotonic() < end and not stopping:
                    items = self.regions()
                    if len(items) == len(DEMO_REGIONS) and all(
                        i["state"] == "ready" for i in items
                    ):
                        break
                    time.sleep(0.2)
            table = Table(title="federation is up")
            table.add_column("region")
            table.add_column("country")
            table.add_column("state")
            for item in self.regions():
                table.add_row(item["name"], item["country"], item["state"])
            console.print(table)
            console.print(f"API URL:      {', '.join(self.urls)}")
            console.print(f"admin token:  {self.admin_token}")
            console.print(f"data and logs: {self.data_dir}")
            console.print(
                f"try: export FEDERATION_URL={self.url} "
                f"FEDERATION_TOKEN={self.admin_token}; federation region list"
            )
            console.print("Ctrl-C stops everything.")
            while not stopping:
                for name, proc in list(self.agents.items()):
                    if proc.poll() is not None:
                        console.print(f"[yellow]agent {name} exited ({proc.returncode})[/]")
                        del self.agents[name]
                if self.servers and all(p.poll() is not None for p in self.servers):
                    console.print("[red]every server exited; stopping[/]")
                    return 1
                time.sleep(0.2)
            return 0
        except StartupError as exc:
            console.print(f"[red]federation up failed:[/] {exc}")
            return 1
        finally:
            console.print("stopping agents, server and etcd...")
            self.stop()
