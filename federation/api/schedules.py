"""Drill schedules over HTTP: list, get, put, delete, an on-demand run, and the runs.

Operators write (a schedule makes the server call the URLs of its checks and webhooks,
so no viewer may write one); viewers read. The leader's practice scheduler
(federation.drills.practice) runs what is due; here a schedule is validated, stored
(audited), shown with its next run and last outcome, and an on-demand run is asked
for. A run's report is its drill's (`/v1/drills/{id}`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from federation.api.auth import require
from federation.api.body import if_match, json_response, path_name, read_named
from federation.api.context import CONFIG, PRACTICE, STORE
from federation.api.errors import ApiError, from_validation, invalid, not_found
from federation.model.schedule import MAX_SCHEDULES, DrillSchedule, Outcome, PracticeRun
from federation.model.secret import WEBHOOK_SIGNING, parse_reference
from federation.model.token import Role
from federation.planning.practice import next_run
from federation.store import AlreadyExists
from federation.store import regions as store_regions
from federation.store import schedules as store_schedules
from federation.store import secrets as store_secrets

routes = web.RouteTableDef()


def _now(request: web.Request) -> datetime:
    clock = request.app[CONFIG].clock
    return clock() if clock is not None else datetime.now(UTC)


def run_view(run: PracticeRun) -> dict[str, Any]:
    """A practice run as clients see it."""
    view = run.model_dump(mode="json")
    view["report"] = f"/v1/drills/{run.drill_id}" if run.drill_id else None
    return view


def _view(
    schedule: DrillSchedule, revision: int, runs: list[PracticeRun], now: datetime
) -> dict[str, Any]:
    used = [r.started_at for r in runs if r.trigger == "schedule" and r.outcome != Outcome.BLOCKED]
    upcoming = next_run(schedule, now, used)
    last = runs[-1] if runs else None
    return {
        **schedule.model_dump(mode="json"),
        "revision": revision,
        "next_run": upcoming.isoformat() if upcoming else None,
        "last_run": run_view(last) if last else None,
        "running": any(r.outcome == Outcome.RUNNING for r in runs),
    }


async def _runs_of(request: web.Request, name: str | None = None) -> dict[str, list[PracticeRun]]:
    found: dict[str, list[PracticeRun]] = {}
    for run, _ in await store_schedules.runs(request.app[STORE], name):
        found.setdefault(run.schedule, []).append(run)
    return found


async def check_signing_keys(request: web.Request, schedule: DrillSchedule) -> None:
    """422 unless each webhook names a key of a secret whose only data class is
    `webhook-signing`: any other secret's value (a database password) would be given
    away as an HMAC to whoever runs the webhook's URL."""
    for i, webhook in enumerate(schedule.notifications.webhooks):
        field = f"notifications.webhooks.{i}.secret"
        name, key = parse_reference(webhook.secret)
        found = await store_secrets.get(request.app[STORE], name)
        if found is None:
            raise invalid(field, f"no secret named {name!r}")
        if found[0].data_classes != [WEBHOOK_SIGNING]:
            raise invalid(
                field,
                f"secret {name!r} is not a webhook signing key: its only data class "
                f"must be {WEBHOOK_SIGNING!r}",
            )
        if key not in found[0].current().fingerprints:
            raise invalid(field, f"secret {name!r} has no key {key!r}")


async def _running(request: web.Request, name: str) -> PracticeRun | None:
    runs = await store_schedules.runs(request.app[STORE], name)
    return next((r for r, _ in runs if r.outcome is Outcome.RUNNING), None)


@routes.get("/v1/drill-schedules")
async def list_schedules(request: web.Request) -> web.Response:
    """Every schedule with its next run and last run."""
    await require(request, Role.VIEWER)
    found, revision = await store_schedules.list_all(request.app[STORE])
    runs = await _runs_of(request)
    now = _now(request)
    # next_run of up to MAX_SCHEDULES schedules: milliseconds each, off the event loop.
    items = await asyncio.to_thread(
        lambda: [_view(s, rev, runs.get(s.name, []), now) for s, rev in found]
    )
    return json_response({"items": items, "revision": revision})


