"""The production topology as local processes, for fault injection: a 3-member etcd
cluster, two server replicas, three region agents, and deploy traffic while it runs.

Servers and agents start as in every other suite (`tests.conftest`); what is specific
here is the etcd cluster, the two replicas sharing it, and the traffic."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from federation.model.token import new_secret
from federation.processes.children import stop_processes
from federation.processes.local_etcd import LocalEtcd, LocalEtcdCluster
from tests.conftest import AgentProcess, ServerProcess, start_agent, start_server, stop_agents

if TYPE_CHECKING:
    from tests.faults.topology import NetCluster

REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US"}
CONVERGE_S = 30  # the bound we hold after every fault: all services Running again


def http(url: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request; (0, reason) when nothing answered within 8 s."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=8) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


@dataclass
class Cluster:
    etcd: LocalEtcdCluster
    servers: list[ServerProcess]
    agents: dict[str, AgentProcess]
    admin: str
    tmp: Path
    accepted: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    durations: list[tuple[int, float]] = field(default_factory=list)  # (status, seconds)
    _stop: threading.Event = field(default_factory=threading.Event)
    _traffic: threading.Thread | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Through any replica that answers, as a client with both URLs would."""
        last: tuple[int, Any] = (0, "no server")
        for server in self.servers:
            if server.proc.poll() is not None:
                continue
            last = http(server.url, self.admin, method, path, body)
            if last[0] not in (0, 502, 503, 504):
                return last
        return last

    def start_server(self, identity: str, port: int | None = None) -> ServerProcess:
        """A server replica on the cluster's etcd (not added to `servers`)."""
        return start_server(
            self.etcd.endpoints, identity, self.admin, self.tmp, port=port, ready_timeout=30
        )

    def leader(self) -> ServerProcess | None:
        for server in self.servers:
            if server.proc.poll() is None:
                status, body = http(server.url, "", "GET", "/v1/ready")
                if status == 200 and body.get("leader"):
                    return server
        return None

    def start_traffic(self) -> None:
        """Deploy a new phi-eu service every 0.2 s; remember which got a 2xx."""

        def run() -> None:
            i = 0
            while not self._stop.is_set():
                name = f"svc-{i:04d}"
                t0 = time.monotonic()
                status, _ = self.call(
                    "PUT",
                    f"/v1/services/{name}",
                    {
                        "command": ["sleep", "3600"],
                        "replicas": 2,
                        "data_classes": ["phi-eu"],
                        "placement": {"min_regions": 2},
                        "resources": {"cpu": 0.1, "memory_mb": 16},
                    },
                )
                self.statuses.append(status)
                self.durations.append((status, round(time.monotonic() - t0, 2)))
                if 200 <= status < 300:
                    self.accepted.append(name)
                i += 1
                time.sleep(0.2)

        self._traffic = threading.Thread(target=run, daemon=True)
        self._traffic.start()

    def stop_traffic(self) -> None:
        self._stop.set()
        if self._traffic is not None:
            self._traffic.join(30)

    def check_converged(self) -> float:
        """Every accepted deploy present exactly once, Running, never outside the EEA;
        returns how long convergence took."""
        start = time.monotonic()
        while True:
            status, body = self.call("GET", "/v1/services")
            if status == 200:
                names = [s["name"] for s in body["items"]]
                assert len(names) == len(set(names))
                assert set(self.accepted) <= set(names), set(self.accepted) - set(names)
                for svc in body["items"]:
                    placed = set(svc["status"]["placements"])
                    assert "us-east-1" not in placed, f"residency violated: {svc['name']}"
                if all(s["status"]["phase"] == "Running" for s in body["items"]):
                    return time.monotonic() - start
            assert time.monotonic() - start < CONVERGE_S, "did not converge"
            time.sleep(0.3)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    etcd = LocalEtcdCluster(tmp_path / "etcd", members=3)
    etcd.start()
    admin = new_secret()
    servers: list[ServerProcess] = []
    agents: dict[str, AgentProcess] = {}
    try:
        c = Cluster(etcd, servers, agents, admin, tmp_path)
        for i in (1, 2):
            servers.append(c.start_server(f"server-{i}"))
        for region, country in REGIONS.items():
            status, body = c.call("POST", "/v1/regions", {"name": region, "country": country})
            assert status == 201, body
            urls = [s.url for s in servers]
            agents[region] = start_agent(
                urls, region, body["token"], tmp_path, cpu=64, memory_mb=65536
            )
        status, body = c.call(
            "PUT",
            "/v1/policies/eu-patient-data",
            {"data_classes": ["phi-eu"], "allow": ["group:eea", "CH"]},
        )
        assert status == 201, body
        deadline = time.monotonic() + 20
        while not all(
            c.call("GET", f"/v1/regions/{r}")[1].get("state") == "ready" for r in REGIONS
        ):
            assert time.monotonic() < deadline, "regions not ready"
            time.sleep(0.2)
        yield c
        c.stop_traffic()
    finally:
        stop_agents(agents.values())
        for server in servers:
            server.stop()
        etcd.stop()


def restart_member(member: LocalEtcd) -> None:
    member.launch()
    member.wait_healthy(30)


@pytest.fixture
def netcluster(tmp_path: Path) -> Iterator[NetCluster]:
    """The topology in namespaces (agents not started: a test starts them, with the
    options it is about). Needs root: under CI=true its absence fails, else skips."""
    from tests.faults.netns import network, unavailable
    from tests.faults.topology import build

    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with network() as net:
        cluster: NetCluster | None = None
        try:
            cluster = build(net, tmp_path)
            yield cluster
        finally:
            if cluster is not None:
                cluster.stop_workload()
                net.heal_all()
                stop_agents(cluster.agents.values())
                stop_processes(cluster.relays)
                for server in cluster.servers:
                    server.stop()
                cluster.etcd.stop()
