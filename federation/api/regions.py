"""Region registry routes: register, list, cordon, delete, the capacity ceiling, token
rotation, and the agents' heartbeat."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federation.api.auth import require, require_region
from federation.api.body import if_match, json_response, path_name, read_model, read_named
from federation.api.context import CONFIG, LAST_SEEN, MIRROR, STORE
from federation.api.errors import ApiError, from_validation, not_found
from federation.model.region import (
    CapacityLimit,
    Cordon,
    Heartbeat,
    RegionCreate,
    RegionLabels,
    RegionRecord,
    RegionView,
    new_incarnation,
)
from federation.model.token import Role, TokenRecord, hash_secret, new_secret
from federation.store import AlreadyExists, keys
from federation.store import heartbeats as store_heartbeats
from federation.store import regions as store_regions

routes = web.RouteTableDef()


class CordonRequest(BaseModel):
    """Body of `POST /v1/regions/{r}/cordon` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1024)


def _view(request: web.Request, view: RegionView) -> dict[str, object]:
    return request.app[LAST_SEEN].of(view).model_dump(mode="json")


def _region_token(name: str, incarnation: str | None = None) -> tuple[str, str, TokenRecord]:
    secret = new_secret()
    record = TokenRecord(
        id=f"tok-{secrets.token_hex(6)}",
        role=Role.REGION,
        region=name,
        region_incarnation=incarnation,
        created_at=datetime.now(UTC),
        description=f"region token for {name}",
    )
    return secret, hash_secret(secret), record


@routes.get("/v1/regions")
async def list_regions(request: web.Request) -> web.Response:
    await require(request, Role.VIEWER)
    views, revision = await store_regions.list_views(request.app[STORE])
    return json_response({"items": [_view(request, v) for v in views], "revision": revision})


@routes.post("/v1/regions")
async def create_region(request: web.Request) -> web.Response:
    await require(request, Role.ADMIN)
    spec = await read_model(request, RegionCreate)
    record = RegionRecord(
        name=spec.name,
        country=spec.country,
        labels=spec.labels,
        endpoint=spec.endpoint,
        created_at=datetime.now(UTC),
        capacity_limit=spec.capacity_limit,
        incarnation=new_incarnation(),
    )
    secret, digest, token = _region_token(spec.name, record.incarnation)
    try:
        revision = await store_regions.create(request.app[STORE], record, digest, token)
    except AlreadyExists:
        raise ApiError(409, f"region {spec.name!r} already exists") from None
    view = await store_regions.get_view(request.app[STORE], spec.name)
    return json_response(
        {"region": _view(request, view), "token": secret, "revision": revision},
        status=201,
        revision=revision,
    )


@routes.get("/v1/regions/{region}")
async def get_region(request: web.Request) -> web.Response:
    name = path_name(request, "region")
    await require(request, Role.VIEWER)
    try:
        view = await store_regions.get_view(request.app[STORE], name)
    except store_regions.RegionNotFound:
        raise not_found("region", name) from None
    return json_response(_view(request, view), revision=view.revision)


@routes.delete("/v1/regions/{region}")
async def delete_region(request: web.Request) -> web.Response:
    name = path_name(request, "region")
    await require(request, Role.OPERATOR)
    try:
        await store_regions.delete(request.app[STORE], name, revision=if_match(request))
    except store_regions.RegionNotFound:
        raise not_found("region", name) from None
    request.app[LAST_SEEN].forget(name)
    return json_response({"name": name, "deleted": True})


async def _set_cordon(request: web.Request, cordon: bool) -> web.Response:
    name = path_name(request, "region")
    who = await require(request, Role.OPERATOR)
    body = await read_model(request, CordonRequest) if request.can_read_body else CordonRequest()
    value = Cordon(by=who.subject, reason=body.reason, at=datetime.now(UTC)) if cordon else None
    try:
        view = await store_regions.set_cordon(
            request.app[STORE], name, value, revision=if_match(request)
        )
    except store_regions.RegionNotFound:
        raise not_found("region", name) from None
    return json_response(_view(request, view), revision=view.revision)


@routes.post("/v1/regions/{region}/cordon")
async def cordon_region(request: web.Request) -> web.Response:
    return await _set_cordon(request, True)


@routes.post("/v1/regions/{region}/uncordon")
async def uncordon_region(request: web.Request) -> web.Response:
    return await _set_cordon(request, False)


async def _set_capacity_limit(request: web.Request, limit: CapacityLimit | None) -> web.Response:
    name = path_name(request, "region")
    try:
        view = await store_regions.set_capacity_limit(
            request.app[STORE], name, limit, revision=if_match(request)
        )
    except store_regions.RegionNotFound:
        raise not_found("region", name) from None
    return json_response(_view(request, view), revision=view.revision)


@routes.put("/v1/regions/{region}/capacity-limit")
async def put_capacity_limit(request: web.Request) -> web.Response:
    """Set the most the region's heartbeats may claim (admin: a region's own word is not
    trusted beyond it, and an operator could otherwise attract placements to a region)."""
    path_name(request, "region")
    await require(request, Role.ADMIN)
    return await _set_capacity_limit(request, await read_model(request, CapacityLimit))


@routes.delete("/v1/regions/{region}/capacity-limit")
async def delete_capacity_limit(request: web.Request) -> web.Response:
    """Lift the ceiling: the region's heartbeats are taken as they come again."""
    path_name(request, "region")
    await require(request, Role.ADMIN)
    return await _set_capacity_limit(request, None)


@routes.put("/v1/regions/{region}/labels")
async def put_region_labels(request: web.Request) -> web.Response:
    """Replace the region's labels (admin, like its registration: labels draw
    placements that prefer them)."""
    name = path_name(request, "region")
    await require(request, Role.ADMIN)
    try:
        body = RegionLabels.model_validate(await read_named(request, name, kind="region"))
    except ValidationError as exc:
        raise from_validation(exc) from None
    try:
        view = await store_regions.set_labels(
            request.app[STORE], name, body.labels, revision=if_match(request)
        )
    except store_regions.RegionNotFound:
        raise not_found("region", name) from None
    return json_response(_view(request, view), revision=view.revision)


@routes.post("/v1/regions/{region}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    name = path_name(request, "region")
    await require_region(request, name)
    beat = await read_model(request, Heartbeat) if request.can_read_body else Heartbeat()
    ttl = request.app[CONFIG].region_ttl
    # The record as the mirror holds it saves a read; the beat's txn compares it.
    mirror = request.app[MIRROR]
    known = mirror.get(keys.REGIONS, name, RegionRecord)
    try:
        what = await store_heartbeats.heartbeat(
            request.app[STORE],
            name,
            beat,
            ttl=ttl,
            known=known,
            mirror=mirror,
            seen=request.app[LAST_SEEN],
        )
    except store_regions.RegionNotFound:
        raise not_found("region", name) from None
    request.app[LAST_SEEN].saw(name)
    # The agent paces itself from this answer: three beats per TTL.
    return json_response({"region": name, "result": what, "ttl_s": ttl, "interval_s": ttl / 3})


@routes.post("/v1/regions/{region}/token")
async def rotate_region_token(request: web.Request) -> web.Response:
    """Issue a new token for a region and revoke its previous ones, atomically."""
    name = path_name(request, "region")
    await require(request, Role.ADMIN)
    secret, digest, token = _region_token(name)
    try:
        _, revoked = await store_regions.rotate_token(request.app[STORE], name, digest, token)
    except store_regions.RegionNotFound:
        raise not_found("region", name) from None
    return json_response({"region": name, "token": secret, "revoked": len(revoked)}, status=201)
