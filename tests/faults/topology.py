"""The production topology with a network between its parts: every etcd member,
server and region agent in a network namespace of its own (`netns.py`), servers
listening on their namespace address, clients (the test) on the bridge.

Also here: the client workload whose every operation goes into a `History`, and
what the instances' own start/stop log (`instance.py`) says about who ran when.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.model.token import new_secret
from federation.processes.children import launch
from federation.processes.commands import (
    ADMIN_TOKEN_ENV,
    REGION_TOKEN_ENV,
    agent_command,
    serve_command,
)
from federation.processes.local_etcd import LocalEtcd, LocalEtcdCluster
from tests.conftest import TTL, AgentProcess, ServerProcess, wait_http_ok
from tests.faults.conftest import http
from tests.faults.history import History
from tests.faults.netns import Host, Network

REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US"}
PORT = 8080
INSTANCE = Path(__file__).with_name("instance.py")
RELAY = Path(__file__).with_name("latency.py")
COLLECTION = {"service": "services", "policy": "policies"}  # a history key's kind


@dataclass
class NetCluster:
    net: Network
    etcd: LocalEtcdCluster
    servers: list[ServerProcess]
    hosts: dict[str, Host]  # by server identity, region name and etcd member name
    admin: str
    tmp: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    history: History = field(default_factory=History)
    relays: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def instance_log(self) -> Path:
        return self.tmp / "instances.log"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Through any replica that answers, as a client with every URL would."""
        last: tuple[int, Any] = (0, "no server")
        for server in self.servers:
            last = http(server.url, self.admin, method, path, body)
            if last[0] not in (0, 502, 503, 504):
                return last
        return last

    def start_server(self, identity: str, etcd: Sequence[str]) -> ServerProcess:
        """`federation serve` in `identity`'s namespace, on its address, against the
        etcd endpoints `etcd`; ready to answer."""
        host = self.hosts[identity]
        command = serve_command(
            etcd=etcd, port=PORT, identity=identity, election_ttl=TTL, region_ttl=TTL
        )
        log = self.tmp / f"{identity}.log"
        proc = launch(
            [*host.wrap(), *command, f"--host={host.address}", "--insecure-http"],
            log=log,
            env={ADMIN_TOKEN_ENV: self.admin},
        )
        server = ServerProcess(proc, f"http://{host.address}:{PORT}", identity, log)
        try:
            wait_http_ok(server.url + "/v1/ready", 30)
        except BaseException:
            server.stop()
            raise
        return server

    def attach(self, identity: str, etcd: Sequence[str]) -> ServerProcess:
        """Restart the server `identity` against only the etcd endpoints `etcd`."""
        index = next(i for i, s in enumerate(self.servers) if s.identity == identity)
        self.servers[index].stop()
        self.servers[index] = self.start_server(identity, etcd)
        return self.servers[index]

    def call_one(
        self, server: ServerProcess, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        """Through `server` only."""
        return http(server.url, self.admin, method, path, body)

    def is_leader(self, server: ServerProcess) -> bool:
        status, body = http(server.url, "", "GET", "/v1/ready")
        return status == 200 and bool(body.get("leader"))

    def leader(self) -> ServerProcess | None:
        return next((s for s in self.servers if self.is_leader(s)), None)

    def start_relays(self, region: str, *, rtt_ms: float, loss: float) -> list[str]:
        """A latency relay (`latency.py`) per server in `region`'s namespace, adding
        `rtt_ms` to the round trip (jitter a tenth of it) and losing `loss` of the
        chunks; the URLs its agent should use."""
        urls = []
        for i, server in enumerate(self.servers):
            port = 18081 + i
            target = server.url.removeprefix("http://")
            argv = [sys.executable, str(RELAY), f"127.0.0.1:{port}", target]
            argv += [str(rtt_ms / 2), str(rtt_ms / 20), str(loss)]
            log = self.tmp / f"relay-{region}-{server.identity}.log"
            self.relays.append(launch([*self.hosts[region].wrap(), *argv], log=log, env={}))
            urls.append(f"http://127.0.0.1:{port}")
        return urls

    def start_agent(
        self, region: str, *extra: str, servers: Sequence[str] | None = None
    ) -> AgentProcess:
        """The agent of `region` in its namespace, failing over between the servers
        (or the URLs `servers`, e.g. its relays)."""
        state = self.tmp / "agents" / region
        command = agent_command(
            servers=servers or [s.url for s in self.servers],
            region=region,
            state_dir=state,
            cpu=64,
            memory_mb=65536,
        )
        proc = launch(
            [*self.hosts[region].wrap(), *command, *extra],
            log=self.tmp / f"agent-{region}.log",
            env={REGION_TOKEN_ENV: self.tokens[region]},
        )
        self.agents[region] = AgentProcess(region, proc, state)
        return self.agents[region]

    def deploy_logged(self, name: str, **spec: Any) -> None:
        """A service whose instances log their start and stop to `instance_log`."""
        body = {
            "command": ["{python}", str(INSTANCE), str(self.instance_log)],
            "data_classes": ["phi-eu"],
            "resources": {"cpu": 0.1, "memory_mb": 16},
            **spec,
        }
        status, answer = self.call("PUT", f"/v1/services/{name}", body)
        assert status == 201, answer

    def wait_running_in(self, name: str, region: str, timeout: float) -> float:
        """Seconds until `name` has a ready replica in `region`."""
        start = time.monotonic()
        while True:
            status, body = self.call("GET", f"/v1/services/{name}")
            if status == 200 and body["status"]["placements"].get(region, {}).get("ready", 0):
                return time.monotonic() - start
            assert time.monotonic() - start < timeout, f"{name} not ready in {region}"
            time.sleep(0.2)

    # -- the client workload ------------------------------------------------------------

    def start_workload(self, via: Sequence[ServerProcess], *, keys: int = 3) -> None:
        """One writer per server in `via`: writes its own keys (deploys of a 0-replica
        service, deletes, changes to a policy of its own) through that server and reads
        each back through it; and one reader per server, reading every key written so
        far in turn (a slow server slows only its own client). All into `history`."""
        for target, server in [(self._client, s) for s in via] + [
            (self._reader, s) for s in self.servers
        ]:
            thread = threading.Thread(target=target, args=(server, keys), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_workload(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _client(self, server: ServerProcess, keys: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            key = f"h-{server.identity}-{n % keys}"
            if n % 7 == 0:
                self._write_policy(server, n)
                continue
            path = f"/v1/services/{key}"
            body = {"command": ["sleep", "1"], "replicas": 0, "env": {"SEQ": str(n)}}
            deleting = n % 5 == 0

            def send(path: str = path, body: Any = body, deleting: bool = deleting) -> int:
                if deleting:
                    return http(server.url, self.admin, "DELETE", path)[0]
                return http(server.url, self.admin, "PUT", path, body)[0]

            value = None if deleting else str(n)
            self.history.write(f"service/{key}", value, send, via=server.identity)
            self._read(server, f"service/{key}")
            time.sleep(0.1)

    def _reader(self, server: ServerProcess, keys: int) -> None:
        while not self._stop.is_set():
            written = sorted({op.key for op in self.history.snapshot() if op.kind == "write"})
            for key in written:
                self._read(server, key)
            time.sleep(0.1)

    def _write_policy(self, server: ServerProcess, n: int) -> None:
        name = f"p-{server.identity}"
        body = {"data_classes": [f"note-{n}"], "allow": ["group:eea"]}

        def put() -> int:
            return http(server.url, self.admin, "PUT", f"/v1/policies/{name}", body)[0]

        self.history.write(f"policy/{name}", f"note-{n}", put, via=server.identity)
        self._read(server, f"policy/{name}")

    def _read(self, server: ServerProcess, key: str) -> None:
        kind, name = key.split("/", 1)

        def get() -> tuple[int, str | None]:
            status, body = http(server.url, self.admin, "GET", f"/v1/{COLLECTION[kind]}/{name}")
            return status, value_of(kind, body) if status == 200 else None

        self.history.read(key, get, via=server.identity)

    def final_values(self) -> dict[str, str | None]:
        """Every key's value now, read through any replica (after healing)."""
        keys = {op.key for op in self.history.snapshot()}
        final = {}
        for key in keys:
            kind, name = key.split("/", 1)
            status, body = self.call("GET", f"/v1/{COLLECTION[kind]}/{name}")
            assert status in (200, 404), (key, status, body)
            final[key] = value_of(kind, body) if status == 200 else None
        return final


def value_of(kind: str, body: Any) -> str | None:
    """The value a workload write put, as a read finds it."""
    if kind == "service":
        return str(body["env"].get("SEQ"))
    notes = [c for c in body["data_classes"] if str(c).startswith("note-")]
    return notes[0] if notes else None


# -- what the instances say ---------------------------------------------------------------


@dataclass(frozen=True)
class Life:
    """One instance's life, from its own log; `stop` is None while it runs."""

    service: str
    region: str
    instance: str
    start: float
    stop: float | None

    def overlaps(self, other: Life) -> float:
        """Seconds both ran at once (0 if never)."""
        end = min(self.stop or time.time(), other.stop or time.time())
        return max(0.0, end - max(self.start, other.start))


def lives(log: Path) -> list[Life]:
    """Every instance life in `log`, in order of start."""
    running: dict[tuple[str, str, str], float] = {}  # instance ids repeat across regions
    done: list[Life] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        what, service, region, instance, at = line.split()
        if what == "start":
            running[service, region, instance] = float(at)
        elif (service, region, instance) in running:
            started = running.pop((service, region, instance))
            done.append(Life(service, region, instance, started, float(at)))
    done += [Life(*who, started, None) for who, started in running.items()]
    return sorted(done, key=lambda life: life.start)


def double_runs(log: Path, service: str) -> list[str]:
    """Every pair of `service`'s instances that ran at the same time."""
    mine = [life for life in lives(log) if life.service == service]
    found = []
    for i, a in enumerate(mine):
        for b in mine[i + 1 :]:
            if (both := a.overlaps(b)) > 0:
                found.append(
                    f"{service} ran twice at once for {both:.2f} s: {a.instance} in "
                    f"{a.region} and {b.instance} in {b.region}"
                )
    return found


def most_running(log: Path, service: str, since: float) -> int:
    """The most instances of `service` that ran at once from wall-clock `since` on."""
    mine = [life for life in lives(log) if life.service == service]
    moments = [since] + [life.start for life in mine if life.start > since]
    return max(
        (sum(1 for life in mine if life.start <= t < (life.stop or float("inf"))) for t in moments),
        default=0,
    )


# -- the fixture ----------------------------------------------------------------------------


def build(net: Network, tmp: Path, *, members: int = 3, servers: int = 2) -> NetCluster:
    """etcd members, servers and (registered, not started) regions, each in a namespace."""
    hosts: dict[str, Host] = {}
    etcd_members = []
    for i in range(members):
        host = hosts[f"etcd-{i}"] = net.add(f"etcd-{i}")
        etcd_members.append(
            LocalEtcd(
                tmp / f"etcd-{i}",
                name=f"etcd-{i}",
                host=host.address,
                wrapper=host.wrap(),
                client_port=2379,
                peer_port=2380,
            )
        )
    etcd = LocalEtcdCluster(tmp, members=etcd_members)
    etcd.start()
    admin = new_secret()
    cluster = NetCluster(net, etcd, [], hosts, admin, tmp)
    for i in range(1, servers + 1):
        hosts[f"server-{i}"] = net.add(f"server-{i}")
        cluster.servers.append(cluster.start_server(f"server-{i}", etcd.endpoints))
    for region, country in REGIONS.items():
        hosts[region] = net.add(region)
        status, body = cluster.call("POST", "/v1/regions", {"name": region, "country": country})
        assert status == 201, body
        cluster.tokens[region] = body["token"]
    status, body = cluster.call(
        "PUT",
        "/v1/policies/eu-patient-data",
        {"data_classes": ["phi-eu"], "allow": ["group:eea", "CH"]},
    )
    assert status == 201, body
    return cluster


def wait_regions_ready(cluster: NetCluster, regions: Sequence[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(
        cluster.call("GET", f"/v1/regions/{r}")[1].get("state") == "ready" for r in regions
    ):
        assert time.monotonic() < deadline, "regions not ready"
        time.sleep(0.2)
