"""Service routes: deploy (PUT), read with status, delete, explain, rebalance; and the
region's side of it: its status reports."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web
from pydantic import ValidationError

from federation.api import views
from federation.api.auth import require, require_region
from federation.api.body import (
    encode_json,
    if_match,
    json_response,
    path_name,
    query_flag,
    read_named,
    read_object,
)
from federation.api.context import CONFIG, CONTROLLER, STORE, synced
from federation.api.errors import ApiError, from_validation, no_policy_names, not_found
from federation.api.secrets import check_references
from federation.model.errors import UnknownDataClassError
from federation.model.service import (
    MAX_REPORT_BYTES,
    MAX_REPORT_INSTANCES,
    RegionReport,
    ServiceRecord,
    ServiceSpec,
)
from federation.model.status import survivability
from federation.model.token import Role
from federation.planning.plan import plan
from federation.planning.preview import preview, region_rows
from federation.residency.evaluate import check_data_classes, unknown_data_classes
from federation.store import Conflict, keys
from federation.store import policies as store_policies
from federation.store import services as store_services
from federation.store.mirror import Mirror
from federation.store.world import capacity_used, world_of

routes = web.RouteTableDef()


async def _read_spec(request: web.Request, name: str) -> ServiceSpec:
    data = await read_named(request, name)
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


@routes.put("/v1/services/{service}")
async def put_service(request: web.Request) -> web.Response:
    """Create or update a service; the controller places it."""
    name = path_name(request, "service")
    await require(request, Role.OPERATOR)
    spec = await _read_spec(request, name)
    store, mirror = request.app[STORE], await synced(request)
    # A typo in a data class must not mean "anywhere": every class needs a policy.
    unknown = unknown_data_classes(spec.data_classes, store_policies.policies_of(mirror))
    if unknown:
        # The mirror may not have a policy another replica wrote a moment ago: refuse
        # only on what etcd itself says.
        try:
            check_data_classes(spec.data_classes, await store_policies.policies(store))
        except UnknownDataClassError as exc:
            raise no_policy_names(spec.data_classes, exc) from None
    # Every referenced secret exists, with only data classes the service has.
    secret_versions = await check_references(request, spec)
    if query_flag(request, "dry_run"):
        return await _dry_run(request, spec, mirror)
    record, revision, created, changed = await store_services.apply(
        store, spec, if_match=if_match(request), mirror=mirror, secret_versions=secret_versions
    )
    if changed:
        mirror.prime(keys.SERVICES, name, revision, record)
        request.app[CONTROLLER].poke()
    # Answered from the write itself: no need to wait for the mirror to see it.
    found = views.service_in(mirror, name, record, revision)
    return json_response(found, status=201 if created else 200, revision=found["revision"])


async def _dry_run(request: web.Request, spec: ServiceSpec, mirror: Mirror) -> web.Response:
    """What the PUT would change, decided from the mirror as the controller would now;
    nothing is written, not even to the audit log. An `If-Match` that the stored
    revision has moved past is the 409 the real write would get."""
    name = spec.name
    stored = mirror.get(keys.SERVICES, name, ServiceRecord)
    expected = if_match(request)
    if expected is not None and expected != (stored[1] if stored else 0):
        raise Conflict(keys.service(name), expected, stored[1] if stored else None)
    residency = store_policies.snapshot_of(mirror)
    world = await asyncio.to_thread(world_of, mirror, [name], residency)
    used = await asyncio.to_thread(capacity_used, mirror)
    answer = await asyncio.to_thread(
        preview,
        world,
        spec,
        datetime.now(UTC),
        region_ttl=request.app[CONFIG].region_ttl,
        used=used,
    )
    answer["dry_run"] = True
    return json_response(answer, revision=stored[1] if stored else None)


# Above this many services, the list is sent in pieces of this many, each parsed and
# encoded on its own: the server never holds every service as views at once.
LIST_CHUNK = 1000


@routes.get("/v1/services")
async def list_services(request: web.Request) -> web.StreamResponse:
    await require(request, Role.VIEWER)
    mirror = await synced(request)
    revision = mirror.revision
    names = sorted(mirror.tails(keys.SERVICES))
    if len(names) <= LIST_CHUNK:
        # Parsing is CPU-bound: off the loop, so other requests go on.
        items = await asyncio.to_thread(views.services_of, mirror, names)
        return json_response({"items": items, "revision": revision})
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    await response.write(b'{"items":[')
    separator = b""
    for start in range(0, len(names), LIST_CHUNK):
        items = await asyncio.to_thread(
            views.services_of, mirror, names[start : start + LIST_CHUNK]
        )
        if items:  # a piece can come out empty: its services were deleted meanwhile
            await response.write(separator + b",".join(map(encode_json, items)))
            separator = b","
    await response.write(f'],"revision":{revision}}}'.encode())
    await response.write_eof()
    return response


@routes.get("/v1/services/{service}")
async def get_service(request: web.Request) -> web.Response:
    name = path_name(request, "service")
    await require(request, Role.VIEWER)
    mirror = await synced(request)
    try:
        found = views.service_of(mirror, name)
    except store_services.ServiceNotFound:
        raise not_found("service", name) from None
    return json_response(found, revision=found["revision"])


@routes.delete("/v1/services/{service}")
async def delete_service(request: web.Request) -> web.Response:
    name = path_name(request, "service")
    await require(request, Role.OPERATOR)
    try:
        await store_services.delete(request.app[STORE], name, if_match=if_match(request))
    except store_services.ServiceNotFound:
        raise not_found("service", name) from None
    request.app[CONTROLLER].poke()
    return json_response({"name": name, "deleted": True})


@routes.post("/v1/services/{service}/rebalance")
async def rebalance(request: web.Request) -> web.Response:
    """Place the service afresh, e.g. back into a preferred region after a failover."""
    name = path_name(request, "service")
    await require(request, Role.OPERATOR)
    try:
        await store_services.request_rebalance(request.app[STORE], name)
    except store_services.ServiceNotFound:
        raise not_found("service", name) from None
    request.app[CONTROLLER].poke()
    return json_response({"name": name, "rebalance": "requested"}, status=202)


@routes.get("/v1/services/{service}/explain")
async def explain(request: web.Request) -> web.Response:
    """Every region: chosen or rejected, and why, as the controller would decide now."""
    name = path_name(request, "service")
    await require(request, Role.VIEWER)
    mirror = await synced(request)
    if not mirror.has(keys.SERVICES, name):
        raise not_found("service", name)
    # This service against every other one's capacity, from the mirror: no read and
    # no parse of the whole world, whatever its size.
    residency = store_policies.snapshot_of(mirror)
    world = await asyncio.to_thread(world_of, mirror, [name], residency)
    used = await asyncio.to_thread(capacity_used, mirror)
    if name not in world.services:
        raise not_found("service", name)
    now = datetime.now(UTC)
    plans = plan(world, now, region_ttl=request.app[CONFIG].region_ttl, used=used)
    p = plans[name]
    assert p.decision is not None and p.evaluation is not None
    current, _ = world.placements.get(name, (None, 0))
    single = survivability(p.evaluation.allowed_regions)
    conditions = [single] if single is not None and p.decision.desired else []
    return json_response(
        {
            "service": name,
            "at": now.isoformat(),
            "data_classes": p.evaluation.data_classes,
            "bound_policies": p.evaluation.bound_policies,
            "decision": {
                "reason": p.decision.reason,
                "message": p.decision.message,
                "placement": p.decision.placement,
            },
            "conditions": [c.model_dump() for c in conditions],
            "current": current.model_dump(mode="json") if current else None,
            "regions": region_rows(p),
            "audit_findings": [f.model_dump(mode="json") for f in p.evaluation.audit_findings],
        }
    )


@routes.put("/v1/regions/{region}/status")
async def put_region_status(request: web.Request) -> web.Response:
    """A region reports the instances it runs (its own token only). Bounded (413 above
    MAX_REPORT_INSTANCES, or a body above MAX_REPORT_BYTES: a region's report may be
    larger than other bodies), and stored per service, only what changed."""
    name = path_name(request, "region")
    await require_region(request, name)
    limit = max(MAX_REPORT_BYTES, request.app[CONFIG].max_body_bytes)
    data = await read_object(request.clone(client_max_size=limit))
    count = len(data["instances"]) if isinstance(data.get("instances"), list) else 0
    if count > MAX_REPORT_INSTANCES:
        message = f"a report holds at most {MAX_REPORT_INSTANCES} instances; this one has {count}"
        raise ApiError(
            413,
            f"instances: {message}",
            details=[{"field": "instances", "message": message, "limit": MAX_REPORT_INSTANCES}],
        )
    try:
        report = RegionReport.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None
    try:
        revision, written = await store_services.put_report(
            request.app[STORE], name, report, mirror=await synced(request)
        )
    except LookupError:
        raise not_found("region", name) from None
    if written:
        request.app[CONTROLLER].poke()
    return json_response({"region": name, "instances": len(report.instances)}, revision=revision)
