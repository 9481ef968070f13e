"""What a region must run: its assignments, as a list or as a resumable NDJSON watch.

The watch sends one JSON object per line:
- `{"type": "put", "service", "assignment", "revision"}` and
  `{"type": "delete", "service", "revision"}` for each change after `since`;
- `{"type": "progress", "revision"}` every few seconds, so the agent can tell a live
  but quiet stream from a dead one, and resume from a recent revision;
- `{"type": "relist", "reason", "compacted"}` when `since` is older than the history
  etcd keeps (`compacted`: the revision it was compacted up to; `since=0` too, once
  anything is compacted), or `{"type": "relist", "reason"}` when the store stream
  broke: the agent lists again and watches from the new revision;
- `{"type": "closed", "reason"}` last, when the right to the watch ended while it
  was open: its token was revoked, rotated away or expired, or its region deleted
  (federation.api.watches). Nothing is sent after it; opening again gets the 401 or
  404 that says why.

A token may hold `ServerConfig.max_watches_per_token` watches at once (then 429).

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

from federation.api.auth import Principal, principal
from federation.api.body import MAX_REVISION, json_response, path_name, query_count
from federation.api.context import MIRROR, OPEN_WATCHES, STORE, TASKS, synced
from federation.api.errors import ApiError, bad_parameter
from federation.api.secrets import delivered_item
from federation.api.watches import TooManyWatches, Watch, refusal
from federation.model.token import Role
from federation.store import Compacted, Event, StoreError, keys

routes = web.RouteTableDef()

PROGRESS_EVERY_S = 5.0
_CHECK_EVERY_S = 1.0  # how often a quiet stream checks that its client is still there
WATCHES = "assignment watches"  # their name among the server's tasks


async def _authorize(request: web.Request, region: str) -> Principal:
    """The region itself, or anyone who may view the federation."""
    who = await principal(request)
    reason = refusal(who.record, region)
    if reason is not None:
        raise ApiError(403, reason)
    return who


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
    who = await _authorize(request, region)
    store = request.app[STORE]
    if request.query.get("watch", "").lower() not in ("1", "true", "yes"):
        if await store.get(keys.region(region)) is None:
            raise ApiError(404, f"region {region!r} not found")
        entries, revision = await store.scan(keys.assignments(region))
        # The secrets' values go to the region's own token only, judged against the
        # mirror's regions and policies (api.secrets): first bring it up to this
        # server's writes.
        await synced(request)
        to_region = who.record.role is Role.REGION
        items = [
            await delivered_item(
                request.app, region, {**e.value, "epoch": e.revision}, to_region=to_region
            )
            for e in entries
        ]
        return json_response({"items": items, "revision": revision})

    # The watch starts at since + 1, which must fit etcd's int64 too.
    since = query_count(request, "since", maximum=MAX_REVISION - 1)
    if since is None:
        raise bad_parameter("since", "watch=true needs since=<revision> from a list")
    entry = await store.get(keys.region(region))
    if entry is None:
        raise ApiError(404, f"region {region!r} not found")
    # From here on the watch is judged against the mirror (federation.api.watches):
    # first bring it up to the token and region just read, so it judges by no older
    # state, and nothing between those reads and the registration goes unseen.
    mirror = request.app[MIRROR]
    await mirror.wait_for(max(who.revision, entry.revision))
    watches = request.app[OPEN_WATCHES]
    try:
        watch = watches.open(
            region=region, digest=who.digest, record=who.record, revision=who.revision
        )
    except TooManyWatches as exc:
        raise ApiError(
            429,
            f"this token already holds {exc.limit} assignment watches, the most it may; "
            "close one first",
            headers={"Retry-After": str(int(_CHECK_EVERY_S) + 1)},
        ) from None
    try:
        if watch.ended is not None:  # revoked or deleted while the watch was opening
            if watch.region_gone:
                raise ApiError(404, f"region {region!r} not found")
            raise ApiError(401, "invalid or expired token")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        tasks = request.app[TASKS]
        tasks.track(WATCHES, task)
        pumping = asyncio.create_task(
            _pump(request.app, watch, since), name=f"assignments-watch-{region}"
        )
        tasks.track(WATCHES, pumping)
        try:
            await _stream(request, response, watch, since)
        except ConnectionResetError:
            pass  # the agent went away; it resumes from its last revision
        finally:
            pumping.cancel()
            await asyncio.wait([pumping], timeout=2)
        return response
    finally:
        watches.close(watch)


async def _pump(app: web.Application, watch: Watch, since: int) -> None:
    """etcd's stream of the region's assignments, into the watch's lines, with the
    secrets' values when the watch is the region's own (api.secrets)."""
    store, mirror = app[STORE], app[MIRROR]
    to_region = watch.record.role is Role.REGION
    try:
        prefix = keys.assignments(watch.region)
        async for batch in store.watch(prefix, start_revision=since + 1):
            # Sent only once the mirror has applied it, and with it every revocation
            # before it: no change made after a token was revoked reaches that token.
            await mirror.wait_for(batch[-1].revision)
            if watch.ended is not None:
                return
            for event in batch:
                line = _event_line(watch.region, event)
                if line["type"] == "put":
                    line["assignment"] = await delivered_item(
                        app, watch.region, line["assignment"], to_region=to_region
                    )
                watch.lines.put_nowait(line)
    except Compacted as exc:
        # `since` is older than the history etcd keeps: the agent lists again.
        line = {"type": "relist", "reason": str(exc), "compacted": exc.compact_revision}
        watch.lines.put_nowait(line)
    except StoreError as exc:
        watch.lines.put_nowait({"type": "relist", "reason": f"store stream broke: {exc}"})


async def _stream(
    request: web.Request, response: web.StreamResponse, watch: Watch, since: int
) -> None:
    """Write the watch's lines, a progress line after each quiet spell, and a last
    `closed` line once the watch is ended; return when the client has gone."""
    loop = asyncio.get_running_loop()
    last, written = since, loop.time()
    while True:
        line: dict[str, Any] | None
        try:
            async with asyncio.timeout(_CHECK_EVERY_S):
                line = await watch.lines.get()
        except TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return  # the client went away: free its slot now, not at the next write
            if loop.time() - written < PROGRESS_EVERY_S:
                continue
            # The last revision this stream delivered, not the store's: the watch
            # may lag the store, and resuming past an undelivered event loses it.
            line = {"type": "progress", "revision": last}
        if watch.ended is not None:
            await response.write(_line({"type": "closed", "reason": watch.ended}))
            return
        if line is None:
            continue
        last = max(last, int(line.get("revision", last)))
        await response.write(_line(line))
        written = loop.time()
        if line["type"] == "relist":
            return


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end open watches so the server can stop; agents resume elsewhere."""
    await app[TASKS].stop(WATCHES)
