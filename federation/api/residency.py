"""Residency routes: policies, admin-defined groups, and evaluation (docs/residency.md).

Policies and groups share one implementation (`federation.api.policies`); this module
binds their routes, and answers `POST /v1/residency/evaluate`: every registered region's
verdict, with its reasons, for a set of data classes, from one snapshot of the policies.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from federation.api import policies
from federation.api.auth import require
from federation.api.body import json_response, read_model
from federation.api.context import STORE
from federation.api.errors import no_policy_names
from federation.api.policies import GROUP, POLICY
from federation.model.errors import UnknownDataClassError
from federation.model.names import Name
from federation.model.token import Role
from federation.residency.evaluate import check_data_classes, empty_data_classes, evaluate
from federation.store import policies as store_policies
from federation.store import regions as store_regions

routes = web.RouteTableDef()


class EvaluateRequest(BaseModel):
    """Body of `POST /v1/residency/evaluate`."""

    model_config = ConfigDict(extra="forbid")

    data_classes: list[Name] = Field(max_length=64)
    service: Name | None = None
    at: AwareDatetime | None = None


@routes.get("/v1/policies")
async def list_policies(request: web.Request) -> web.Response:
    return await policies.list_all(request, POLICY)


@routes.get("/v1/policies/{policy}")
async def get_policy(request: web.Request) -> web.Response:
    return await policies.get_one(request, POLICY)


@routes.put("/v1/policies/{policy}")
async def put_policy(request: web.Request) -> web.Response:
    """Create or replace a policy; 201 on create, 200 on update, with warnings."""
    return await policies.put(request, POLICY)


@routes.delete("/v1/policies/{policy}")
async def delete_policy(request: web.Request) -> web.Response:
    return await policies.delete(request, POLICY)


@routes.get("/v1/groups")
async def list_groups(request: web.Request) -> web.Response:
    """The built-in groups, then the admin-defined ones."""
    return await policies.list_all(request, GROUP)


@routes.get("/v1/groups/{group}")
async def get_group(request: web.Request) -> web.Response:
    return await policies.get_one(request, GROUP)


@routes.put("/v1/groups/{group}")
async def put_group(request: web.Request) -> web.Response:
    """Create or replace an admin-defined group; unknown members and cycles are 422s."""
    return await policies.put(request, GROUP)


@routes.delete("/v1/groups/{group}")
async def delete_group(request: web.Request) -> web.Response:
    """Delete a group nobody refers to; 409 naming the referrers otherwise."""
    return await policies.delete(request, GROUP)


@routes.post("/v1/residency/evaluate")
async def evaluate_residency(request: web.Request) -> web.Response:
    """Every registered region's verdict, with reasons, for a set of data classes."""
    await require(request, Role.VIEWER)
    spec = await read_model(request, EvaluateRequest)
    store = request.app[STORE]
    snap = await store_policies.snapshot(store)
    all_policies = snap.all_policies()
    try:
        check_data_classes(spec.data_classes, all_policies)
    except UnknownDataClassError as exc:
        raise no_policy_names(spec.data_classes, exc) from None
    regions, _ = await store_regions.locations(store)
    groups = snap.valid_groups()
    now = spec.at or datetime.now(UTC)
    result = evaluate(
        data_classes=spec.data_classes,
        service=spec.service,
        regions=regions,
        policies=all_policies,
        groups=groups,
        now=now,
    )
    requested = set(spec.data_classes)
    warnings = [
        w.message
        for w in empty_data_classes(all_policies, groups, now)
        if w.data_class in requested
    ]
    if not regions:
        warnings.append("no region is registered")
    elif not result.allowed_regions:
        warnings.append(
            f"no registered region is allowed for data classes {result.data_classes}: "
            "services with them cannot be placed"
        )
    return json_response(
        {
            "data_classes": result.data_classes,
            "service": result.service,
            "at": result.at.isoformat(),
            "bound_policies": result.bound_policies,
            "regions": [v.model_dump(mode="json") for v in result.verdicts],
            "audit_findings": [f.model_dump(mode="json") for f in result.audit_findings],
            "warnings": warnings,
            "revision": snap.revision,
        }
    )
