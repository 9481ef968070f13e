"""The controller on a real server and etcd, seen through the API: failover, policy
re-evaluation, rollouts and rollback, rebalance, and leader fencing.

The demo regions are played by the test (see `agents.py`); the region TTL is 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from federation.controller import Controller
from federation.model.service import ServiceSpec
from federation.store import Store, keys
from federation.store import policies as store_policies
from federation.store import services as store_services
from federation.store.election import LeaderElection
from federation.store.etcd import Op
from tests.conftest import Api
from tests.integration.agents import (
    EU_PATIENT_DATA,
    Federation,
    condition,
    running_federation,
    wait_until,
)

PHI_EU: dict[str, Any] = {
    "name": "patient-records",
    "command": ["python", "-m", "http.server", "{port}"],
    "version": "1",
    "replicas": 4,
    "data_classes": ["phi-eu"],
    "placement": {"min_regions": 2, "max_per_region": 4},
}


@pytest.fixture
async def federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    async with running_federation(api, store) as fed:
        yield fed


async def no_change_for(
    federation: Federation, service: str, expected: dict[str, int], seconds: float
) -> None:
    """The service's replicas stay as `expected` for `seconds` (checked every 0.1 s)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert await federation.replicas(service) == expected
        await asyncio.sleep(0.1)


# -- failover --------------------------------------------------------------------------


async def test_lost_region_replicas_move_to_fr_within_ttl_plus_two_seconds(
    federation: Federation,
) -> None:
    await federation.deploy(PHI_EU)
    await federation.wait_placed("patient-records", {"eu-de-1": 2, "eu-fr-1": 2})
    for region in ("eu-de-1", "eu-fr-1"):
        await federation.report(region)
    await federation.wait_phase("patient-records", "Running")

    await federation.stop_heartbeats("eu-de-1")
    silent = time.monotonic()
    ttl = federation.api.config.region_ttl
    await federation.wait_placed("patient-records", {"eu-fr-1": 4}, timeout=ttl + 2)
    assert time.monotonic() - silent <= ttl + 2
    assert set(await federation.assignments("patient-records")) == {"eu-fr-1"}  # never US/IN

    body = await federation.service("patient-records")
    placements = body["status"]["placements"]
    assert set(placements) == {"eu-fr-1"}
    assert placements["eu-fr-1"]["desired"] == 4
    assert body["status"]["phase"] == "Progressing"  # 2 new replicas not yet ready
    await federation.report("eu-fr-1")
    body = await federation.wait_phase("patient-records", "Running")
    assert body["status"]["replicas"] == {"desired": 4, "ready": 4}
    assert body["status"]["residency"]["countries"] == {"eu-fr-1": "FR"}


async def test_each_pass_that_writes_logs_one_sentence_of_what_it_did(
    federation: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    """What an operator reading the server's log sees: one line per pass that wrote,
    saying what it planned and wrote, and which services it placed or moved (passes
    with nothing to write log at DEBUG)."""
    caplog.set_level(logging.INFO, logger="federation.controller")

    def passes() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "federation.controller.runner"]

    async def logged(sentence: str) -> bool:
        return f"controller: {sentence}" in passes()

    await federation.deploy(PHI_EU)
    await federation.wait_placed("patient-records", {"eu-de-1": 2, "eu-fr-1": 2})
    placed = "incremental pass: planned 1 service, wrote 1 in 1 txn: placed 1 (patient-records)"
    await wait_until(lambda: logged(placed), timeout=1, what=placed)

    await federation.stop_heartbeats("eu-de-1")
    await federation.wait_placed("patient-records", {"eu-fr-1": 4}, timeout=5)
    moved = "incremental pass: planned 1 service, wrote 1 in 1 txn: moved 1 (patient-records)"
    await wait_until(lambda: logged(moved), timeout=1, what=moved)
    assert passes() == [f"controller: {placed}", f"controller: {moved}"]


