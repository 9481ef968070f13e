"""Audit routes: read the log from a sequence number, and verify its hash chain."""

from __future__ import annotations

from aiohttp import web

from federation.api.auth import require
from federation.api.body import json_response, query_count
from federation.api.context import STORE
from federation.model.token import Role
from federation.store import audit as store_audit

routes = web.RouteTableDef()

PAGE = 1000


@routes.get("/v1/audit")
async def list_audit(request: web.Request) -> web.Response:
    """Entries after `since` (a sequence number; default 0), oldest first, at most 1000."""
    await require(request, Role.ADMIN)
    since = query_count(request, "since") or 0
    items, revision = await store_audit.since(request.app[STORE], since, limit=PAGE)
    return json_response({"items": items, "revision": revision})


@routes.get("/v1/audit/verify")
async def verify_audit(request: web.Request) -> web.Response:
    """Walk the hash chain; name the first entry that does not verify."""
    await require(request, Role.ADMIN)
    result = await store_audit.verify(request.app[STORE])
    return json_response(result.as_json())
