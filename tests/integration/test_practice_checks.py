"""Practice checks and webhooks against real HTTP servers that misbehave: a check or a
webhook never holds the scheduler longer than its timeout, never reads an unbounded
answer, and follows no redirect; a failure is a failing check, never an exception."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from json import dumps as json_dumps

import aiohttp
from aiohttp import web

from federation.drills.checks import MAX_BODY, deliver, evaluate
from federation.model.schedule import HttpCheck, PrometheusCheck, Webhook


@contextlib.asynccontextmanager
async def hostile() -> AsyncIterator[str]:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(4)
        return web.Response(text="late")

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"x" * 65536
        for _ in range(1000):  # 64 MiB, never read in full
            await resp.write(chunk)
        return resp

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def nan(request: web.Request) -> web.Response:
        result = [{"metric": {}, "value": [1, "NaN"]}]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    async def null_scalar(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "success", "data": {"resultType": "scalar", "result": [0, None]}}
        )

    async def vast(request: web.Request) -> web.Response:
        result = [{"metric": {}, "value": [1, 10**400]}]
        return web.Response(
            text=json_dumps(
                {"status": "success", "data": {"resultType": "vector", "result": result}}
            ),
            content_type="application/json",
        )

    async def deep(request: web.Request) -> web.Response:
        return web.Response(text="[" * 60000, content_type="application/json")

    app = web.Application()
    app.router.add_get("/null/api/v1/query", null_scalar)
    app.router.add_get("/vast/api/v1/query", vast)
    app.router.add_get("/deep/api/v1/query", deep)
    app.router.add_get("/slow/api/v1/query", slow)
    app.router.add_get("/slow", slow)
    app.router.add_post("/slow", slow)
    app.router.add_get("/huge/api/v1/query", huge)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/nan/api/v1/query", nan)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_checks_and_webhooks_are_bounded() -> None:
    now = datetime.now(UTC)
    async with hostile() as url, aiohttp.ClientSession() as session:
        started = time.monotonic()
        slow = await evaluate(
            session, HttpCheck(name="slow", url=f"{url}/slow", timeout_s=0.5), "blocking", now
        )
        prom = PrometheusCheck(
            name="slow-prom", kind="prometheus", server=f"{url}/slow", query="up", timeout_s=0.5
        )
        slow_prom = await evaluate(session, prom, "outcome", now)
        hook = Webhook(url=f"{url}/slow", secret="hook#key", timeout_s=0.5)
        delivered = await deliver(session, hook, b"key", {"event": "start"})
        assert time.monotonic() - started < 3
        assert (slow.ok, slow.value) == (False, "timeout")
        assert (slow_prom.ok, slow_prom.value) == (False, "timeout")
        assert delivered is False

        huge = PrometheusCheck(name="huge", kind="prometheus", server=f"{url}/huge", query="up")
        result = await evaluate(session, huge, "outcome", now)
        assert not result.ok and str(MAX_BODY) in result.message

        moved = HttpCheck(name="moved", url=f"{url}/redirect")
        result = await evaluate(session, moved, "blocking", now)
        assert not result.ok and result.value == "302"  # not followed

        nan = PrometheusCheck(name="nan", kind="prometheus", server=f"{url}/nan", query="up")
        result = await evaluate(session, nan, "outcome", now)
        assert not result.ok and result.value == "nan"


async def test_an_answer_that_is_not_a_number_is_a_failing_check_not_a_crash() -> None:
    now = datetime.now(UTC)
    async with hostile() as url, aiohttp.ClientSession() as session:
        for path, words in [
            ("null", "not a number"),
            ("vast", "out of range"),
            ("deep", "nested too deeply"),
        ]:
            check = PrometheusCheck(
                name=path, kind="prometheus", server=f"{url}/{path}", query="up"
            )
            result = await evaluate(session, check, "blocking", now)
            assert (result.ok, result.value) == (False, "error"), result
            assert words in result.message and "Traceback" not in result.message, result
