"""The controller plans what changed, not the whole world, and stays right doing so:
the mirror it reads from follows etcd, a deploy among many services plans that
service, capacity freed by a delete goes to a service waiting for it at once, and a
full pass after many incremental ones moves nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from federation.api.context import CONTROLLER
from federation.controller import Controller
from federation.model.region import RegionRecord
from federation.model.service import ServiceSpec
from federation.store import Op, Store, keys
from federation.store import services as store_services
from federation.store.mirror import Mirror
from tests.conftest import Api
from tests.integration.agents import Federation, running_federation, wait_until


@pytest.fixture
async def federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    async with running_federation(api, store) as fed:
        yield fed


def controller(api: Api) -> Controller:
    assert api.app is not None
    return api.app[CONTROLLER]


def small(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": ["true"], "resources": {"cpu": 0.01}, **extra}


def region(name: str, country: str) -> dict[str, Any]:
    return {"name": name, "country": country, "created_at": "2026-11-26T00:00:00+00:00"}


async def test_the_mirror_follows_puts_and_deletes_and_sync_sees_a_write(store: Store) -> None:
    await store.put(keys.region("eu-de-1"), region("eu-de-1", "DE"))
    mirror = Mirror(store, [keys.REGIONS, keys.ALIVE], cached=[keys.REGIONS])
    seen: list[str] = []
    mirror.subscribe(lambda key, _: seen.append(key))
    try:
        await mirror.start()
        got = mirror.get(keys.REGIONS, "eu-de-1", RegionRecord)
        assert got is not None and got[0].country == "DE"
        await store.put(keys.region("eu-fr-1"), region("eu-fr-1", "FR"))
        await store.txn([], [Op.delete(keys.region("eu-de-1"))])
        await store.put("tokens/not-mirrored", {"x": 1})
        await mirror.sync()  # every write above is applied once this returns
        assert sorted(mirror.tails(keys.REGIONS)) == ["eu-fr-1"]
        assert "regions/eu-fr-1" in seen and "regions/eu-de-1" in seen
        assert not any(key.startswith("tokens/") for key in seen)
    finally:
        await mirror.stop()


async def test_a_restarted_mirror_relists_after_history_is_compacted(store: Store) -> None:
    mirror = Mirror(store, [keys.REGIONS])
    try:
        await mirror.start()
        await mirror.stop()
        # While it is away: changes, then etcd forgets their history.
        await store.put(keys.region("eu-fr-1"), region("eu-fr-1", "FR"))
        await store.compact(await store.revision())
        await mirror.start()
        await mirror.sync()
        assert list(mirror.tails(keys.REGIONS)) == ["eu-fr-1"]
    finally:
        await mirror.stop()


async def test_a_deploy_among_many_services_plans_only_that_service(
    api: Api, federation: Federation
) -> None:
    for i in range(40):
        await federation.deploy(small(f"svc-{i:02d}"))
    for i in range(40):
        await federation.wait_decided(f"svc-{i:02d}", timeout=10)
    ctl = controller(api)
    full = ctl.full_passes
    await federation.deploy(small("one-more"))
    await federation.wait_decided("one-more")
    assert ctl.full_passes == full
    assert ctl.last_planned <= 2, "the pass that placed it planned more than it"


async def test_the_controller_does_not_plan_its_own_writes_again(
    api: Api, federation: Federation
) -> None:
    # A write's echo (its placement and assignments coming back through the watch) can
    # arrive before the write's answer; it must still not count as a change.
    ctl = controller(api)
    for i in range(5):
        await federation.deploy(small(f"svc-{i:02d}"))
        await federation.wait_decided(f"svc-{i:02d}")

    async def passes_after(n: int) -> bool:
        ctl.poke()
        return ctl.passes >= n

    target = ctl.passes + 2
    await wait_until(lambda: passes_after(target), timeout=5, what="two more passes")
    planned, full = ctl.planned_total, ctl.full_passes
    await federation.deploy(small("one-more"))
    await federation.wait_decided("one-more")
    target = ctl.passes + 3
    await wait_until(lambda: passes_after(target), timeout=5, what="three more passes")
    assert ctl.full_passes == full
    assert ctl.planned_total - planned == 1, "planned again after its own write"


async def test_capacity_freed_by_a_delete_goes_to_a_waiting_service_at_once(
    api: Api, federation: Federation
) -> None:
    only_de = {"placement": {"regions": ["eu-de-1"]}, "resources": {"cpu": 5}}
    await federation.deploy({**small("first"), **only_de})
    await federation.wait_placed("first", {"eu-de-1": 1})
    await federation.deploy({**small("second"), **only_de})
    body = await federation.wait_decided("second")
    assert body["status"]["phase"] == "Pending"  # DE has 8 cpu; 5 are taken
    full = controller(api).full_passes
    status, _ = await api.call("DELETE", "/v1/services/first")
    assert status == 200
    await federation.wait_placed("second", {"eu-de-1": 1}, timeout=2)
    assert controller(api).full_passes == full  # not the periodic full pass


async def test_a_full_pass_after_incremental_ones_moves_nothing(
    api: Api, store: Store, federation: Federation
) -> None:
    # Capacity is tight (8 cpu per region), so where each service went depended on the
    # order they came in; a full pass must agree with what the incremental ones did.
    for i in range(12):
        await federation.deploy(small(f"svc-{i:02d}", replicas=2, resources={"cpu": 1.5}))
    for i in range(12):
        await federation.wait_decided(f"svc-{i:02d}", timeout=10)
    before = {e.key: e.revision for e in (await store.scan(keys.PLACEMENTS))[0]}
    ctl = controller(api)
    full = ctl.full_passes
    ctl._full = True  # as on the periodic resync
    ctl.poke()
    await wait_until(
        lambda: asyncio.sleep(0, ctl.full_passes > full), timeout=5, what="a full pass"
    )
    after = {e.key: e.revision for e in (await store.scan(keys.PLACEMENTS))[0]}
    assert after == before


async def test_a_deploy_decided_on_a_lagging_mirror_is_decided_again_on_etcd(
    store: Store,
) -> None:
    x = ServiceSpec.model_validate({"name": "svc", "command": ["x"]})
    y = ServiceSpec.model_validate({"name": "svc", "command": ["y"]})
    mirror = Mirror(store, [keys.SERVICES])
    try:
        await mirror.start()
        await mirror.stop()  # from here on it lags: it holds no `svc`
        await store_services.apply(store, x, if_match=None)  # as through another replica
        # The mirror says "absent": the create fails, and etcd's word decides.
        record, _, created, changed = await store_services.apply(
            store, y, if_match=None, mirror=mirror
        )
        assert (created, changed, record.generation) == (False, True, 2)
        await mirror.start()
        await mirror.sync()
        await mirror.stop()  # holds y at generation 2
        await store_services.apply(store, x, if_match=None)  # another replica: back to x
        # The mirror says y is already there: "unchanged" is not taken on its word.
        record, _, _, changed = await store_services.apply(store, y, if_match=None, mirror=mirror)
        assert changed and record.generation == 4
        stored = await store_services.get(store, "svc")
        assert stored is not None and stored[0].spec == y
    finally:
        await mirror.stop()


async def test_a_long_service_list_is_streamed_whole(
    api: Api, federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    from federation.api import services as services_api

    monkeypatch.setattr(services_api, "LIST_CHUNK", 3)  # pieces of 3: 8 services
    for i in range(8):
        await federation.deploy(small(f"svc-{i}"))
    status, body = await api.call("GET", "/v1/services")
    assert status == 200, body
    assert [s["name"] for s in body["items"]] == [f"svc-{i}" for i in range(8)]
    assert all("status" in s for s in body["items"]) and body["revision"] > 0
    for i in range(8):
        await federation.wait_decided(f"svc-{i}")
    _, again = await api.call("GET", "/v1/services")
    assert all(s["status"]["observed_generation"] == 1 for s in again["items"])
