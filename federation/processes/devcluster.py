"""`federation up`: a whole federation on this machine, as real processes.

A local etcd, one server and four demo regions (eu-de-1 DE, eu-fr-1 FR,
us-east-1 US, ap-in-1 IN), each region with its own agent process. Tokens, ports
and the audit checkpoint key (`audit.key`) are kept in the data dir so a second `up`
on the same dir resumes the same federation. Every child runs in its own session and
is stopped in order (agents, server, etcd) on Ctrl-C or SIGTERM, so nothing is left
behind.

Only Ctrl-C or SIGTERM stops it: every question `up` asks a server has a short
bound and is asked again until answered, a server that stops answering is reported
(and again when it is back), and a server that exits is started again
(`supervisor.py`). An agent that exits is left down: that is how a region is lost.

The data dir is this user's alone (0700, secrets 0600), and etcd requires a client
certificate from a CA made for the data dir (`certs.py`), which only the servers
`up` starts are given: another user of the machine can reach etcd's port but can
neither read nor write the federation's keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from federation.model.token import admin_token_weakness, new_secret
from federation.processes.certs import (
    local_etcd_tls,
    make_audit_key,
    make_kek_file,
    write_private,
)
from federation.processes.children import free_port, stop_processes
from federation.processes.commands import (
    ADMIN_TOKEN_ENV,
    REGION_TOKEN_ENV,
    agent_command,
    serve_command,
)
from federation.processes.local_etcd import EtcdTLS, LocalEtcd
from federation.processes.supervisor import Child, Supervisor


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

ASK_TIMEOUT_S = 5.0  # one question to a server
PROBE_EVERY_S = 2.0  # how often a running server is asked whether it answers
PROBE_TIMEOUT_S = 2.0
PROBE_GRACE_S = 10.0  # a server just (re)started is not probed yet: it is starting


class StartupError(RuntimeError):
    """Something `up` started did not come up; the message says what and where its log is."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while `up` was waiting for a server."""


