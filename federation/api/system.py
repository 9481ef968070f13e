"""Unauthenticated endpoints: liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from federation.api.body import json_response
from federation.api.context import AUDIT_MONITOR, CONFIG, ELECTION, STORE
from federation.api.errors import NOSPACE_MESSAGE
from federation.store import StoreError

routes = web.RouteTableDef()


@routes.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    """The process is up and serving HTTP (no dependency checked): always 200 while it
    serves. `audit_head` says whether this server saw the audit head go back (a cut or
    wiped log: see federation.store.audit.monitor); that is an alarm for a person, not
    a reason to restart the process. `etcd` names etcd's raised alarms as this server
    last saw them (a refused write, or the alarm list read every compaction interval)
    and, for NOSPACE, what to do."""
    body: dict[str, object] = {"status": "ok"}
    monitor = request.app.get(AUDIT_MONITOR)
    if monitor is not None:
        body["audit_head"] = monitor.as_json()
    store = request.app.get(STORE)
    if store is not None:
        alarms = sorted(store.alarms)
        etcd: dict[str, object] = {"alarms": alarms}
        if "NOSPACE" in alarms:
            etcd["action"] = NOSPACE_MESSAGE
        body["etcd"] = etcd
    return json_response(body)


@routes.get("/v1/ready")
async def ready(request: web.Request) -> web.Response:
    """Ready when etcd answers; also says whether this replica leads the controller."""
    election = request.app[ELECTION]
    try:
        revision = await request.app[STORE].revision()
    except StoreError:
        return json_response(
            {"ready": False, "reason": "etcd unavailable", "leader": False}, status=503
        )
    return json_response(
        {
            "ready": True,
            "revision": revision,
            "leader": election.is_leader,
            "identity": request.app[CONFIG].identity,
        }
    )