@routes.get("/v1/drill-schedules/{schedule}")
async def get_schedule(request: web.Request) -> web.Response:
    name = path_name(request, "schedule")
    await require(request, Role.VIEWER)
    found = await store_schedules.get(request.app[STORE], name)
    if found is None:
        raise not_found("drill schedule", name)
    runs = await _runs_of(request, name)
    view = _view(found[0], found[1], runs.get(name, []), _now(request))
    return json_response(view, revision=found[1])


@routes.put("/v1/drill-schedules/{schedule}")
async def put_schedule(request: web.Request) -> web.Response:
    """Create (201) or replace (200) a schedule; its regions must exist."""
    name = path_name(request, "schedule")
    who = await require(request, Role.OPERATOR)
    data = await read_named(request, name, kind="drillschedule")
    try:
        schedule = DrillSchedule.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None
    store = request.app[STORE]
    if await store_schedules.get(store, name) is None:
        count = len((await store_schedules.list_all(store))[0])
        if count >= MAX_SCHEDULES:
            raise ApiError(
                409, f"there are {count} drill schedules, the most allowed: delete one first"
            )
    for i, region in enumerate(schedule.regions):
        if await store_regions.get_record(store, region) is None:
            raise invalid(f"regions.{i}", f"no region named {region!r}")
    await check_signing_keys(request, schedule)
    revision, created = await store_schedules.put(
        store, schedule, if_match=if_match(request), actor=who.subject
    )
    runs = await _runs_of(request, name)
    view = _view(schedule, revision, runs.get(name, []), _now(request))
    return json_response(view, status=201 if created else 200, revision=revision)


@routes.delete("/v1/drill-schedules/{schedule}")
async def delete_schedule(request: web.Request) -> web.Response:
    """Delete a schedule and its runs; 409 while one of them is running (its outcome
    checks are the drill's safety stop: abort the drill first)."""
    name = path_name(request, "schedule")
    who = await require(request, Role.OPERATOR)
    running = await _running(request, name)
    if running is not None:
        raise ApiError(
            409,
            f"run {running.id} of {name} is running (drill {running.drill_id}): "
            f"abort the drill first (federation drill abort {running.drill_id})",
        )
    revision = await store_schedules.delete(
        request.app[STORE], name, if_match=if_match(request), actor=who.subject
    )
    if revision is None:
        raise not_found("drill schedule", name)
    return json_response({"name": name, "deleted": True, "revision": revision})


@routes.post("/v1/drill-schedules/{schedule}/run")
async def run_schedule(request: web.Request) -> web.Response:
    """Ask the leader for a run now, outside the windows (202); checks, incident
    rules and the capacity pre-check still apply."""
    name = path_name(request, "schedule")
    who = await require(request, Role.OPERATOR)
    store = request.app[STORE]
    if await store_schedules.get(store, name) is None:
        raise not_found("drill schedule", name)
    running = await _running(request, name)
    if running is not None:
        raise ApiError(409, f"run {running.id} of {name} is running (drill {running.drill_id})")
    try:
        revision = await store_schedules.request_run(
            store, name, by=who.subject, at=datetime.now(UTC)
        )
    except AlreadyExists:
        raise ApiError(409, f"a run of {name} is already requested") from None
    request.app[PRACTICE].poke()
    return json_response(
        {"schedule": name, "requested": True, "revision": revision}, status=202, revision=revision
    )


@routes.get("/v1/drill-schedules/{schedule}/runs")
async def list_runs(request: web.Request) -> web.Response:
    """The schedule's runs, oldest first (at most MAX_HISTORY are kept)."""
    name = path_name(request, "schedule")
    await require(request, Role.VIEWER)
    if await store_schedules.get(request.app[STORE], name) is None:
        raise not_found("drill schedule", name)
    runs = await _runs_of(request, name)
    return json_response({"items": [run_view(r) for r in runs.get(name, [])]})