async def test_failover_waits_for_the_grace_period(federation: Federation) -> None:
    await federation.deploy({**PHI_EU, "failover": {"grace_s": 30}})
    await federation.wait_placed("patient-records", {"eu-de-1": 2, "eu-fr-1": 2})
    await federation.stop_heartbeats("eu-de-1")
    await federation.wait_state("eu-de-1", "unreachable", timeout=4)

    # Flap protection: replicas stay assigned to the lost region during the grace.
    await no_change_for(federation, "patient-records", {"eu-de-1": 2, "eu-fr-1": 2}, 2.5)
    body = await federation.service("patient-records")
    assert body["status"]["phase"] == "Degraded"
    available = condition(body, "Available")
    assert available is not None and available["reason"] == "RegionUnreachable", body
    assert body["status"]["placements"]["eu-de-1"]["ready"] == 0
    status, explain = await federation.api.call("GET", "/v1/services/patient-records/explain")
    assert status == 200
    de = next(r for r in explain["regions"] if r["region"] == "eu-de-1")
    assert de["outcome"] == "kept", de
    assert "grace" in de["reasons"][0]

    # The region comes back within the grace: nothing moved, and it is Running again.
    federation.start_heartbeats("eu-de-1")
    await federation.wait_state("eu-de-1", "ready", timeout=2)
    for region in ("eu-de-1", "eu-fr-1"):
        await federation.report(region)
    await federation.wait_phase("patient-records", "Running")
    assert await federation.replicas("patient-records") == {"eu-de-1": 2, "eu-fr-1": 2}


# -- policy change -----------------------------------------------------------------------


async def restrict_policy_to_de(federation: Federation) -> None:
    status, body = await federation.api.call(
        "PUT", "/v1/policies/eu-patient-data", json={**EU_PATIENT_DATA, "allow": ["DE"]}
    )
    assert status == 200, body


async def draining(federation: Federation, service: str) -> dict[str, bool]:
    body = await federation.service(service)
    return {r: p["draining"] for r, p in body["status"]["placements"].items()}


async def test_policy_change_drains_fr_once_de_reports_ready(federation: Federation) -> None:
    await federation.deploy(PHI_EU)
    await federation.wait_placed("patient-records", {"eu-de-1": 2, "eu-fr-1": 2})
    for region in ("eu-de-1", "eu-fr-1"):
        await federation.report(region)
    await federation.wait_phase("patient-records", "Running")

    await restrict_policy_to_de(federation)

    # Make before break: DE gets all 4, FR keeps its 2 running, marked draining.
    async def fr_draining() -> bool:
        return await draining(federation, "patient-records") == {
            "eu-de-1": False,
            "eu-fr-1": True,
        }

    await wait_until(fr_draining, timeout=3, what="FR draining while DE scales up")
    assigned = await federation.assignments("patient-records")
    assert assigned["eu-de-1"].replicas == 4 and not assigned["eu-de-1"].draining
    assert assigned["eu-fr-1"].replicas == 2 and assigned["eu-fr-1"].draining
    body = await federation.service("patient-records")
    assert body["status"]["phase"] == "Progressing"
    assert body["status"]["residency"]["compliant"] is False
    assert body["status"]["residency"]["allowed_regions"] == ["eu-de-1"]
    survivability = condition(body, "Survivability")
    assert survivability is not None and survivability["reason"] == "NoCompliantFailoverRegion"
    _, policy = await federation.api.call("GET", "/v1/policies/eu-patient-data")
    assert body["status"]["residency"]["policies"] == {"eu-patient-data": policy["revision"]}
    # Still draining a while later: nothing is ready in DE yet (deadline is 120 s).
    await asyncio.sleep(1)
    assert await fr_draining()

    await federation.report("eu-de-1")

    async def fr_gone() -> bool:
        return set(await federation.assignments("patient-records")) == {"eu-de-1"}

    await wait_until(fr_gone, timeout=2, what="FR stopped once DE is ready")
    assert await federation.replicas("patient-records") == {"eu-de-1": 4}
    body = await federation.wait_phase("patient-records", "Running")
    assert body["status"]["residency"]["compliant"] is True
    assert body["status"]["residency"]["countries"] == {"eu-de-1": "DE"}


async def test_policy_change_stops_fr_by_the_deadline_without_any_report(
    federation: Federation,
) -> None:
    await federation.deploy({**PHI_EU, "rollout": {"progress_deadline_s": 3}})
    await federation.wait_placed("patient-records", {"eu-de-1": 2, "eu-fr-1": 2})

    await restrict_policy_to_de(federation)
    changed = time.monotonic()

    async def fr_draining() -> bool:
        return (await draining(federation, "patient-records")).get("eu-fr-1") is True

    await wait_until(fr_draining, timeout=2, what="FR draining")

    async def fr_gone() -> bool:
        return set(await federation.assignments("patient-records")) == {"eu-de-1"}

    await wait_until(fr_gone, timeout=5, what="FR stopped by the progress deadline")
    took = time.monotonic() - changed
    assert 2.5 <= took <= 4.5, took
    assert await federation.replicas("patient-records") == {"eu-de-1": 4}


