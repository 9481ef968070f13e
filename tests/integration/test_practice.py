"""Scheduled practice drills on a real server and etcd, with real HTTP checks and a
real webhook receiver: runs start inside their window only, blocking checks hold them,
outcome checks interrupt them, the capacity pre-check refuses them, an incident
elsewhere blocks them, and a killed leader's run is finished by the next leader.

Time is a fake clock the tests move (the server's practice scheduler reads it); the
drills themselves run in real time. The demo regions are played through the HTTP API
(`agents.py`); `reporting` makes their instances ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from federation.model.schedule import (
    MAX_HISTORY,
    MAX_SCHEDULES,
    DrillSchedule,
    Outcome,
    PracticeRun,
    new_run_id,
)
from federation.processes.certs import make_kek_file
from federation.processes.local_etcd import LocalEtcd
from federation.store import Store, keys
from federation.store import schedules as store_schedules
from tests.conftest import Api, ServerProcess, server_config, serving
from tests.integration.agents import (
    EU_PATIENT_DATA,
    Federation,
    reporting,
    running_federation,
    wait_until,
)
from tests.integration.secret_support import token
from tests.integration.test_plan_apply import Cli
from tests.integration.test_telemetry import scrape, value

COMMAND = ["python", "-m", "http.server", "{port}"]
TICKS_S = 2.5  # more than two of the scheduler's ticks
HOOK_KEY = "hook-key-for-tests-0123456789"
# Tuesday 2026-06-02 in Berlin (CEST, UTC+2); the window is 09:00-12:00 local.
MONDAY = datetime(2026, 6, 1, 12, tzinfo=UTC)
TUESDAY_0930 = datetime(2026, 6, 2, 7, 30, tzinfo=UTC)


class FakeClock:
    """The time the server's practice scheduler sees; tests set it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Outside:
    """A real HTTP server playing a health endpoint, a Prometheus and a webhook
    receiver."""

    url: str = ""
    health: int = 200
    alarm: str = "0"
    hooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.hooks]


@contextlib.asynccontextmanager
async def outside() -> AsyncIterator[Outside]:
    state = Outside()

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=state.health, text="health")

    async def query(request: web.Request) -> web.Response:
        assert request.query["query"] == "sum(errors)"
        return web.json_response(
            {
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [{"metric": {}, "value": [1, state.alarm]}],
                },
            }
        )

    async def hook(request: web.Request) -> web.Response:
        state.hooks.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def garbled(request: web.Request) -> web.Response:
        # A Prometheus-shaped answer whose value is no number at all.
        return web.json_response(
            {"status": "success", "data": {"resultType": "scalar", "result": [0, None]}}
        )

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_S)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/garbled/api/v1/query", garbled)
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/query", query)
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@dataclass
class Practice:
    api: Api
    federation: Federation
    clock: FakeClock
    out: Outside


@pytest.fixture
async def practice(
    etcd: LocalEtcd, prefix: str, store: Store, tmp_path: Path
) -> AsyncIterator[Practice]:
    """A server with a fake practice clock and a KEK (for the webhook's secret), the
    demo regions, and the outside world."""
    clock = FakeClock(MONDAY)
    config = server_config(etcd, prefix, clock=clock, kek_file=make_kek_file(tmp_path / "kek"))
    async with outside() as out, serving(config) as api, running_federation(api, store) as fed:
        status, body = await api.call(
            "PUT",
            "/v1/secrets/practice-hook",
            json={"data_classes": ["webhook-signing"], "data": {"key": HOOK_KEY}},
        )
        assert status == 201, body
        yield Practice(api, fed, clock, out)


def schedule(out: Outside, **fields: Any) -> dict[str, Any]:
    return {
        "regions": ["eu-fr-1"],
        "windows": ["Tue 09:00-12:00"],
        "time_zone": "Europe/Berlin",
        "duration_s": 30,
        "blocking_checks": [{"name": "health", "url": f"{out.url}/health"}],
        "outcome_checks": [
            {"name": "errors", "kind": "prometheus", "server": out.url, "query": "sum(errors)"}
        ],
        "notifications": {"webhooks": [{"url": f"{out.url}/hook", "secret": "practice-hook#key"}]},
        **fields,
    }