class Unanswered(Exception):
    """The server did not answer: refused, reset, timed out, or not JSON. `timed_out`:
    it took the request and said nothing in time, so it is running but slow."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def _http(
    method: str, url: str, token: str, body: Any = None, timeout: float = ASK_TIMEOUT_S
) -> tuple[int, Any]:
    """One request; the status and decoded answer (any status), or Unanswered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except (OSError, ValueError, http.client.HTTPException):
            return exc.code, None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # URLError and TimeoutError are OSErrors: refused, reset, or no answer in time.
        timed_out = isinstance(exc, TimeoutError) or isinstance(
            getattr(exc, "reason", None), TimeoutError
        )
        raise Unanswered(
            f"{method} {url}: {exc or type(exc).__name__}", timed_out=timed_out
        ) from None


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
        self.servers: list[Child] = []
        self.agents: dict[str, Child] = {}
        self.admin_token = ""
        self.stopping = False  # set by Ctrl-C or SIGTERM: every wait gives up
        self.supervisor = Supervisor(lambda _line: None)
        self._next_probe = 0.0

    # -- state kept in the data dir ---------------------------------------------------

    def _private_data_dir(self) -> None:
        """The data dir and its secrets, this user's only (also a dir from an older `up`)."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        for path in (
            self.data_dir / "admin.token",
            self.data_dir / "etcd-ports.json",
            *self.data_dir.glob("regions/*.token"),
        ):
            if path.exists():
                os.chmod(path, 0o600)

    def _members(self, tls: EtcdTLS) -> list[LocalEtcd]:
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
            saved = {"members": ports, "peer_tls": True}
            write_private(path, json.dumps(saved).encode())
        # Members of an older data dir recorded each other's plain-HTTP peer URLs: they
        # keep them (clients need certificates all the same).
        tls = dataclasses.replace(tls, peers=bool(saved.get("peer_tls")))
        if self.etcd_members == 1:
            return [
                LocalEtcd(
                    self.data_dir / "etcd",
                    client_port=ports[0]["client"],
                    peer_port=ports[0]["peer"],
                    tls=tls,
                )
            ]
        members = [
            LocalEtcd(
                self.data_dir / f"etcd-{i}",
                client_port=p["client"],
                peer_port=p["peer"],
                name=f"etcd-{i}",
                tls=tls,
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
        write_private(path, secret.encode())
        return secret

    # -- asking the servers -----------------------------------------------------------

    def _request(
        self,
        url: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = ASK_TIMEOUT_S,
        starting: bool = False,
    ) -> tuple[int, Any]:
        """One request to the server at `url` (Unanswered if it does not answer), and
        whether it answered, recorded and said when that changes. A server `starting`
        refuses connections until it listens: only a timeout counts against it then."""
        asked = time.monotonic()
        try:
            answer = _http(method, url + path, self.admin_token, body, timeout)
        except Unanswered as exc:
            if exc.timed_out or not starting:
                self.supervisor.answered(url, False, asked_at=asked)
            raise
        self.supervisor.answered(url, True, asked_at=asked)
        return answer

    def _ask(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Ask the first server until it answers, keeping the children running
        meanwhile; Interrupted on Ctrl-C."""
        while True:
            with contextlib.suppress(Unanswered):
                return self._request(self.url, method, path, body)
            for _ in range(5):
                if self.stopping:
                    raise Interrupted
                self.supervisor.tick([*self.servers, *self.agents.values()])
                time.sleep(0.1)

    def regions(self) -> list[dict[str, Any]] | None:
        """The regions as the first server lists them; None if it does not answer now."""
        try:
            status, answer = self._request(self.url, "GET", "/v1/regions")
        except Unanswered:
            return None
        return list(answer["items"]) if status == 200 else []

    def _probe(self) -> None:
        """Ask every running server whether it answers, every PROBE_EVERY_S."""
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + PROBE_EVERY_S
        for url, server in zip(self.urls, self.servers, strict=True):
            if self.stopping:
                return
            if server.running and now - server.started >= PROBE_GRACE_S:
                with contextlib.suppress(Unanswered):
                    self._request(url, "GET", "/v1/health", timeout=PROBE_TIMEOUT_S)

    def supervise(self) -> None:
        """One round: restart what exited, report servers that stop or start answering."""
        self.supervisor.tick([*self.servers, *self.agents.values()])
        self._probe()

    # -- processes --------------------------------------------------------------------

    def _log(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def _wait_ready(self, timeout: float) -> None:
        """Wait for every server to be ready: `timeout` seconds of it refusing or saying
        it is not ready, not counting the time it takes requests and answers nothing
        (it is running, but slow: that is waited for, and said)."""
        end = time.monotonic() + timeout
        for url, server in zip(self.urls, self.servers, strict=True):
            while True:
                if not server.running:
                    raise StartupError(
                        f"server exited with {server.proc.returncode}; see {server.log}"
                    )
                asked = time.monotonic()
                try:
                    status, _ = self._request(url, "GET", "/v1/ready", timeout=1, starting=True)
                    if status == 200:
                        break
                except Unanswered as exc:
                    if exc.timed_out:
                        end += time.monotonic() - asked
                if self.stopping:
                    raise Interrupted
                if time.monotonic() > end:
                    raise StartupError(f"server {url} not ready within {timeout} s")
                time.sleep(0.1)

    def _server_name(self, i: int) -> str:
        return "server" if len(self.urls) == 1 else f"server-{i + 1}"

    def _region_token(self, region: DemoRegion) -> str:
        path = self.data_dir / "regions" / f"{region.name}.token"
        status, answer = self._ask(
            "POST",
            "/v1/regions",
            {"name": region.name, "country": region.country, "labels": region.labels},
        )
        if status == 201:
            write_private(path, answer["token"].encode())
            return str(answer["token"])
        if status == 409 and path.exists():
            return path.read_text().strip()
        if status == 409:
            # Registered by an earlier run (or by a first try whose answer was lost)
            # and its token file is gone: rotate it.
            status, answer = self._ask("POST", f"/v1/regions/{region.name}/token", {})
            if status == 201:
                write_private(path, answer["token"].encode())
                return str(answer["token"])
        raise StartupError(f"cannot register region {region.name}: HTTP {status} {answer}")

    def start(self, *, timeout: float = 30.0) -> None:
        """Start etcd, the servers and the agents; return once the servers are ready
        (Interrupted if Ctrl-C comes first)."""
        self._private_data_dir()
        self.admin_token = self._admin_token()
        audit_key = make_audit_key(self.data_dir / "audit.key")
        kek_file = make_kek_file(self.data_dir / "kek")
        tls = local_etcd_tls(self.data_dir / "tls")
        self.etcd = self._members(tls)
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
                kek_file=kek_file,
                etcd_ca=tls.ca,
                etcd_cert=tls.client_cert,
                etcd_key=tls.client_key,
                # Several members' addresses are one gRPC target: name the certificates' SAN.
                etcd_server_name="localhost",
            )
            name = self._server_name(i)
            self.servers.append(
                self.supervisor.start(
                    name, command, {ADMIN_TOKEN_ENV: self.admin_token}, self._log(name)
                )
            )
        self._wait_ready(timeout)
        for region in DEMO_REGIONS:
            self.start_agent(region.name)

    def start_agent(self, name: str) -> Child:
        """Start the agent of demo region `name`, against every server."""
        region = next(r for r in DEMO_REGIONS if r.name == name)
        token = self._region_token(region)
        command = agent_command(
            servers=self.urls,
            region=name,
            state_dir=self.data_dir / "agents" / name,
            cpu=DEMO_CPU,
            memory_mb=DEMO_MEMORY_MB,
            driver="raw",  # the demo runs where bubblewrap and cgroups may not be
        )
        self.agents[name] = self.supervisor.start(
            f"agent {name}",
            command,
            {REGION_TOKEN_ENV: token},
            self._log(f"agent-{name}"),
            restart=False,
        )
        return self.agents[name]

    def stop(self) -> None:
        """Stop everything, in order: agents, servers, etcd. Safe to call twice."""
        for group in (list(self.agents.values()), self.servers):
            stop_processes([child.proc for child in group])
        self.agents.clear()
        self.servers = []
        for member in self.etcd:
            member.stop()
        self.etcd = []

    def _wait_regions(self, seconds: float) -> list[dict[str, Any]] | None:
        """Wait (up to `seconds`) for every demo region to be ready; the last answer."""
        end = time.monotonic() + seconds
        items = None
        while time.monotonic() < end and not self.stopping:
            items = self.regions()
            if (
                items is not None
                and len(items) == len(DEMO_REGIONS)
                and all(i["state"] == "ready" for i in items)
            ):
                break
            self.supervise()
            time.sleep(0.2)
        return items

    def _show(self, console: Console, items: list[dict[str, Any]] | None) -> None:
        if items is None:
            console.print("[yellow]the server is not answering yet: regions not shown[/]")
        else:
            table = Table(title="federation is up")
            table.add_column("region")
            table.add_column("country")
            table.add_column("state")
            for item in items:
                table.add_row(item["name"], item["country"], item["state"])
            console.print(table)
        console.print(f"API URL:      {', '.join(self.urls)}")
        console.print(f"dashboard:    {self.url}/ui/  (log in with the admin token)")
        console.print(f"admin token:  {self.admin_token}")
        console.print(f"data and logs: {self.data_dir}")
        console.print(
            f"etcd:          {', '.join(f'https://{m.endpoint}' for m in self.etcd)} "
            f"(client certificates in {self.data_dir / 'tls'})"
        )
        console.print(
            f"try: export FEDERATION_URL={self.url} "
            f"FEDERATION_TOKEN={self.admin_token}; federation region list"
        )
        console.print("Ctrl-C stops everything.")

    def run_foreground(self, console: Console) -> int:
        """`federation up`: start, show where things are, keep everything running until
        Ctrl-C, stop cleanly."""

        def on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        self.supervisor = Supervisor(console.print)
        try:
            with console.status("starting etcd, the server and four regions..."):
                self.start()
                items = self._wait_regions(30)
            self._show(console, items)
            while not self.stopping:
                self.supervise()
                time.sleep(0.2)
            return 0
        except Interrupted:
            return 0
        except StartupError as exc:
            console.print(f"[red]federation up failed:[/] {exc}")
            return 1
        finally:
            console.print("stopping agents, server and etcd...")
            self.stop()