async def test_policy_removing_every_region_leaves_the_service_pending_nowhere(
    federation: Federation,
) -> None:
    await federation.deploy({**PHI_EU, "rollout": {"progress_deadline_s": 2}})
    await federation.wait_placed("patient-records", {"eu-de-1": 2, "eu-fr-1": 2})
    status, body = await federation.api.call(
        "PUT", "/v1/policies/eu-patient-data", json={**EU_PATIENT_DATA, "allow": ["CH"]}
    )
    assert status == 200, body

    async def nothing_left() -> bool:
        return await federation.assignments("patient-records") == {}

    await wait_until(nothing_left, timeout=4, what="every assignment stopped by the deadline")
    body = await federation.wait_phase("patient-records", "Pending")
    scheduled = condition(body, "Scheduled")
    assert scheduled is not None and scheduled["reason"] == "NoCompliantRegion", body
    assert body["status"]["placements"] == {}


# -- rollouts --------------------------------------------------------------------------


TWO_REGIONS = {**PHI_EU, "replicas": 2, "placement": {"min_regions": 2, "max_per_region": 1}}


async def versions(federation: Federation, service: str) -> dict[str, str]:
    return {r: a.runtime.version for r, a in (await federation.assignments(service)).items()}


async def running_v1(federation: Federation, spec: dict[str, Any]) -> None:
    await federation.deploy(spec)
    await federation.wait_placed(spec["name"], {"eu-de-1": 1, "eu-fr-1": 1})
    for region in ("eu-de-1", "eu-fr-1"):
        await federation.report(region)
    await federation.wait_phase(spec["name"], "Running")


def ready_unless_generation(generation: int) -> Any:
    return lambda a: a.runtime.generation != generation


async def test_rollout_goes_region_by_region(federation: Federation) -> None:
    await running_v1(federation, TWO_REGIONS)
    await federation.deploy({**TWO_REGIONS, "version": "2"})

    async def one_switched() -> dict[str, str] | None:
        found = await versions(federation, "patient-records")
        return found if sorted(found.values()) == ["1", "2"] else None

    first = await wait_until(one_switched, timeout=3, what="one region on version 2")
    (new,) = [r for r, v in first.items() if v == "2"]
    (old,) = [r for r, v in first.items() if v == "1"]
    body = await federation.service("patient-records")
    assert body["status"]["phase"] == "Progressing"
    rollout = condition(body, "Rollout")
    assert rollout is not None and rollout["reason"] == "RolloutProgressing", body

    # Until the first region reports version 2 ready, the second stays on version 1
    # (its instances at generation 2 are reported, but still starting).
    await federation.report(new, ready=ready_unless_generation(2))
    await no_change_for_versions(federation, first, 1.0)

    await federation.report(new)
    await wait_until(lambda: all_at(federation, "2"), timeout=3, what="second region on version 2")
    body = await federation.service("patient-records")
    assert body["status"]["phase"] == "Progressing"
    assert (await federation.assignments("patient-records"))[old].runtime.generation == 2

    await federation.report(old)
    body = await federation.wait_phase("patient-records", "Running")
    rollout = condition(body, "Rollout")
    assert rollout is not None and rollout["reason"] == "RolloutComplete", body
    assert {p["version"] for p in body["status"]["placements"].values()} == {"2"}
    assert body["status"]["replicas"] == {"desired": 2, "ready": 2}


async def all_at(federation: Federation, version: str) -> bool:
    found = await versions(federation, "patient-records")
    return bool(found) and set(found.values()) == {version}


async def no_change_for_versions(
    federation: Federation, expected: dict[str, str], seconds: float
) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert await versions(federation, "patient-records") == expected
        await asyncio.sleep(0.1)


async def test_rollout_that_never_becomes_ready_fails_and_rolls_back(
    federation: Federation,
) -> None:
    spec = {**TWO_REGIONS, "rollout": {"max_parallel_regions": 1, "progress_deadline_s": 2}}
    await running_v1(federation, spec)
    await federation.deploy({**spec, "version": "2"})
    changed = time.monotonic()
    await wait_until(lambda: versions_contain(federation, "2"), timeout=2, what="rollout started")
    # The new version's instances start but never become ready.
    for region in ("eu-de-1", "eu-fr-1"):
        await federation.report(region, ready=ready_unless_generation(2))

    body = await federation.wait_phase("patient-records", "Failed", timeout=5)
    assert time.monotonic() - changed >= 2
    rollout = condition(body, "Rollout")
    assert rollout is not None and rollout["reason"] == "RolloutFailed", body
    assert "rolled back to 1" in rollout["message"]
    await wait_until(
        lambda: all_at(federation, "1"), timeout=2, what="every region back on version 1"
    )
    assigned = await federation.assignments("patient-records")
    assert {a.runtime.generation for a in assigned.values()} == {1}
    assert set(assigned) == {"eu-de-1", "eu-fr-1"}
    # The spec keeps the version asked for; the regions run the previous one.
    assert body["version"] == "2" and body["generation"] == 2
    # And it stays rolled back.
    await no_change_for_versions(federation, {"eu-de-1": "1", "eu-fr-1": "1"}, 1.0)


