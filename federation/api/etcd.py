"""etcd maintenance through the API (admin): status, defragmentation, alarms.

`federation etcd status|defrag|disarm` come here rather than talk to etcd, like the
rest of the CLI: an operator needs an admin token, not etcd's credentials, and every
call is checked, bounded and logged by the server (docs/operations.md says why).

- `GET /v1/etcd/status`: every member (endpoint, database size and in-use size,
  revision, leader, alarms), the raised alarms, and how far the history is compacted.
- `POST /v1/etcd/defrag?member=ID`: defragment one member (it answers nothing while
  it runs); the CLI goes member by member, so the cluster keeps its quorum. Under
  etcd auth only etcd's root may defragment: then a 403 says to run the CLI with
  `--etcd` and root's certificate, which talks to etcd directly.
- `POST /v1/etcd/disarm`: deactivate every raised alarm; after a NOSPACE alarm, only
  once the history is compacted and the members defragmented.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from federation.api.auth import require
from federation.api.body import json_response
from federation.api.context import COMPACTOR, STORE
from federation.api.errors import ApiError, bad_parameter
from federation.model.token import Role
from federation.store import maintenance
from federation.store.errors import NotPermitted

routes = web.RouteTableDef()

_MEMBER_ID = re.compile(r"[0-9a-f]{1,16}")  # etcd member ids: uint64, in hex
# One defragmentation at a time through this server: two members busy at once in a
# cluster of three would leave it without a quorum.
_ONE_AT_A_TIME = asyncio.Lock()


@routes.get("/v1/etcd/status")
async def status(request: web.Request) -> web.Response:
    """Every member's status, the alarms, the revision and the compacted revision."""
    await require(request, Role.ADMIN)
    store = request.app[STORE]
    compactor = request.app.get(COMPACTOR)
    known = compactor.compacted if compactor is not None else 0
    try:
        members = await maintenance.status(store)
        compacted, revision = await maintenance.compacted_revision(store, at_least=known)
    except NotPermitted as exc:
        raise _forbidden(f"{exc}; see docs/operations.md") from None
    window = compactor.window_s if compactor is not None else None
    return json_response(
        {
            "members": [m.as_json() for m in members],
            "alarms": [{"member": m.id, "alarm": a} for m in members for a in m.alarms],
            "revision": revision,
            "compacted_revision": compacted,
            "history_window_s": window,
        }
    )


def _forbidden(message: str) -> ApiError:
    """etcd refused the server's etcd user (not the caller: the caller is an admin)."""
    return ApiError(403, message, code="etcd_forbidden")


@routes.post("/v1/etcd/defrag")
async def defrag(request: web.Request) -> web.Response:
    """Defragment the member `member` (its id in hex, from the status)."""
    await require(request, Role.ADMIN)
    member = request.query.get("member", "")
    if not _MEMBER_ID.fullmatch(member):
        raise bad_parameter("member", "the id (hexadecimal) of one member, from the status")
    if _ONE_AT_A_TIME.locked():
        raise ApiError(409, "a defragmentation is running already; wait for it to finish")
    try:
        async with _ONE_AT_A_TIME:
            done = await maintenance.defragment(request.app[STORE], member)
    except NotPermitted:
        raise _forbidden(
            "etcd lets only its root role defragment, and this server's etcd user is not "
            "root (as deploy/ sets it up). Run `federation etcd defrag --etcd ENDPOINTS "
            "--etcd-ca CA --etcd-cert ROOT_CERT --etcd-key ROOT_KEY` with etcd's root "
            "certificate instead"
        ) from None
    if done is None:
        raise ApiError(404, f"etcd member {member!r} not found")
    return json_response(done.as_json())


@routes.post("/v1/etcd/disarm")
async def disarm(request: web.Request) -> web.Response:
    """Deactivate every raised alarm; answers the ones that were raised."""
    await require(request, Role.ADMIN)
    try:
        raised = await maintenance.disarm(request.app[STORE])
    except NotPermitted as exc:
        raise _forbidden(f"{exc}; see docs/operations.md") from None
    return json_response({"disarmed": [{"member": who, "alarm": name} for who, name in raised]})
