"""Faults that happen, injected while deploys go on (docs/reliability.md has the bounds).

After each: every deploy that got a 2xx is present exactly once, no replica was ever
placed outside the EEA, and everything is Running again within CONVERGE_S.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from federation.processes.local_etcd import LocalEtcdCluster
from federation.store import Store
from tests.conftest import TTL
from tests.faults.conftest import CONVERGE_S, Cluster, http, restart_member

pytestmark = pytest.mark.slow


def test_killing_the_etcd_leader_loses_nothing(cluster: Cluster) -> None:
    cluster.start_traffic()
    time.sleep(1.5)
    # The leader, the harder case: writes forwarded to it before the election are lost.
    victim = cluster.etcd.leader()
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    time.sleep(3)  # two members keep quorum: deploys go on
    restart_member(victim)
    time.sleep(1.5)
    cluster.stop_traffic()
    took = cluster.check_converged()
    # (status, seconds) of each deploy: if this fails, which ones were slow.
    assert len(cluster.accepted) >= 10, str(cluster.durations)
    assert 500 not in cluster.statuses
    slowest = max(seconds for _, seconds in cluster.durations)
    print(f"etcd leader kill: slowest deploy {slowest:.2f} s; converged {took:.2f} s later")


async def test_a_write_the_dying_etcd_leader_swallowed_is_sent_again(tmp_path: Path) -> None:
    etcd = LocalEtcdCluster(tmp_path / "etcd", members=3)
    etcd.start()
    try:
        leader = etcd.leader()
        follower = next(m for m in etcd.members if m is not leader)
        # Through a follower: it forwards writes to the leader it knows, and one it
        # forwards to a dead leader before the election is never answered.
        async with Store([follower.endpoint], prefix="/faults/", timeout=8.0) as store:
            await store.put("warm", {"v": 0})
            assert leader.proc is not None
            leader.proc.send_signal(signal.SIGKILL)
            leader.proc.wait()
            started = time.monotonic()
            revision = await store.create("after-the-kill", {"v": 1})
            took = time.monotonic() - started
            entry = await store.get("after-the-kill")
        assert entry is not None and entry.value == {"v": 1} and entry.revision == revision
        # Sent again after an attempt's bound, not after the whole 8 s deadline.
        assert took < store.timeout / 2, f"the write took {took:.2f} s"
        print(f"write during an etcd leader election: {took:.2f} s")
    finally:
        etcd.stop()


def test_killing_the_leader_server_hands_over_to_the_standby(cluster: Cluster) -> None:
    cluster.start_traffic()
    time.sleep(1.5)
    leader = cluster.leader()
    assert leader is not None
    leader.stop(signal.SIGKILL)
    killed = time.monotonic()
    while (new := cluster.leader()) is None:
        assert time.monotonic() - killed < TTL + 3, "no standby took over"
        time.sleep(0.1)
    print(f"leader kill: {new.identity} leads {time.monotonic() - killed:.2f} s later")
    time.sleep(1.5)
    cluster.stop_traffic()
    cluster.check_converged()
    assert 500 not in cluster.statuses


def test_restarting_every_server_at_once(cluster: Cluster) -> None:
    cluster.start_traffic()
    time.sleep(1.5)
    ports = [int(s.url.rsplit(":", 1)[1]) for s in cluster.servers]
    for server in cluster.servers:
        server.stop(signal.SIGKILL)
    # Same addresses, as a service manager restarts them: the agents know these URLs.
    cluster.servers[:] = [
        cluster.start_server(f"server-{i}b", port) for i, port in enumerate(ports, 1)
    ]
    time.sleep(1.5)
    cluster.stop_traffic()
    took = cluster.check_converged()
    assert 500 not in cluster.statuses
    print(f"all servers restarted: converged {took:.2f} s after traffic stopped")


def test_losing_quorum_answers_503_then_recovers(cluster: Cluster) -> None:
    cluster.start_traffic()
    time.sleep(1.5)
    down = cluster.etcd.members[1:]
    for member in down:
        assert member.proc is not None
        member.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1)
        server = cluster.servers[0]
        started = time.monotonic()
        status, body = http(server.url, cluster.admin, "GET", "/v1/services")
        took = time.monotonic() - started
        assert status == 503, (status, body)
        assert body["error"]["code"] == "unavailable"
        assert took < 8, f"the API hung for {took:.1f} s"
        status, _ = http(server.url, "", "GET", "/v1/ready")
        assert status == 503
        time.sleep(5)  # 10 s without quorum in all, with deploys trying throughout
    finally:
        for member in down:
            assert member.proc is not None
            member.proc.send_signal(signal.SIGCONT)
    time.sleep(2)
    cluster.stop_traffic()
    took = cluster.check_converged()
    assert 500 not in cluster.statuses
    assert 503 in cluster.statuses  # clients saw the outage as 503, not as a hang
    print(f"quorum loss: converged {took:.2f} s after quorum came back; bound {CONVERGE_S} s")
