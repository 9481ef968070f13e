"""`GET /v1/openapi.json`: an OpenAPI 3.1 document built from the route table and the
pydantic models the routes validate with (so it cannot drift from what is enforced).

Every route the app serves appears (a route missing from OPERATIONS still gets a bare
entry, and a test fails on it); request bodies are the models' JSON schemas; every
path parameter is a DNS-1123 label; errors share one shape, the `Error` schema. Every
body is accepted as JSON or as YAML (`api/body.py`), and the document says so.
The schemathesis run in tests/integration/test_fuzz.py fuzzes the API from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from federation.api.body import MAX_REVISION, json_response
from federation.api.drills import AbortRequest
from federation.api.evidence import EvidenceRequest
from federation.api.plan import PlanRequest
from federation.api.regions import CordonRequest
from federation.api.residency import EvaluateRequest
from federation.api.tokens import TokenCreate
from federation.api.ui import PATHS as DASHBOARD_PATHS
from federation.model.drill import DrillRequest
from federation.model.names import NAME_PATTERN
from federation.model.policy import Group, Policy
from federation.model.region import CapacityLimit, Heartbeat, RegionCreate, RegionLabels
from federation.model.schedule import DrillSchedule
from federation.model.secret import SecretRotation, SecretSpec
from federation.model.service import RegionReport, ServiceSpec
from federation.store.audit.checkpoint import Checkpoint

routes = web.RouteTableDef()

JSON = dict[str, Any]
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    summary: str
    role: str | None  # None: no token needed
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: dict[str, JSON] = field(default_factory=dict)
    success: tuple[int, ...] = (200,)
    list_result: bool = False
    if_match: bool = False
    media: str = "application/json"


YAML = "application/yaml"  # every body route reads YAML too (api/body.py)
_SEQ = {"type": "integer", "minimum": 0, "maximum": MAX_REVISION}
_SINCE = {"type": "integer", "minimum": 0, "maximum": MAX_REVISION - 1}  # watched from since + 1
_BOOL = {"type": "string", "enum": ["true", "false"]}

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/v1/health"): Operation("Liveness", None),
    ("GET", "/v1/ready"): Operation("Readiness (etcd answers)", None, success=(200, 503)),
    ("GET", "/v1/openapi.json"): Operation("This document", None),
    ("GET", "/metrics"): Operation("Prometheus metrics", None, media="text/plain"),
    ("GET", "/v1/regions"): Operation("List regions", "viewer", list_result=True),
    ("POST", "/v1/regions"): Operation(
        "Register a region; answers its token once", "admin", RegionCreate, success=(201,)
    ),
    ("GET", "/v1/regions/{region}"): Operation("One region", "viewer"),
    ("DELETE", "/v1/regions/{region}"): Operation("Delete a region", "operator", if_match=True),
    ("POST", "/v1/regions/{region}/cordon"): Operation(
        "Cordon a region", "operator", CordonRequest, body_required=False, if_match=True
    ),
    ("POST", "/v1/regions/{region}/uncordon"): Operation(
        "Lift a cordon", "operator", CordonRequest, body_required=False, if_match=True
    ),
    ("POST", "/v1/regions/{region}/heartbeat"): Operation(
        "Heartbeat (the region's own token)", "region", Heartbeat, body_required=False
    ),
    ("PUT", "/v1/regions/{region}/capacity-limit"): Operation(
        "Set the ceiling on what the region's heartbeats may claim",
        "admin",
        CapacityLimit,
        if_match=True,
    ),
    ("PUT", "/v1/regions/{region}/labels"): Operation(
        "Replace the region's labels", "admin", RegionLabels, if_match=True
    ),
    ("DELETE", "/v1/regions/{region}/capacity-limit"): Operation(
        "Lift the region's capacity ceiling", "admin", if_match=True
    ),
    ("POST", "/v1/regions/{region}/token"): Operation(
        "Rotate the region's token", "admin", success=(201,)
    ),
    ("GET", "/v1/regions/{region}/assignments"): Operation(
        "The region's assignments; watch=true streams NDJSON from since",
        "region or viewer",
        query={"watch": _BOOL, "since": _SINCE},
    ),
    ("PUT", "/v1/regions/{region}/status"): Operation(
        "Report instances (the region's own token)", "region", RegionReport
    ),
    ("GET", "/v1/tokens"): Operation("List tokens (never secrets)", "admin", list_result=True),
    ("POST", "/v1/tokens"): Operation(
        "Make a token; answers its secret once", "admin", TokenCreate, success=(201,)
    ),
    ("DELETE", "/v1/tokens/{token}"): Operation("Revoke a token", "admin"),
    ("GET", "/v1/whoami"): Operation("The caller's token and the roles it holds", "any token"),
    ("GET", "/v1/policies"): Operation("List policies", "viewer", list_result=True),
    ("GET", "/v1/policies/{policy}"): Operation("One policy", "viewer"),
    ("PUT", "/v1/policies/{policy}"): Operation(
        "Create or replace a policy (YAML accepted)",
        "admin",
        Policy,
        query={"dry_run": _BOOL},
        success=(200, 201),
        if_match=True,
    ),
    ("DELETE", "/v1/policies/{policy}"): Operation("Delete a policy", "admin", if_match=True),
    ("GET", "/v1/groups"): Operation("List groups", "viewer", list_result=True),
    ("GET", "/v1/groups/{group}"): Operation("One group", "viewer"),
    ("PUT", "/v1/groups/{group}"): Operation(
        "Create or replace a group",
        "admin",
        Group,
        query={"dry_run": _BOOL},
        success=(200, 201),
        if_match=True,
    ),
    ("DELETE", "/v1/groups/{group}"): Operation("Delete a group", "admin", if_match=True),
    ("POST", "/v1/residency/evaluate"): Operation(
        "Where may data of these classes be?", "viewer", EvaluateRequest
    ),
    ("POST", "/v1/plan"): Operation(
        "Plan a set of groups, policies and services as one; writes nothing",
        "operator",
        PlanRequest,
    ),
    ("GET", "/v1/residency/evidence"): Operation(
        "Where data of a class went over a period, from the verified audit log; signed",
        "admin",
        query={
            "data_class": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"},
        },
    ),
    ("POST", "/v1/residency/evidence"): Operation(
        "As the GET, the chain also checked against a signed checkpoint", "admin", EvidenceRequest
    ),
    ("GET", "/v1/services"): Operation("List services", "viewer", list_result=True),
    ("GET", "/v1/services/{service}"): Operation("One service with status", "viewer"),
    ("PUT", "/v1/services/{service}"): Operation(
        "Deploy (create or update) a service (YAML accepted); dry_run=true answers what "
        "would change and writes nothing",
        "operator",
        ServiceSpec,
        query={"dry_run": _BOOL},
        success=(200, 201),
        if_match=True,
    ),
    ("DELETE", "/v1/services/{service}"): Operation("Delete a service", "operator", if_match=True),
    ("POST", "/v1/services/{service}/rebalance"): Operation(
        "Place a service afresh", "operator", success=(202,)
    ),
    ("GET", "/v1/services/{service}/explain"): Operation("Why each region", "viewer"),
    ("GET", "/v1/secrets"): Operation(
        "List secrets (metadata only, never a value)", "viewer", list_result=True
    ),
    ("GET", "/v1/secrets/{secret}"): Operation(
        "One secret's metadata: keys, version, data classes, fingerprints", "viewer"
    ),
    ("PUT", "/v1/secrets/{secret}"): Operation(
        "Create or replace a secret (values are write-only)",
        "operator",
        SecretSpec,
        success=(200, 201),
        if_match=True,
    ),
    ("POST", "/v1/secrets/{secret}/rotate"): Operation(
        "A new version of a secret; referencing services roll out",
        "operator",
        SecretRotation,
        if_match=True,
    ),
    ("DELETE", "/v1/secrets/{secret}"): Operation("Delete a secret", "operator", if_match=True),
    ("POST", "/v1/secrets/rewrap"): Operation(
        "Wrap every secret's keys with the primary KEK", "admin"
    ),
    ("POST", "/v1/drills"): Operation(
        "Plan (200) or start (201) a drill", "operator", DrillRequest, success=(200, 201)
    ),
    ("GET", "/v1/drills"): Operation("List drills", "operator", list_result=True),
    ("GET", "/v1/drills/{drill}"): Operation("One drill with its report", "operator"),
    ("GET", "/v1/drills/{drill}/report.md"): Operation(
        "A drill's report as Markdown", "operator", media="text/markdown"
    ),
    ("POST", "/v1/drills/{drill}/abort"): Operation(
        "Abort a drill", "operator", AbortRequest, body_required=False
    ),
    ("GET", "/v1/drill-schedules"): Operation(
        "List drill schedules with next run and last run", "viewer", list_result=True
    ),
    ("GET", "/v1/drill-schedules/{schedule}"): Operation(
        "One drill schedule with its next run and last run", "viewer"
    ),
    ("PUT", "/v1/drill-schedules/{schedule}"): Operation(
        "Create or replace a drill schedule (practice drills run by the leader)",
        "operator",
        DrillSchedule,
        success=(200, 201),
        if_match=True,
    ),
    ("DELETE", "/v1/drill-schedules/{schedule}"): Operation(
        "Delete a drill schedule and its runs (409 while one runs)", "operator", if_match=True
    ),
    ("POST", "/v1/drill-schedules/{schedule}/run"): Operation(
        "Ask for a practice run now (outside the windows)", "operator", success=(202,)
    ),
    ("GET", "/v1/drill-schedules/{schedule}/runs"): Operation(
        "A drill schedule's practice runs, oldest first", "viewer"
    ),
    ("GET", "/v1/audit"): Operation(
        "Audit entries after since", "admin", query={"since": _SEQ}, list_result=True
    ),
    ("GET", "/v1/audit/verify"): Operation("Verify the audit hash chain", "admin"),
    ("GET", "/v1/etcd/status"): Operation(
        "etcd members (sizes, revision, leader, alarms) and the compacted revision", "admin"
    ),
    ("POST", "/v1/etcd/defrag"): Operation(
        "Defragment one etcd member",
        "admin",
        query={"member": {"type": "string", "pattern": "^[0-9a-f]{1,16}$"}},
    ),
    ("POST", "/v1/etcd/disarm"): Operation("Deactivate etcd's raised alarms", "admin"),
    ("POST", "/v1/audit/verify"): Operation(
        "Verify the audit hash chain against a signed checkpoint", "admin", Checkpoint
    ),
    ("GET", "/v1/audit/checkpoint"): Operation(
        "The head of the audit log, signed with the server's --audit-key", "admin"
    ),
}

ERROR_SCHEMA: JSON = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
            },
        }
    },
}
LIST_SCHEMA: JSON = {
    "type": "object",
    "required": ["items", "revision"],
    "properties": {"items": {"type": "array"}, "revision": {"type": "integer"}},
}


def _model_schema(model: type[BaseModel], components: JSON) -> JSON:
    schema = model.model_json_schema(ref_template=_REF, mode="validation")
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _operation(method: str, path: str, op: Operation, components: JSON) -> JSON:
    params: list[JSON] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
        }
        for name in re.findall(r"{(\w+)}", path)
    ]
    params += [{"name": k, "in": "query", "schema": v} for k, v in op.query.items()]
    if op.if_match:
        params.append(
            {
                "name": "If-Match",
                "in": "header",
                "description": "The revision the write expects (409 if it moved).",
                "schema": {"type": "string", "pattern": r'^(W/)?"?[0-9]{1,18}"?$'},
            }
        )
    ok_schema = LIST_SCHEMA if op.list_result else {"type": "object"}
    content = (
        {op.media: {"schema": ok_schema}}
        if op.media == "application/json"
        else {op.media: {"schema": {"type": "string"}}}
    )
    responses: JSON = {
        str(code): {"description": "success", "content": content} for code in op.success
    }
    responses["default"] = {
        "description": "an error (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
    }
    result: JSON = {
        "operationId": f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', path)}",
        "summary": op.summary,
        "parameters": params,
        "responses": responses,
    }
    if op.role is None:
        result["security"] = []
    else:
        result["description"] = f"Needs a token of role: {op.role}."
    if op.body is not None:
        schema = _model_schema(op.body, components)
        result["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schema}, YAML: {"schema": schema}},
        }
    return result


def build(app: web.Application) -> JSON:
    """The document for the routes `app` serves."""
    components: JSON = {"Error": ERROR_SCHEMA}
    paths: JSON = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        info = route.resource.get_info()
        path = str(info.get("path") or info.get("formatter") or "")
        if path in DASHBOARD_PATHS:
            continue  # the dashboard's static files, not the API
        op = OPERATIONS.get((route.method, path)) or Operation("(undocumented)", "admin")
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, op, components
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "federation",
            "version": "1",
            "description": "Multi-datacenter federation under data-residency rules.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def undocumented(app: web.Application) -> list[str]:
    """Routes the app serves that OPERATIONS does not describe (a test keeps it empty)."""
    missing = []
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        info = route.resource.get_info()
        path = str(info.get("path") or info.get("formatter") or "")
        if path in DASHBOARD_PATHS:
            continue  # the dashboard's static files, not the API
        if (route.method, path) not in OPERATIONS:
            missing.append(f"{route.method} {path}")
    return missing


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(build(request.app))