async def versions_contain(federation: Federation, version: str) -> bool:
    return version in (await versions(federation, "patient-records")).values()


# -- rebalance -------------------------------------------------------------------------


async def test_no_automatic_failback_until_rebalance(federation: Federation) -> None:
    spec = {
        **PHI_EU,
        "placement": {"min_regions": 1, "max_per_region": 4, "prefer": ["eu-de-1"]},
    }
    await federation.deploy(spec)
    await federation.wait_placed("patient-records", {"eu-de-1": 4})

    await federation.stop_heartbeats("eu-de-1")
    await federation.wait_placed("patient-records", {"eu-fr-1": 4}, timeout=5)

    federation.start_heartbeats("eu-de-1")
    await federation.wait_state("eu-de-1", "ready", timeout=2)
    await no_change_for(federation, "patient-records", {"eu-fr-1": 4}, 1.5)

    status, body = await federation.api.call("POST", "/v1/services/patient-records/rebalance")
    assert status == 202, body
    await federation.wait_placed("patient-records", {"eu-de-1": 4})
    _, explain = await federation.api.call("GET", "/v1/services/patient-records/explain")
    de = next(r for r in explain["regions"] if r["region"] == "eu-de-1")
    assert de["outcome"] == "chosen"


# -- fencing ---------------------------------------------------------------------------


async def test_a_deposed_leader_cannot_write(store: Store) -> None:
    """Leader A loses its key (as when its lease expires during a pause) and B takes
    over; A still believes it leads for up to its TTL, yet none of its writes land."""
    spec = ServiceSpec.model_validate({"name": "svc", "command": ["sleep", "1"]})
    await store_services.apply(store, spec, if_match=None)
    a = LeaderElection(store, identity="replica-a", ttl=2)
    b = LeaderElection(store, identity="replica-b", ttl=2)
    assert await a.step() == "acquired the leader key"
    ok, _, _ = await store.txn([], [Op.delete(keys.LEADER)])  # A's lease is gone
    assert ok
    assert await b.step() == "acquired the leader key"
    assert a.is_leader  # A has not noticed yet

    deposed = Controller(store, a, region_ttl=2)
    await deposed.reconcile()
    await deposed.close()
    assert deposed.last_sentences == [
        "svc: write lost a race (leader, service, placement or policies moved); replanning"
    ]
    assert await store.get(keys.placement("svc")) is None
    ok, _, _ = await store.txn([a.fence()], [Op.put(keys.placement("svc"), {"x": 1})])
    assert not ok
    assert await store.get(keys.placement("svc")) is None

    leader = Controller(store, b, region_ttl=2)
    await leader.reconcile()
    assert leader.last_sentences[0].startswith("svc: ")
    placed = await store.get(keys.placement("svc"))
    assert placed is not None and placed.value["service"] == "svc"
    await leader.close()


async def test_a_plan_made_under_older_policies_is_not_written(store: Store) -> None:
    """The controller's policies come from its mirror. Should they lag a policy write
    (the watch is a few ms behind etcd), its txn compares the residency fence, so the
    decision fails in etcd instead of landing on outdated residency."""
    spec = ServiceSpec.model_validate({"name": "svc", "command": ["sleep", "1"]})
    await store_services.apply(store, spec, if_match=None)
    election = LeaderElection(store, identity="replica-a", ttl=2)
    assert await election.step() == "acquired the leader key"
    controller = Controller(store, election, region_ttl=2)
    try:
        await controller.mirror.start()
        stale = store_policies.snapshot_of(controller.mirror)
        # A policy write moves the fence (store.policies does it in the same txn).
        await store.put(keys.RESIDENCY_FENCE, {"last_write": "policies/new"})
        await controller.mirror.sync()
        # As if the event had not arrived yet (and no full pass were due).
        controller._residency, controller._full = stale, False
        controller._last_full = time.monotonic()
        controller._names.add("svc")
        await controller.reconcile()
        assert controller.last_sentences == [
            "svc: write lost a race (leader, service, placement or policies moved); replanning"
        ]
        assert await store.get(keys.placement("svc")) is None
        await controller.reconcile()  # with the policies read afresh, it lands
        assert await store.get(keys.placement("svc")) is not None
    finally:
        await controller.close()
