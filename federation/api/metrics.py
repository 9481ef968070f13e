"""`GET /metrics`: every metric in Prometheus text format (no auth, like `/v1/health`:
it holds counts and timings, never names of secrets or tokens)."""

from __future__ import annotations

from aiohttp import web

from federation.telemetry.setup import render_metrics

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body, content_type = render_metrics()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
