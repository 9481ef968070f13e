"""Two real server processes on one etcd: both serve, exactly one leads, leadership moves."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Callable

import pytest

from federation.store import Store, keys
from federation.store.election import LeaderElection
from tests.conftest import ServerProcess, lose_answers


def ready(server: ServerProcess) -> dict[str, object]:
    with urllib.request.urlopen(server.url + "/v1/ready", timeout=2) as resp:
        return dict(json.loads(resp.read()))


def regions_status(server: ServerProcess, token: str) -> int:
    req = urllib.request.Request(
        server.url + "/v1/regions", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=2) as resp:
        return int(resp.status)


def wait_for(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until `predicate` held; fails the test after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


async def test_two_servers_serve_and_exactly_one_leads(
    spawn_server: Callable[..., ServerProcess], store: Store
) -> None:
    a = spawn_server("server-a")
    b = spawn_server("server-b")
    token = spawn_server.admin_token  # type: ignore[attr-defined]
    assert regions_status(a, token) == 200
    assert regions_status(b, token) == 200
    wait_for(lambda: bool(ready(a)["leader"]) or bool(ready(b)["leader"]), 5)
    leaders = [s.identity for s in (a, b) if ready(s)["leader"]]
    assert len(leaders) == 1
    assert await store.get_raw("leader") is not None
    raw = await store.get_raw("leader")
    assert raw is not None and raw[0] == leaders[0]


async def test_stopping_the_leader_hands_over_within_the_election_ttl(
    spawn_server: Callable[..., ServerProcess], store: Store
) -> None:
    a = spawn_server("server-a")
    wait_for(lambda: bool(ready(a)["leader"]), 5)
    b = spawn_server("server-b")
    assert not ready(b)["leader"]
    a.stop(signal.SIGTERM)
    took = wait_for(lambda: bool(ready(b)["leader"]), 2.5)
    assert took <= 2.5  # election TTL is 2 s in tests
    raw = await store.get_raw("leader")
    assert raw is not None and raw[0] == "server-b"


async def test_a_killed_leader_is_replaced_after_its_lease_expires(
    spawn_server: Callable[..., ServerProcess], store: Store
) -> None:
    a = spawn_server("server-a")
    wait_for(lambda: bool(ready(a)["leader"]), 5)
    b = spawn_server("server-b")
    a.stop(signal.SIGKILL)  # no chance to resign: the lease must run out
    took = wait_for(lambda: bool(ready(b)["leader"]), 2 + 1.5)
    assert took <= 3.5
    raw = await store.get_raw("leader")
    assert raw is not None and raw[0] == "server-b"


async def test_a_campaign_whose_answer_was_lost_still_leads(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    election = LeaderElection(store, identity="server-a", ttl=2)
    lose_answers(store, monkeypatch, 1)
    # Sent again, the create-if-absent fails on the key the first attempt made.
    assert await election.step() == "acquired the leader key"
    assert election.is_leader
    assert await election.leader() == "server-a"
    entry = await store.get(keys.LEADER)
    assert entry is not None and entry.lease
    await election.resign()


async def test_leadership_ends_locally_when_the_lease_does_even_if_the_grant_answered_late(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    election = LeaderElection(store, identity="server-a", ttl=2)
    grant = store.grant

    async def slow_answer(ttl: int) -> int:  # etcd granted at once; the answer took 1 s
        lease = await grant(ttl)
        await asyncio.sleep(1)
        return lease

    monkeypatch.setattr(store, "grant", slow_answer)
    sent = time.monotonic()
    assert await election.step() == "acquired the leader key"
    # The lease runs out 2 s after etcd granted it, soon after `sent` (0.3 s for the
    # read of the leader key before the grant, on a loaded machine), not 1 s later.
    await asyncio.sleep(max(0.0, sent + 2.3 - time.monotonic()))
    assert not election.is_leader
    await election.resign()


async def test_a_refresh_with_no_answer_ends_leadership_when_the_local_lease_runs_out(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    election = LeaderElection(store, identity="server-a", ttl=2)
    assert await election.step() == "acquired the leader key"
    refreshed = time.monotonic()

    async def no_answer(lease: int) -> int:  # etcd cut off: the call hangs to its deadline
        await asyncio.sleep(30)
        return 2

    monkeypatch.setattr(store, "keepalive", no_answer)
    said = await election.step()
    assert said.startswith("lost leadership"), said
    assert time.monotonic() - refreshed <= 2 + 0.5
    assert not election.is_leader
    await election.resign()
