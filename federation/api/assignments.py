"""What a region must run: its assignments, as a list or as a resumable NDJSON watch.

The watch sends one JSON object per line:
- `{"type": "put", "service", "assignment", "revision"}` and
  `{"type": "delete", "service", "revision"}` for each change after `since`;
- `{"type": "progress", "revision"}` every few seconds, so the agent can tell a live
  but quiet stream from a dead one, and resume from a recent revision;
- `{"type": "relist", "reason"}` when `since` is older than etcd's history (or the
  store stream broke): the agent lists again and watches from the new revision.

Each open watch (its request's task and the task pumping etcd's stream) is tracked
as `WATCHES` among the server's tasks, so that shutdown (`close_streams`, on_shutdown)
ends them: an open stream would otherwise hold the server up, and the agents resume
from their last revision through another replica.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from federation.api.auth import authenticate
from federation.api.body import MAX_REVISION, json_response, path_name, query_count
from federation.api.context import STORE, TASKS
from federation.api.errors import ApiError, bad_parameter
from federation.model.token import Role, role_allows
from federation.store import Compacted, Event, StoreError, keys

routes = web.RouteTableDef()

PROGRESS_EVERY_S = 5.0
WATCHES = "assignment watches"  # their name among the server's tasks


async def _authorize(request: web.Request, region: str) -> None:
    """The region itself, or anyone who may view the federation."""
    record = await authenticate(request)
    if record.role is Role.REGION:
        if record.region != region:
            raise ApiError(403, f"only region {region}'s own token may read its assignments")
        return
    if not role_allows(record.role, Role.VIEWER):
        raise ApiError(403, "this action needs the viewer role")


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _event_line(region: str, event: Event) -> dict[str, Any]:
    service = event.key.removeprefix(keys.assignments(region))
    if event.type == "delete":
        return {"type": "delete", "service": service, "revision": event.revision}
    return {
        "type": "put",
        "service": service,
        "assignment": {**(event.value or {}), "epoch": event.revision},
        "revision": event.revision,
    }


@routes.get("/v1/regions/{region}/assignments")
async def assignments(request: web.Request) -> web.StreamResponse:
    region = path_name(request, "region")
    await _authorize(request, region)
    store = request.app[STORE]
    if request.query.get("watch", "").lower() not in ("1", "true", "yes"):
        if await store.get(keys.region(region)) is None:
            raise ApiError(404, f"region {region!r} not found")
        entries, revision = await store.scan(keys.assignments(region))
        items = [{**e.value, "epoch": e.revision} for e in entries]
        return json_response({"items": items, "revision": revision})

    # The watch starts at since + 1, which must fit etcd's int64 too.
    since = query_count(request, "since", maximum=MAX_REVISION - 1)
    if since is None:
        raise bad_parameter("since", "watch=true needs since=<revision> from a list")
    if await store.get(keys.region(region)) is None:
        raise ApiError(404, f"region {region!r} not found")

    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    task = asyncio.current_task()
    assert task is not None
    tasks = request.app[TASKS]
    tasks.track(WATCHES, task)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for batch in store.watch(keys.assignments(region), start_revision=since + 1):
                for event in batch:
                    await queue.put(_event_line(region, event))
        except Compacted as exc:
            await queue.put({"type": "relist", "reason": str(exc)})
        except StoreError as exc:
            await queue.put({"type": "relist", "reason": f"store stream broke: {exc}"})

    pumping = asyncio.create_task(pump(), name=f"assignments-watch-{region}")
    tasks.track(WATCHES, pumping)
    last = since
    try:
        while True:
            try:
                async with asyncio.timeout(PROGRESS_EVERY_S):
                    line = await queue.get()
            except TimeoutError:
                # The last revision this stream delivered, not the store's: the watch
                # may lag the store, and resuming past an undelivered event loses it.
                line = {"type": "progress", "revision": last}
            else:
                last = max(last, int(line.get("revision", last)))
            await response.write(_line(line))
            if line["type"] == "relist":
                break
    except ConnectionResetError:
        pass  # the agent went away; it resumes from its last revision
    finally:
        pumping.cancel()
        await asyncio.wait([pumping], timeout=2)
    return response


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end open watches so the server can stop; agents resume elsewhere."""
    await app[TASKS].stop(WATCHES)
