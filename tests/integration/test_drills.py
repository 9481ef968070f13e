"""Failover drills on a real server and etcd: the what-if plan (residency, capacity
across services), live drills with recovery times and failback, abort, and a
leader change in the middle of a drill.

The demo regions (DE, FR, US, IN; 8 CPU each) are played by the test through the
HTTP API (see `agents.py`); `reporting` stands in for their instances turning ready.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from federation.store import Store
from tests.conftest import Api, ServerProcess, server_config
from tests.integration.agents import (
    EU_PATIENT_DATA,
    Federation,
    reporting,
    wait_until,
)

DE_ONLY = {"name": "de-only", "data_classes": ["de-only"], "allow": ["DE"], "mode": "enforce"}
COMMAND = ["python", "-m", "http.server", "{port}"]


@pytest.fixture
async def federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    """DE, FR, US and IN registered and beating, with the eu-patient-data policy."""
    fed = Federation(api, store)
    try:
        await fed.start()
        status, body = await api.call(
            "PUT", f"/v1/policies/{EU_PATIENT_DATA['name']}", json=EU_PATIENT_DATA
        )
        assert status == 201, body
        yield fed
    finally:
        await fed.close()


def service(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": COMMAND, **fields}


async def drill(api: Api, **body: Any) -> tuple[int, Any]:
    return await api.call("POST", "/v1/drills", json=body)


def outcomes(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["service"]: s for s in plan["plan"]["services"]}


async def wait_drill(
    api: Api, drill_id: str, done: Callable[[dict[str, Any]], bool], *, timeout: float, what: str
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, body = await api.call("GET", f"/v1/drills/{drill_id}")
        assert status == 200, body
        return body if done(body) else None

    return await wait_until(check, timeout=timeout, what=what, every=0.1)


def ended(body: dict[str, Any]) -> bool:
    return body["state"] in ("completed", "aborted", "failed")


# -- plan ----------------------------------------------------------------------------------


async def test_plan_german_only_service_is_unrecoverable_and_live_is_refused(
    federation: Federation,
) -> None:
    api = federation.api
    status, body = await api.call("PUT", "/v1/policies/de-only", json=DE_ONLY)
    assert status == 201, body
    await federation.deploy(service("gdpr-de", replicas=2, data_classes=["de-only"]))
    await federation.deploy(service("web", replicas=2, placement={"prefer": ["eu-de-1"]}))
    await federation.wait_placed("gdpr-de", {"eu-de-1": 2})
    await federation.wait_placed("web", {"eu-de-1": 2})

    status, plan = await drill(api, regions=["eu-de-1"], mode="plan")
    assert status == 200, plan
    assert plan["state"] == "planned" and plan["id"] is None
    found = outcomes(plan)
    assert found["gdpr-de"]["outcome"] == "unrecoverable"
    assert found["gdpr-de"]["reason"] == "NoCompliantRegion"
    assert found["gdpr-de"]["allowed_regions"] == ["eu-de-1"]
    assert found["gdpr-de"]["in_targets"] == {"eu-de-1": 2}
    assert found["gdpr-de"]["why"]["us-east-1"][0] == "rejected"
    assert "residency" in " ".join(found["gdpr-de"]["why"]["us-east-1"])
    assert found["gdpr-de"]["why"]["eu-de-1"] == ["rejected", "cordoned"]
    assert found["web"]["outcome"] == "recoverable"
    assert sum(found["web"]["to"].values()) == 2 and "eu-de-1" not in found["web"]["to"]
    assert plan["summary"] == {"recoverable": 1, "degraded": 0, "unrecoverable": 1, "unaffected": 0}

    # Plan mode changes nothing and stores nothing.
    assert await federation.region_state("eu-de-1") == "ready"
    status, listed = await api.call("GET", "/v1/drills")
    assert status == 200 and listed["items"] == []

    status, refused = await drill(api, regions=["eu-de-1"], mode="live")
    assert status == 409, refused
    assert "gdpr-de" in refused["error"]["message"]
    assert refused["error"]["details"][0]["reason"] == "NoCompliantRegion"
    assert await federation.region_state("eu-de-1") == "ready"
    _, listed = await api.call("GET", "/v1/drills")
    assert listed["items"] == []


async def test_plan_counts_capacity_across_services(federation: Federation) -> None:
    # FR keeps 4 of its 8 CPUs for a pinned service; two EU services of 3 CPUs each
    # run in DE. Each would fit FR alone; both cannot.
    await federation.deploy(
        service("fr-filler", replicas=4, resources={"cpu": 1}, placement={"regions": ["eu-fr-1"]})
    )
    for name in ("records-a", "records-b"):
        await federation.deploy(
            service(
                name,
                replicas=3,
                resources={"cpu": 1},
                data_classes=["phi-eu"],
                placement={"prefer": ["eu-de-1"]},
            )
        )
        await federation.wait_placed(name, {"eu-de-1": 3})
    await federation.wait_placed("fr-filler", {"eu-fr-1": 4})

    status, plan = await drill(federation.api, regions=["eu-de-1"], mode="plan")
    assert status == 200, plan
    found = outcomes(plan)
    assert set(found) == {"records-a", "records-b"}
    kinds = sorted(found[n]["outcome"] for n in found)
    assert kinds == ["degraded", "recoverable"], found
    short = next(s for s in found.values() if s["outcome"] == "degraded")
    assert short["reason"] == "InsufficientCapacity"
    assert short["to"] == {"eu-fr-1": 1}
    assert "room for 1 replica(s)" in " ".join(short["why"]["eu-fr-1"])
    assert sum(s["to"].get("eu-fr-1", 0) for s in found.values()) == 4  # never oversubscribed


async def test_bad_drill_requests_are_422_naming_the_field(federation: Federation) -> None:
    api = federation.api
    cases: list[tuple[dict[str, Any], str]] = [
        ({"regions": ["nowhere-1"]}, "regions.0"),
        ({"regions": ["eu-de-1", "mars-1"]}, "regions.1"),
        ({"regions": []}, "regions"),
        ({"regions": ["Bad_Name"]}, "regions.0"),
        ({"regions": ["eu-de-1"], "mode": "chaos"}, "mode"),
        ({"regions": ["eu-de-1"], "max_duration_s": 0}, "max_duration_s"),
        ({"regions": ["eu-de-1"], "abort_on": {"unrecoverable": -1}}, "abort_on.unrecoverable"),
        ({"regions": ["eu-de-1"], "surprise": True}, "surprise"),
    ]
    for body, field in cases:
        status, answer = await drill(api, **body)
        assert status == 422, (body, answer)
        assert answer["error"]["details"][0]["field"] == field, (body, answer)
    status, _ = await api.call("POST", "/v1/drills", json={"regions": ["eu-de-1"]}, token=None)
    assert status == 401
    status, _ = await api.call("GET", "/v1/drills/drill-00000000")
    assert status == 404
    status, _ = await api.call("GET", "/v1/drills/NOT_AN_ID")
    assert status == 422


# -- live ----------------------------------------------------------------------------------


async def test_live_drill_of_fr_with_20_services(federation: Federation) -> None:
    api = federation.api
    names = [f"svc-{i:02d}" for i in range(20)]
    async with reporting(federation):
        for i, name in enumerate(names):
            classes = ["phi-eu"] if i % 2 == 0 else []
            await federation.deploy(
                service(name, replicas=2, data_classes=classes, placement={"prefer": ["eu-fr-1"]})
            )
        for name in names:
            await federation.wait_placed(name, {"eu-fr-1": 2})
            await federation.wait_phase(name, "Running", timeout=5)

        status, started = await drill(
            api, regions=["eu-fr-1"], mode="live", max_duration_s=30, failback=True
        )
        assert status == 201, started
        drill_id = started["id"]
        assert drill_id.startswith("drill-") and started["state"] == "running"
        done = await wait_drill(api, drill_id, ended, timeout=20, what="drill ended")

    report = done["report"]
    assert done["state"] == "completed", report
    assert len(report["recovery"]["per_service_s"]) == 20
    assert report["summary"]["recovered"] == 20 and report["summary"]["affected"] == 20
    assert report["violations"] == []
    assert 0 < report["recovery"]["p50_s"] <= report["recovery"]["p95_s"]
    assert report["recovery"]["p95_s"] <= report["recovery"]["max_s"] < 10
    assert report["failback"]["done"] and report["failback"]["restored"]
    assert report["failback"]["restore_s"] is not None
    assert await federation.region_state("eu-fr-1") == "ready"
    # The EU services went to DE only; nothing was ever assigned to US or IN.
    for i, name in enumerate(names):
        if i % 2 == 0:
            assert set(await federation.replicas(name)) <= {"eu-de-1", "eu-fr-1"}
    events = [e["event"] for e in report["timeline"]]
    assert any(e.startswith("cordoned eu-fr-1") for e in events), events
    assert any(e.startswith("failback") for e in events), events

    status, listed = await api.call("GET", "/v1/drills")
    assert [d["id"] for d in listed["items"]] == [drill_id]
    async with api.session.get(
        f"{api.url}/v1/drills/{drill_id}/report.md",
        headers={"Authorization": f"Bearer {api.admin_token}"},
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/markdown"
        text = await resp.text()
    assert text.startswith(f"# Failover drill {drill_id}")
    assert "None: no replica was placed in a region residency rejects." in text
    assert "| svc-00 |" in text


async def test_abort_mid_drill_restores_at_once(federation: Federation) -> None:
    api = federation.api
    for name in ("alpha", "beta"):
        await federation.deploy(service(name, placement={"prefer": ["eu-fr-1"]}))
        await federation.wait_placed(name, {"eu-fr-1": 1})
    # No instance ever reports ready: the drill cannot finish on its own.
    status, started = await drill(api, regions=["eu-fr-1"], mode="live", max_duration_s=60)
    assert status == 201, started
    drill_id = started["id"]
    await wait_drill(
        api,
        drill_id,
        lambda b: b["progress"]["phase"] == "evacuating",
        timeout=3,
        what="cordoned",
    )
    assert await federation.region_state("eu-fr-1") == "cordoned"
    status, body = await api.call("GET", "/v1/regions/eu-fr-1")
    assert body["cordon"]["by"] == f"drill:{drill_id}"

    # One live drill at a time per region.
    status, refused = await drill(api, regions=["eu-fr-1", "eu-de-1"], mode="live")
    assert status == 409, refused
    assert drill_id in refused["error"]["message"]

    status, aborted = await api.call(
        "POST", f"/v1/drills/{drill_id}/abort", json={"reason": "change freeze"}
    )
    assert status == 200, aborted
    assert aborted["state"] == "aborted"
    assert await federation.region_state("eu-fr-1") == "ready"  # at once, not eventually
    report = aborted["report"]
    assert "change freeze" in report["message"]
    assert report["summary"]["recovered"] == 0 and sorted(report["not_recovered"]) == [
        "alpha",
        "beta",
    ]
    status, again = await api.call("POST", f"/v1/drills/{drill_id}/abort")
    assert status == 409, again

    # The region is free for the next drill, and the runner leaves the aborted one be.
    await asyncio.sleep(0.5)
    assert await federation.region_state("eu-fr-1") == "ready"
    status, body = await drill(api, regions=["eu-fr-1"], mode="plan")
    assert status == 200


async def test_max_duration_aborts_and_uncordons(federation: Federation) -> None:
    api = federation.api
    await federation.deploy(service("gamma", placement={"prefer": ["eu-fr-1"]}))
    await federation.wait_placed("gamma", {"eu-fr-1": 1})
    status, started = await drill(api, regions=["eu-fr-1"], mode="live", max_duration_s=1)
    assert status == 201, started
    done = await wait_drill(api, started["id"], ended, timeout=5, what="drill ended")
    assert done["state"] == "aborted", done["report"]
    assert "max_duration_s" in done["report"]["message"]
    assert await federation.region_state("eu-fr-1") == "ready"


async def test_live_drill_with_force_accepts_the_unrecoverable(federation: Federation) -> None:
    api = federation.api
    status, body = await api.call("PUT", "/v1/policies/de-only", json=DE_ONLY)
    assert status == 201, body
    async with reporting(federation):
        await federation.deploy(service("gdpr-de", data_classes=["de-only"]))
        await federation.deploy(service("web", placement={"prefer": ["eu-de-1"]}))
        await federation.wait_placed("gdpr-de", {"eu-de-1": 1})
        await federation.wait_placed("web", {"eu-de-1": 1})
        status, started = await drill(
            api, regions=["eu-de-1"], mode="live", force=True, max_duration_s=20
        )
        assert status == 201, started
        done = await wait_drill(api, started["id"], ended, timeout=15, what="drill ended")
    report = done["report"]
    assert done["state"] == "completed", report
    assert [s["service"] for s in report["unrecoverable"]] == ["gdpr-de"]
    assert report["unrecoverable"][0]["reason"] == "NoCompliantRegion"
    assert list(report["recovery"]["per_service_s"]) == ["web"]
    assert report["expected"]["accepted_with_force"] == ["gdpr-de"]
    assert report["violations"] == []
    assert report["failback"]["restored"]  # gdpr-de runs in DE again after the failback
    assert await federation.region_state("eu-de-1") == "ready"


# -- leader change ---------------------------------------------------------------------------


async def test_drill_survives_a_leader_kill(
    etcd: Any, prefix: str, store: Store, spawn_server: Callable[..., ServerProcess]
) -> None:
    """The leader dies (SIGKILL) mid-drill; the standby picks the drill up from etcd
    and finishes it; the region is not left cordoned."""
    first = spawn_server("replica-a")
    second = spawn_server("replica-b")
    leader_id = await wait_until(lambda: store.get_raw("leader"), timeout=5, what="a leader")
    leader, standby = (first, second) if leader_id[0] == "replica-a" else (second, first)
    admin = spawn_server.admin_token  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as session:
        api = Api(standby.url, admin, session, server_config(etcd, prefix, region_ttl=2))
        federation = Federation(api, store)
        try:
            await federation.start()
            status, body = await api.call(
                "PUT", f"/v1/policies/{EU_PATIENT_DATA['name']}", json=EU_PATIENT_DATA
            )
            assert status == 201, body
            for name in ("one", "two", "three"):
                await federation.deploy(
                    service(name, data_classes=["phi-eu"], placement={"prefer": ["eu-fr-1"]})
                )
                await federation.wait_placed(name, {"eu-fr-1": 1})
            status, started = await drill(api, regions=["eu-fr-1"], mode="live", max_duration_s=30)
            assert status == 201, started
            drill_id = started["id"]
            await wait_drill(
                api,
                drill_id,
                lambda b: b["progress"]["phase"] == "evacuating",
                timeout=3,
                what="cordoned",
            )
            leader.stop(signal.SIGKILL)
            async with reporting(federation):
                done = await wait_drill(api, drill_id, ended, timeout=20, what="drill ended")
            report = done["report"]
            assert done["state"] == "completed", report
            assert report["summary"]["recovered"] == 3
            assert report["violations"] == []
            events = " ".join(e["event"] for e in report["timeline"])
            assert f"resumed by leader {standby.identity}" in events
            assert await federation.region_state("eu-fr-1") == "ready"
        finally:
            await federation.close()