async def put_schedule(api: Api, name: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await api.call("PUT", f"/v1/drill-schedules/{name}", json=body)
    assert status in (200, 201), answer
    return dict(answer)


async def deploy_fr(fed: Federation, *names: str) -> None:
    for name in names:
        await fed.deploy(
            {
                "name": name,
                "command": COMMAND,
                "data_classes": ["phi-eu"],
                "placement": {"prefer": ["eu-fr-1"]},
            }
        )
    async with reporting(fed):
        for name in names:
            await fed.wait_placed(name, {"eu-fr-1": 1})
            await fed.wait_phase(name, "Running", timeout=10)


async def runs(api: Api, name: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/v1/drill-schedules/{name}/runs")
    assert status == 200, body
    return list(body["items"])


async def wait_run(
    api: Api, name: str, done: Callable[[dict[str, Any]], bool], *, timeout: float, what: str
) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    async def check() -> dict[str, Any] | None:
        # Listed by id: runs begun in the same second of the injected clock may list
        # in either order, so every one is looked at, the last listed first.
        seen[:] = await runs(api, name)
        return next((r for r in reversed(seen) if done(r)), None)

    try:
        return await wait_until(check, timeout=timeout, what=what, every=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the runs: {seen}") from None


def ended(run: dict[str, Any]) -> bool:
    return bool(run["outcome"] != "RUNNING")


SLOW_S = 10  # a health endpoint that answers this late


async def test_runs_inside_its_window_only_and_signs_start_and_end(practice: Practice) -> None:
    api, fed, clock, out = practice.api, practice.federation, practice.clock, practice.out
    await deploy_fr(fed, "one", "two")
    body = schedule(out, blocked_dates=["2026-06-02"], blocked_windows=["Tue 09:00-10:00"])
    view = await put_schedule(api, "weekly", body)
    # Next Tuesday (06-02 is blocked), after the blocked window: 10:00 CEST = 08:00 UTC.
    assert view["next_run"] == "2026-06-09T08:00:00+00:00"

    for now in (MONDAY, TUESDAY_0930, TUESDAY_0930 + timedelta(days=7)):
        clock.now = now  # outside the window, a blocked date, a blocked window
        await asyncio.sleep(TICKS_S)
        assert await runs(api, "weekly") == [], now
    assert await fed.region_state("eu-fr-1") == "ready"

    clock.now = datetime(2026, 6, 9, 8, 30, tzinfo=UTC)  # 10:30 in Berlin
    async with reporting(fed):
        run = await wait_run(api, "weekly", ended, timeout=30, what="the run ended")
    assert run["outcome"] == "SUCCEEDED", run
    assert run["trigger"] == "schedule"
    assert [c["ok"] for c in run["checks_before"]] == [True]
    assert run["checks_during"] and run["checks_during"][0]["value"] == "0"
    assert await fed.region_state("eu-fr-1") == "ready"

    status, drill = await api.call("GET", f"/v1/drills/{run['drill_id']}")
    assert status == 200 and drill["state"] == "completed", drill
    report = drill["report"]
    assert report["schedule"] == "weekly"
    assert report["checks"]["before"][0]["name"] == "health"
    assert report["checks"]["during"][0]["name"] == "errors"

    # Signed start and end events, with the outcome and the report's link.
    await wait_until(lambda: _count(out, 2), timeout=5, what="two webhook events")
    events = out.events()
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[1]["outcome"] == "SUCCEEDED"
    assert events[1]["report"] == f"/v1/drills/{run['drill_id']}/report.md"
    for headers, raw in out.hooks:
        expected = "sha256=" + hmac.new(HOOK_KEY.encode(), raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Federation-Signature"], expected)
        assert HOOK_KEY not in raw.decode()

    # One run per window occurrence: later the same morning, nothing more.
    clock.now = datetime(2026, 6, 9, 9, 30, tzinfo=UTC)
    await asyncio.sleep(TICKS_S)
    assert len(await runs(api, "weekly")) == 1

    # Metrics: the run by outcome, and the time since the region's last success.
    samples = await scrape(api)
    assert value(samples, "federation_practice_runs_total", outcome="SUCCEEDED") >= 1
    since = value(samples, "federation_practice_since_success_seconds", region="eu-fr-1")
    assert since == (clock.now - datetime.fromisoformat(run["ended_at"])).total_seconds()
    assert value(samples, "federation_practice_since_success_seconds", region="ap-in-1") == 0
    status, listed = await api.call("GET", "/v1/drill-schedules")
    assert listed["items"][0]["last_run"]["outcome"] == "SUCCEEDED"
    assert listed["items"][0]["next_run"] == "2026-06-16T08:00:00+00:00"


async def _count(out: Outside, n: int) -> bool:
    return len(out.hooks) >= n


async def test_failing_blocking_check_blocks_and_retries_later_in_the_window(
    practice: Practice,
) -> None:
    api, fed, clock, out = practice.api, practice.federation, practice.clock, practice.out
    await deploy_fr(fed, "one")
    out.health = 503
    await put_schedule(api, "weekly", schedule(out, retry_s=600))
    clock.now = TUESDAY_0930
    run = await wait_run(api, "weekly", ended, timeout=10, what="a blocked run")
    assert run["outcome"] == "BLOCKED", run
    assert "health = 503" in run["message"] and run["drill_id"] is None
    assert await fed.region_state("eu-fr-1") == "ready"
    await wait_until(lambda: _count(out, 1), timeout=5, what="the block event")
    assert out.events()[0]["event"] == "block"

    await asyncio.sleep(TICKS_S)  # not retried before retry_s
    assert len(await runs(api, "weekly")) == 1
    out.health = 200
    clock.now = TUESDAY_0930 + timedelta(minutes=11)
    async with reporting(fed):
        run = await wait_run(
            api,
            "weekly",
            lambda r: r["outcome"] not in ("RUNNING", "BLOCKED"),
            timeout=30,
            what="the retried run ended",
        )
    assert run["outcome"] == "SUCCEEDED", run


async def test_failing_outcome_check_interrupts_and_uncordons(practice: Practice) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    await deploy_fr(fed, "one")
    await put_schedule(api, "weekly", schedule(out))
    status, answer = await api.call("POST", "/v1/drill-schedules/weekly/run")
    assert status == 202, answer
    # Nothing reports ready, so the drill stays evacuating until the alarm fires.
    await wait_run(api, "weekly", lambda r: r["outcome"] == "RUNNING", timeout=10, what="running")
    await fed.wait_state("eu-fr-1", "cordoned", timeout=5)
    status, busy = await api.call("POST", "/v1/drill-schedules/weekly/run")
    assert status == 409 and "is running" in busy["error"]["message"], busy
    out.alarm = "3"
    run = await wait_run(api, "weekly", ended, timeout=10, what="interrupted")
    assert run["outcome"] == "INTERRUPTED", run
    assert "errors = 3" in run["message"]
    assert run["checks_during"][-1]["ok"] is False and run["checks_during"][-1]["value"] == "3"
    assert await fed.region_state("eu-fr-1") == "ready"
    status, drill = await api.call("GET", f"/v1/drills/{run['drill_id']}")
    assert drill["state"] == "aborted" and "errors = 3" in drill["report"]["message"]


async def test_a_garbled_check_answer_blocks_its_schedule_only(practice: Practice) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    await deploy_fr(fed, "one")
    garbled = {"name": "g", "kind": "prometheus", "server": f"{out.url}/garbled", "query": "x"}
    body = schedule(out, regions=["eu-de-1"], blocking_checks=[garbled])
    await put_schedule(api, "a-garbled", body)  # looked at first: names sort
    await put_schedule(api, "weekly", schedule(out))
    for name in ("a-garbled", "weekly"):
        assert (await api.call("POST", f"/v1/drill-schedules/{name}/run"))[0] == 202
    async with reporting(fed):
        bad = await wait_run(api, "a-garbled", ended, timeout=10, what="blocked")
        good = await wait_run(api, "weekly", ended, timeout=30, what="the other run ended")
    assert bad["outcome"] == "BLOCKED" and "not a number" in bad["message"], bad
    assert good["outcome"] == "SUCCEEDED", good


async def test_a_slow_blocking_check_does_not_delay_another_runs_safety_stop(
    practice: Practice,
) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    await deploy_fr(fed, "one")
    await put_schedule(api, "weekly", schedule(out))
    slow = [{"name": "slow", "url": f"{out.url}/slow", "timeout_s": SLOW_S - 1}]
    await put_schedule(api, "slow", schedule(out, regions=["ap-in-1"], blocking_checks=slow))
    assert (await api.call("POST", "/v1/drill-schedules/weekly/run"))[0] == 202
    await wait_run(api, "weekly", lambda r: r["outcome"] == "RUNNING", timeout=10, what="running")
    assert (await api.call("POST", "/v1/drill-schedules/slow/run"))[0] == 202
    await asyncio.sleep(1.5)  # its blocking check is being waited for
    out.alarm = "3"
    started = asyncio.get_running_loop().time()
    run = await wait_run(api, "weekly", ended, timeout=SLOW_S, what="interrupted")
    assert run["outcome"] == "INTERRUPTED", run
    assert asyncio.get_running_loop().time() - started < 4, "the safety stop waited"
    assert await fed.region_state("eu-fr-1") == "ready"
    blocked = await wait_run(api, "slow", ended, timeout=SLOW_S + 5, what="slow blocked")
    assert blocked["outcome"] == "BLOCKED" and "timeout" in blocked["message"], blocked


async def test_no_compliant_room_is_capacity_check_failed_and_cordons_nothing(
    practice: Practice,
) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    policy = {"name": "de-only", "data_classes": ["de-only"], "allow": ["DE"], "mode": "enforce"}
    assert (await api.call("PUT", "/v1/policies/de-only", json=policy))[0] == 201
    await fed.deploy({"name": "gdpr-de", "command": COMMAND, "data_classes": ["de-only"]})
    async with reporting(fed):
        await fed.wait_placed("gdpr-de", {"eu-de-1": 1})
        await fed.wait_phase("gdpr-de", "Running", timeout=10)
    await put_schedule(api, "de", schedule(out, regions=["eu-de-1"]))
    assert (await api.call("POST", "/v1/drill-schedules/de/run"))[0] == 202
    run = await wait_run(api, "de", ended, timeout=10, what="the capacity check")
    assert run["outcome"] == "CAPACITY_CHECK_FAILED", run
    assert run["services"] == ["gdpr-de"] and "NoCompliantRegion" in run["message"]
    assert run["drill_id"] is None
    assert await fed.region_state("eu-de-1") == "ready"
    assert (await api.call("GET", "/v1/drills"))[1]["items"] == []


async def test_a_region_lost_elsewhere_blocks_the_start(practice: Practice) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    await deploy_fr(fed, "one")
    await put_schedule(api, "weekly", schedule(out))
    await fed.stop_heartbeats("ap-in-1")
    await fed.wait_state("ap-in-1", "unreachable", timeout=10)
    assert (await api.call("POST", "/v1/drill-schedules/weekly/run"))[0] == 202
    run = await wait_run(api, "weekly", ended, timeout=10, what="blocked")
    assert run["outcome"] == "BLOCKED", run
    assert "region ap-in-1 is lost" in run["message"]
    assert await fed.region_state("eu-fr-1") == "ready"


async def test_webhook_keys_are_webhook_signing_secrets_only(practice: Practice) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    patient = {"data_classes": ["phi-eu"], "data": {"password": "hunter2-patients"}}
    assert (await api.call("PUT", "/v1/secrets/patient-db", json=patient))[0] == 201
    for reference in ("patient-db#password", "missing#key", "practice-hook#other"):
        hooks = {"webhooks": [{"url": f"{out.url}/hook", "secret": reference}]}
        status, answer = await api.call(
            "PUT", "/v1/drill-schedules/w", json=schedule(out, notifications=hooks)
        )
        assert status == 422, (reference, answer)
        assert answer["error"]["details"][0]["field"] == "notifications.webhooks.0.secret"
    # A plan says so before an apply would be refused.
    hooks = {"webhooks": [{"url": f"{out.url}/hook", "secret": "patient-db#password"}]}
    spec = {"name": "w", **schedule(out, notifications=hooks)}
    status, plan = await api.call(
        "POST", "/v1/plan", json={"documents": [{"kind": "drill-schedule", "spec": spec}]}
    )
    assert status == 200, plan
    assert [(p["kind"], p["field"]) for p in plan["problems"]] == [
        ("drill-schedule", "notifications.webhooks.0.secret")
    ], plan
    # A signing key is for signing only: mixed with another class, or given to a
    # service (which would carry it to regions), it is refused.
    mixed = {"data_classes": ["webhook-signing", "phi-eu"], "data": {"key": "k"}}
    status, answer = await api.call("PUT", "/v1/secrets/mixed", json=mixed)
    assert status == 422 and "webhook-signing" in str(answer), answer
    spec = {"name": "leaky", "command": COMMAND, "secrets": {"KEY": "practice-hook#key"}}
    status, answer = await api.call("PUT", "/v1/services/leaky", json=spec)
    assert status == 422, answer
    spec = {"name": "leaky", "command": COMMAND, "data_classes": ["webhook-signing"]}
    status, answer = await api.call("PUT", "/v1/services/leaky", json=spec)
    assert status == 422 and "webhook-signing" in str(answer), answer

    # A key that stops being a signing key after the schedule was stored is not used.
    out.health = 503
    await put_schedule(api, "weekly", schedule(out))
    demoted = {"data_classes": ["phi-eu"], "data": {"key": HOOK_KEY}}
    assert (await api.call("PUT", "/v1/secrets/practice-hook", json=demoted))[0] == 200
    assert (await api.call("POST", "/v1/drill-schedules/weekly/run"))[0] == 202
    run = await wait_run(api, "weekly", ended, timeout=10, what="blocked")
    assert run["outcome"] == "BLOCKED", run
    await asyncio.sleep(TICKS_S)
    assert out.hooks == []
    assert await fed.region_state("eu-fr-1") == "ready"


async def test_a_region_lost_mid_run_interrupts_it(practice: Practice) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    await deploy_fr(fed, "one")
    await put_schedule(api, "weekly", schedule(out))
    assert (await api.call("POST", "/v1/drill-schedules/weekly/run"))[0] == 202
    # Nothing reports ready, so the drill stays evacuating until the outage.
    await wait_run(api, "weekly", lambda r: r["outcome"] == "RUNNING", timeout=10, what="running")
    await fed.wait_state("eu-fr-1", "cordoned", timeout=5)
    await fed.stop_heartbeats("ap-in-1")
    await fed.wait_state("ap-in-1", "unreachable", timeout=10)
    run = await wait_run(api, "weekly", ended, timeout=5, what="interrupted by the outage")
    assert run["outcome"] == "INTERRUPTED", run
    assert "region ap-in-1 is lost" in run["message"], run
    assert await fed.region_state("eu-fr-1") == "ready"


async def test_the_last_success_outlives_a_hundred_blocked_attempts(practice: Practice) -> None:
    api, fed, clock, out = practice.api, practice.federation, practice.clock, practice.out
    await put_schedule(api, "weekly", schedule(out))
    succeeded = datetime(2026, 5, 26, 8, tzinfo=UTC)
    stored = [(succeeded, "SUCCEEDED")]
    stored += [(succeeded + timedelta(hours=1 + i), "BLOCKED") for i in range(MAX_HISTORY)]
    for at, outcome in stored:  # as the leader writes them
        run = PracticeRun(
            id=new_run_id(at),
            schedule="weekly",
            trigger="schedule",
            regions=["eu-fr-1"],
            outcome=Outcome(outcome),
            started_at=at,
            ended_at=at,
        )
        await store_schedules.write_run(fed.store, run, None)
    assert all(r["outcome"] == "BLOCKED" for r in await runs(api, "weekly"))
    clock.now = datetime(2026, 6, 1, 8, tzinfo=UTC)
    await asyncio.sleep(TICKS_S)
    samples = await scrape(api)
    since = value(samples, "federation_practice_since_success_seconds", region="eu-fr-1")
    assert since == (clock.now - succeeded).total_seconds()

    # A deleted region takes its last success along: no alert for a region gone.
    await fed.stop_heartbeats("eu-fr-1")
    assert (await api.call("DELETE", "/v1/regions/eu-fr-1"))[0] == 200
    assert await fed.store.get(keys.practice_success("eu-fr-1")) is None
    await asyncio.sleep(TICKS_S)
    samples = await scrape(api)
    assert ("federation_practice_since_success_seconds", (("region", "eu-fr-1"),)) not in samples


async def test_at_most_max_schedules(practice: Practice) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    body = DrillSchedule.model_validate({"name": "x", **schedule(out)})
    for i in range(MAX_SCHEDULES):
        named = body.model_copy(update={"name": f"s-{i:03}"})
        await store_schedules.put(fed.store, named, if_match=None, actor="test")
    status, answer = await api.call("PUT", "/v1/drill-schedules/one-more", json=schedule(out))
    assert status == 409 and "delete one first" in answer["error"]["message"], answer
    assert (await api.call("GET", "/v1/drill-schedules/one-more"))[0] == 404
    assert (await api.call("PUT", "/v1/drill-schedules/s-000", json=schedule(out)))[0] == 200
    status, listed = await api.call("GET", "/v1/drill-schedules")
    assert status == 200 and len(listed["items"]) == MAX_SCHEDULES


async def test_a_deleted_schedule_takes_its_runs_with_it(practice: Practice) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    await deploy_fr(fed, "one")
    await put_schedule(api, "weekly", schedule(out))
    assert (await api.call("POST", "/v1/drill-schedules/weekly/run"))[0] == 202
    run = await wait_run(api, "weekly", lambda r: r["outcome"] == "RUNNING", timeout=10, what="run")
    # Its outcome checks are its safety stop: not deleted from under a running drill.
    status, answer = await api.call("DELETE", "/v1/drill-schedules/weekly")
    assert status == 409 and run["drill_id"] in answer["error"]["message"], answer
    assert (await api.call("POST", f"/v1/drills/{run['drill_id']}/abort"))[0] == 200
    await wait_run(api, "weekly", ended, timeout=10, what="the run ended")
    assert (await api.call("DELETE", "/v1/drill-schedules/weekly"))[0] == 200
    entries, _ = await fed.store.scan(keys.drill_runs("weekly"))
    assert entries == []
    assert (await api.call("GET", "/v1/drill-schedules/weekly/runs"))[0] == 404
    await put_schedule(api, "weekly", schedule(out))  # a new schedule, no old history
    assert await runs(api, "weekly") == []

    # Runs left behind by a schedule deleted before its runs went with it: the leader
    # removes them.
    at = datetime(2026, 5, 1, tzinfo=UTC)
    orphan = PracticeRun(
        id=new_run_id(at),
        schedule="gone",
        trigger="schedule",
        regions=["eu-fr-1"],
        outcome=Outcome.BLOCKED,
        started_at=at,
        ended_at=at,
    )
    await store_schedules.write_run(fed.store, orphan, None)

    async def removed() -> bool:
        return not (await fed.store.scan(keys.drill_runs("gone")))[0]

    await wait_until(removed, timeout=5, what="the orphan runs removed")


async def test_roles_and_bad_schedules(practice: Practice) -> None:
    api, out = practice.api, practice.out
    viewer, operator = await token(api, "viewer"), await token(api, "operator")
    region = practice.federation.tokens["eu-fr-1"]
    body = schedule(out)
    assert (await api.call("PUT", "/v1/drill-schedules/w", json=body, token=viewer))[0] == 403
    assert (await api.call("POST", "/v1/drill-schedules/w/run", token=viewer))[0] == 403
    assert (await api.call("PUT", "/v1/drill-schedules/w", json=body, token=operator))[0] == 201
    assert (await api.call("GET", "/v1/drill-schedules", token=region))[0] == 403
    assert (await api.call("GET", "/v1/drill-schedules/w/runs", token=region))[0] == 403
    assert (await api.call("GET", "/v1/drill-schedules/w", token=viewer))[0] == 200
    assert (await api.call("DELETE", "/v1/drill-schedules/w", token=viewer))[0] == 403
    for field_name, bad in [
        ("time_zone", "Mars/Olympus"),
        ("windows", ["Tue 12:00-09:00"]),
        ("windows", ["Tue 09:00-12:00"] * 1000),
        ("time_zone", "../../../etc/passwd"),
        ("blocked_dates", ["2026-02-30"]),
        ("blocking_checks", [{"name": "h", "url": "http://user:pw@10.0.0.1/health"}]),
        ("blocking_checks", [{"name": "h", "url": "file:///etc/passwd"}]),
        ("blocking_checks", [{"name": "h", "url": "http://10.0.0.1/health?api_key=k"}]),
        ("notifications", {"webhooks": [{"url": "http://h.example/?token=t", "secret": "a#b"}]}),
        ("notifications", {"webhooks": [{"url": "http://h.example/", "secret": "nokey"}]}),
        ("duration_s", 1e308),
        ("regions", ["nowhere-1"]),
        (
            "outcome_checks",
            [{"name": "x", "kind": "prometheus", "server": "ftp://x", "query": "1"}],
        ),
    ]:
        status, answer = await api.call(
            "PUT", "/v1/drill-schedules/bad", json={**body, field_name: bad}
        )
        assert status == 422, answer
        assert answer["error"]["details"][0]["field"].startswith(field_name), answer
    assert (await api.call("GET", "/v1/drill-schedules/bad"))[0] == 404
    assert (await api.call("DELETE", "/v1/drill-schedules/w", token=operator))[0] == 200
    status, audit = await api.call("GET", "/v1/audit?since=0")
    actions = [(e["action"], e["resource"]) for e in audit["items"]]
    assert ("drill-schedule.put", "drill-schedules/w") in actions, actions
    assert ("drill-schedule.delete", "drill-schedules/w") in actions, actions
    status, answer = await api.call("GET", "/v1/drill-schedules?x=1")
    assert status == 400


async def test_a_killed_leaders_run_is_finished_by_the_next_leader(
    etcd: Any, prefix: str, store: Store, spawn_server: Callable[..., ServerProcess]
) -> None:
    first = spawn_server("replica-a")
    second = spawn_server("replica-b")
    leader_id = await wait_until(lambda: store.get_raw("leader"), timeout=5, what="a leader")
    leader, standby = (first, second) if leader_id[0] == "replica-a" else (second, first)
    admin = spawn_server.admin_token  # type: ignore[attr-defined]
    async with outside() as out, aiohttp.ClientSession() as session:
        api = Api(standby.url, admin, session, server_config(etcd, prefix, region_ttl=2))
        federation = Federation(api, store)
        try:
            await federation.start()
            status, body = await api.call(
                "PUT", f"/v1/policies/{EU_PATIENT_DATA['name']}", json=EU_PATIENT_DATA
            )
            assert status == 201, body
            await deploy_fr(federation, "one", "two")
            body = schedule(out)
            del body["notifications"]  # these servers hold no KEK
            await put_schedule(api, "weekly", body)
            assert (await api.call("POST", "/v1/drill-schedules/weekly/run"))[0] == 202
            run = await wait_run(
                api, "weekly", lambda r: r["outcome"] == "RUNNING", timeout=10, what="running"
            )
            await federation.wait_state("eu-fr-1", "cordoned", timeout=5)
            leader.stop(signal.SIGKILL)
            async with reporting(federation):
                done = await wait_run(api, "weekly", ended, timeout=30, what="run finished")
            assert done["id"] == run["id"]
            assert done["outcome"] == "SUCCEEDED", done
            status, drill = await api.call("GET", f"/v1/drills/{done['drill_id']}")
            events = " ".join(e["event"] for e in drill["report"]["timeline"])
            assert f"resumed by leader {standby.identity}" in events
            assert await federation.region_state("eu-fr-1") == "ready"
            entry = await store.get(keys.drill_run_request("weekly"))
            assert entry is None
        finally:
            await federation.close()


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "drill-schedules" / "weekly.yaml"


async def test_cli_applies_the_example_lists_next_runs_and_shows_history(
    practice: Practice,
) -> None:
    api, fed, clock, out = practice.api, practice.federation, practice.clock, practice.out
    cli = Cli(api)
    result = await cli("drill", "schedule", "apply", "-f", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert result.output.count("applied") == 4
    # Monday 2026-06-01 12:00 UTC: FR's next window is Tuesday 09:00 Paris (07:00 UTC).
    result = await cli("drill", "schedule", "list")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "weekly-eu-fr" in line)
    assert "2026-06-02 07:00:00" in row and "-" in row

    await deploy_fr(fed, "one")
    await put_schedule(api, "weekly", schedule(out))
    clock.now = TUESDAY_0930
    async with reporting(fed):
        result = await cli("drill", "schedule", "run", "weekly")  # waits for the outcome
    assert result.exit_code == 0, result.output
    assert "run-" in result.output and "SUCCEEDED" in result.output
    result = await cli("drill", "history")
    assert result.exit_code == 0, result.output
    assert "weekly" in result.output and "schedule" in result.output
    result = await cli("drill", "schedule", "show", "weekly")
    assert "recent runs" in result.output and "errors" in result.output
    result = await cli("drill", "schedule", "delete", "weekly-ap-in")
    assert (
        result.exit_code == 0
        and (await api.call("GET", "/v1/drill-schedules/weekly-ap-in"))[0] == 404
    )


async def test_a_rollout_or_another_drill_on_the_services_blocks_the_start(
    practice: Practice,
) -> None:
    api, fed, out = practice.api, practice.federation, practice.out
    await put_schedule(api, "weekly", schedule(out))
    # A service placed in FR whose instances never report ready: still rolling out.
    await fed.deploy({"name": "fresh", "command": COMMAND, "placement": {"prefer": ["eu-fr-1"]}})
    await fed.wait_placed("fresh", {"eu-fr-1": 1})
    assert (await api.call("POST", "/v1/drill-schedules/weekly/run"))[0] == 202
    run = await wait_run(api, "weekly", ended, timeout=10, what="blocked by the rollout")
    assert run["outcome"] == "BLOCKED" and "fresh is in a rollout" in run["message"], run

    async with reporting(fed):
        await fed.wait_phase("fresh", "Running", timeout=10)
    status, manual = await api.call(
        "POST", "/v1/drills", json={"regions": ["eu-fr-1"], "mode": "live", "max_duration_s": 60}
    )
    assert status == 201, manual
    assert (await api.call("POST", "/v1/drill-schedules/weekly/run"))[0] == 202
    first = run["id"]
    run = await wait_run(
        api, "weekly", lambda r: ended(r) and r["id"] != first, timeout=10, what="blocked again"
    )
    # Cordoned by the drill, held by it, or its evacuation rolling `fresh` out: any of
    # them, depending on how far the drill got when the scheduler looked.
    assert run["outcome"] == "BLOCKED", run
    assert any(w in run["message"] for w in (manual["id"], "cordoned", "rollout")), run
    status, still = await api.call("GET", f"/v1/drills/{manual['id']}")
    assert still["state"] == "running", still
    assert (await api.call("POST", f"/v1/drills/{manual['id']}/abort"))[0] == 200
