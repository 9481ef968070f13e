"""Drill routes: plan a drill (what-if, stores nothing), start a live one, follow it,
abort it, and read its report as JSON or Markdown.

A live drill is created here (record and region locks in one txn) and driven by the
leader's drill runner (`DRILLS`, started beside the controller by federation.api.app);
an abort is applied here, by any replica, at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from federation.api.auth import require
from federation.api.body import json_response, path_name, read_model, read_optional_model
from federation.api.context import CONFIG, DRILLS, STORE
from federation.api.errors import ApiError, invalid
from federation.drills.report import build_report, render_markdown
from federation.drills.runner import abort
from federation.model.drill import DrillRecord, DrillRequest, DrillState, new_drill_id
from federation.model.token import Role
from federation.planning.what_if import what_if
from federation.store import drills as store_drills
from federation.store.world import read_world

routes = web.RouteTableDef()


class AbortRequest(BaseModel):
    """Body of `POST /v1/drills/{id}/abort` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1024)


def _progress(record: DrillRecord) -> dict[str, Any]:
    services = record.services.values()
    end = record.ended_at or datetime.now(UTC)
    return {
        "phase": record.phase,
        "affected": len(record.services),
        "recovered": sum(1 for s in services if s.settled == "recovered"),
        "degraded": sum(1 for s in services if s.settled == "degraded"),
        "unrecoverable": sum(1 for s in services if s.settled == "unrecoverable"),
        "violations": len(record.violations),
        "elapsed_s": round((end - record.created_at).total_seconds(), 3),
        "max_duration_s": record.request.max_duration_s,
        "failback": record.request.failback,
        "message": record.outcome_message,
    }


def _view(record: DrillRecord, revision: int, *, report: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": record.id,
        "mode": record.mode,
        "regions": record.regions,
        "state": record.state.value,
        "progress": _progress(record),
        "created_at": record.created_at.isoformat(),
        "created_by": record.created_by,
        "revision": revision,
    }
    if report:
        view["plan"] = record.plan.model_dump(mode="json")
        view["report"] = build_report(record)
    return view


def _not_found(drill_id: str) -> ApiError:
    return ApiError(404, f"drill {drill_id!r} not found")


@routes.post("/v1/drills")
async def create_drill(request: web.Request) -> web.Response:
    """Plan (200, nothing stored) or start (201) a drill of the given regions."""
    who = await require(request, Role.OPERATOR)
    body = await read_model(request, DrillRequest)
    store = request.app[STORE]
    world = await read_world(store)
    for i, name in enumerate(body.regions):
        if name not in world.regions:
            raise invalid(f"regions.{i}", f"no region named {name!r}")
    now = datetime.now(UTC)
    plan = what_if(world, body.regions, now, region_ttl=request.app[CONFIG].region_ttl)
    counts = {k: len(plan.names(k)) for k in ("recoverable", "degraded", "unrecoverable")}
    if body.mode == "plan":
        return json_response(
            {
                "id": None,
                "mode": "plan",
                "regions": body.regions,
                "state": DrillState.PLANNED.value,
                "summary": {**counts, "unaffected": plan.unaffected},
                "plan": plan.model_dump(mode="json"),
            }
        )
    for name in body.regions:
        region = world.regions[name]
        if name not in world.alive:
            raise ApiError(409, f"region {name} is unreachable: there is nothing to drill")
        if region.cordon is not None:
            raise ApiError(
                409, f"region {name} is already cordoned (by {region.cordon.by})", code="conflict"
            )
    unrecoverable = [s for s in plan.services if s.outcome == "unrecoverable"]
    if unrecoverable and not body.force:
        names = ", ".join(s.service for s in unrecoverable)
        raise ApiError(
            409,
            f"the plan finds {len(unrecoverable)} unrecoverable service(s): {names}; "
            "start with force: true to drill anyway",
            code="unrecoverable_services",
            details=[
                {"service": s.service, "reason": s.reason, "message": s.message}
                for s in unrecoverable
            ],
        )
    record = DrillRecord(
        id=new_drill_id(),
        regions=body.regions,
        state=DrillState.RUNNING,
        phase="cordoning",
        request=body,
        created_at=now,
        created_by=who.subject,
        plan=plan,
        accepted_unrecoverable=[s.service for s in unrecoverable],
    )
    record.note(
        now,
        f"live drill started by {who.subject}; plan: {counts['recoverable']} recoverable, "
        f"{counts['degraded']} degraded, {counts['unrecoverable']} unrecoverable"
        + (" (accepted with force)" if unrecoverable else ""),
    )
    try:
        revision = await store_drills.create(store, record)
    except store_drills.RegionHeld as exc:
        raise ApiError(
            409,
            f"region {exc.region} is already in live drill {exc.drill_id}",
            details={"region": exc.region, "drill": exc.drill_id},
        ) from None
    request.app[DRILLS].poke()
    return json_response(_view(record, revision), status=201, revision=revision)


@routes.get("/v1/drills")
async def list_drills(request: web.Request) -> web.Response:
    """Every live drill, oldest first, without its report (read one drill for that)."""
    await require(request, Role.OPERATOR)
    found, revision = await store_drills.list_all(request.app[STORE])
    items = [_view(record, rev, report=False) for record, rev in found]
    return json_response({"items": items, "revision": revision})


async def _get(request: web.Request) -> tuple[DrillRecord, int]:
    drill_id = path_name(request, "drill")
    await require(request, Role.OPERATOR)
    found = await store_drills.get(request.app[STORE], drill_id)
    if found is None:
        raise _not_found(drill_id)
    return found


@routes.get("/v1/drills/{drill}")
async def get_drill(request: web.Request) -> web.Response:
    record, revision = await _get(request)
    return json_response(_view(record, revision), revision=revision)


@routes.get("/v1/drills/{drill}/report.md")
async def get_report_markdown(request: web.Request) -> web.Response:
    record, _ = await _get(request)
    return web.Response(
        text=render_markdown(build_report(record)), content_type="text/markdown", charset="utf-8"
    )


@routes.post("/v1/drills/{drill}/abort")
async def abort_drill(request: web.Request) -> web.Response:
    """Stop a running drill and lift its cordons at once."""
    drill_id = path_name(request, "drill")
    who = await require(request, Role.OPERATOR)
    body = await read_optional_model(request, AbortRequest)
    store = request.app[STORE]
    found = await store_drills.get(store, drill_id)
    if found is None:
        raise _not_found(drill_id)
    if found[0].state.terminal:
        raise ApiError(409, f"drill {drill_id} has already ended ({found[0].state.value})")
    record = await abort(store, drill_id, by=who.subject, reason=body.reason)
    if record is None:
        raise _not_found(drill_id)
    current = await store_drills.get(store, drill_id)
    revision = current[1] if current else 0
    return json_response(_view(record, revision), revision=revision)
