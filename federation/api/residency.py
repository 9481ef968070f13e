"""Residency routes: policies, admin-defined groups, and evaluation (DESIGN sections 4, 5, 8).

Writes validate in two steps: the static fields through pydantic (`allow.0: unknown
country code 'GER' ...; did you mean 'DE'?`), then references against the stored groups
(`validate_references`, `validate_group`). Both are 422s naming the field, with the
suggestion also in `details[].suggestion`. Every write is checked and committed against
one snapshot of all policies and groups (see `federation.store.policies`), so a check
cannot go stale before the write lands.

`?dry_run=true` on a PUT validates and answers what would be stored, with the warnings
and the `impact` on deployed services (which would move, which would become Pending or
Degraded), without writing anything.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from federation.api.auth import require
from federation.api.body import if_match, json_response, path_name, read_document
from federation.api.context import CONFIG, STORE
from federation.api.errors import ApiError, from_validation, invalid
from federation.model.errors import UnknownDataClassError
from federation.model.jurisdictions import BUILTIN_GROUPS
from federation.model.names import Name
from federation.model.policy import Group, Policy
from federation.model.token import Role
from federation.planning.plan import impact
from federation.residency.evaluate import (
    MalformedPolicy,
    check_data_classes,
    empty_data_classes,
    evaluate,
)
from federation.residency.groups import (
    ReferenceProblem,
    references_to_group,
    validate_group,
    validate_references,
)
from federation.residency.snapshot import Snapshot, StoredGroup, StoredPolicy
from federation.store import keys
from federation.store import policies as store_policies
from federation.store import regions as store_regions
from federation.store.world import read_world

routes = web.RouteTableDef()

JSONDict = dict[str, Any]


class EvaluateRequest(BaseModel):
    """Body of `POST /v1/residency/evaluate`."""

    model_config = ConfigDict(extra="forbid")

    data_classes: list[Name] = Field(max_length=64)
    service: Name | None = None
    at: AwareDatetime | None = None


# -- shared ---------------------------------------------------------------------------


def _dry_run(request: web.Request) -> bool:
    value = request.query.get("dry_run", "false").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise invalid("dry_run", "must be true or false")


def _model_error(exc: ValidationError) -> ApiError:
    """A 422 from pydantic, with the suggestion our validators carry (GER -> DE) attached."""
    err = from_validation(exc)
    raw = exc.errors(include_url=False, include_input=False)
    if isinstance(err.details, list):
        for detail, error in zip(err.details, raw, strict=False):
            cause = error.get("ctx", {}).get("error")
            suggestion = getattr(cause, "suggestion", None)
            if suggestion:
                detail["suggestion"] = suggestion
    return err


def _reference_error(problems: list[ReferenceProblem]) -> ApiError:
    """A 422 naming every unresolved reference; the message is the first one's."""
    details = []
    for p in problems:
        detail: JSONDict = {"field": p.field, "message": p.message}
        if p.suggestion:
            detail["suggestion"] = p.suggestion
        details.append(detail)
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ApiError(422, f"{first.field}: {first.message}{more}", details=details)


async def _document(request: web.Request, name: str, kind: str) -> JSONDict:
    """The body as a mapping whose `name` (if any) matches the path; `kind` is optional."""
    data = await read_document(request)
    if not isinstance(data, dict):
        raise invalid("body", "must be an object")
    if "name" in data and data["name"] != name:
        raise invalid("name", f"must equal the name in the path ({name!r})")
    if "kind" in data:
        # Accepted so that a file written for `federation policy apply` can be sent as is.
        if not isinstance(data["kind"], str) or data["kind"].lower() != kind:
            raise invalid("kind", f"must be {kind!r} on this path")
        del data["kind"]
    data["name"] = name
    return data


def _warnings(
    snap: Snapshot, *, policy: Policy | None = None, group: Group | None = None
) -> list[str]:
    """Empty-data-class warnings for the state in `snap` with one write applied."""
    all_policies = {p.name: p.policy for p in snap.policies.values()}
    groups = snap.valid_groups()
    if policy is not None:
        all_policies[policy.name] = policy
    if group is not None:
        groups[group.name] = group
    found = empty_data_classes(all_policies.values(), groups, datetime.now(UTC))
    return [w.message for w in found]


# -- policies -------------------------------------------------------------------------


def _policy_view(stored: StoredPolicy) -> JSONDict:
    if isinstance(stored.policy, MalformedPolicy):
        classes = stored.policy.data_classes
        return {
            "name": stored.name,
            "malformed": True,
            "error": stored.policy.error,
            "data_classes": list(classes) if classes is not None else None,
            "stored": stored.raw,
            "revision": stored.revision,
        }
    return {**stored.policy.model_dump(mode="json"), "revision": stored.revision}


async def _impact(
    request: web.Request,
    *,
    policies: dict[str, StoredPolicy] | None = None,
    groups: dict[str, StoredGroup] | None = None,
) -> JSONDict:
    """What the write would do to deployed services, planned as the controller would."""
    before = await read_world(request.app[STORE])
    after = copy.copy(before)
    after.residency = dataclasses.replace(
        before.residency,
        policies={**before.residency.policies, **(policies or {})},
        groups={**before.residency.groups, **(groups or {})},
    )
    return impact(before, after, datetime.now(UTC), region_ttl=request.app[CONFIG].region_ttl)


def _policy_not_found(name: str) -> ApiError:
    return ApiError(404, f"policy {name!r} not found")


@routes.get("/v1/policies")
async def list_policies(request: web.Request) -> web.Response:
    await require(request, Role.VIEWER)
    snap = await store_policies.snapshot(request.app[STORE])
    items = [_policy_view(snap.policies[n]) for n in sorted(snap.policies)]
    return json_response({"items": items, "revision": snap.revision})


@routes.get("/v1/policies/{policy}")
async def get_policy(request: web.Request) -> web.Response:
    name = path_name(request, "policy")
    await require(request, Role.VIEWER)
    entry = await request.app[STORE].get(keys.policy(name))
    if entry is None:
        raise _policy_not_found(name)
    stored = store_policies.parse_policy(entry)
    return json_response(_policy_view(stored), revision=stored.revision)


@routes.put("/v1/policies/{policy}")
async def put_policy(request: web.Request) -> web.Response:
    """Create or replace a policy; 201 on create, 200 on update, with warnings."""
    name = path_name(request, "policy")
    await require(request, Role.ADMIN)
    dry_run = _dry_run(request)
    expected = if_match(request)
    data = await _document(request, name, "policy")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise _model_error(exc) from None

    async def attempt(snap: Snapshot) -> web.Response:
        problems = validate_references(policy, snap.valid_groups())
        if problems:
            raise _reference_error(problems)
        warnings = _warnings(snap, policy=policy)
        body = policy.model_dump(mode="json")
        current = snap.policies.get(name)
        if dry_run:
            # A stale If-Match fails a dry run as it would fail the write.
            store_policies.expected_revision(
                current.revision if current else None, expected, keys.policy(name)
            )
            replaced = StoredPolicy(name, policy, current.revision if current else 0, body)
            return json_response(
                {
                    **body,
                    "revision": current.revision if current else None,
                    "created": current is None,
                    "dry_run": True,
                    "warnings": warnings,
                    "impact": await _impact(request, policies={name: replaced}),
                }
            )
        revision, created = await store_policies.write_policy(
            request.app[STORE], policy, snap, if_match=expected
        )
        return json_response(
            {**body, "revision": revision, "created": created, "warnings": warnings},
            status=201 if created else 200,
            revision=revision,
        )

    return await store_policies.with_snapshot(request.app[STORE], attempt)


@routes.delete("/v1/policies/{policy}")
async def delete_policy(request: web.Request) -> web.Response:
    name = path_name(request, "policy")
    await require(request, Role.ADMIN)
    expected = if_match(request)

    async def attempt(snap: Snapshot) -> int:
        return await store_policies.delete_policy(request.app[STORE], name, snap, if_match=expected)

    try:
        revision = await store_policies.with_snapshot(request.app[STORE], attempt)
    except store_policies.PolicyNotFound:
        raise _policy_not_found(name) from None
    return json_response({"name": name, "deleted": True, "revision": revision})


# -- groups ---------------------------------------------------------------------------


def _builtin_view(name: str, now: datetime) -> JSONDict:
    builtin = BUILTIN_GROUPS[name]
    return {
        "name": name,
        "builtin": True,
        # Members as in force at `now`: adequacy decisions come and go (catalogue.py).
        "countries": sorted(builtin.countries(now)),
        "description": builtin.description,
    }


def _group_view(stored: StoredGroup) -> JSONDict:
    if stored.group is None:
        return {
            "name": stored.name,
            "builtin": False,
            "malformed": True,
            "error": stored.error,
            "stored": stored.raw,
            "revision": stored.revision,
        }
    return {**stored.group.model_dump(mode="json"), "builtin": False, "revision": stored.revision}


def _group_not_found(name: str) -> ApiError:
    return ApiError(404, f"group {name!r} not found")


def _builtin_refused(name: str) -> ApiError:
    return invalid(
        "name",
        f"group {name!r} is built in and cannot be changed or deleted; "
        "define a group with another name",
    )


@routes.get("/v1/groups")
async def list_groups(request: web.Request) -> web.Response:
    await require(request, Role.VIEWER)
    snap = await store_policies.snapshot(request.app[STORE])
    now = datetime.now(UTC)
    items = [_builtin_view(n, now) for n in sorted(BUILTIN_GROUPS)]
    items += [_group_view(snap.groups[n]) for n in sorted(snap.groups)]
    return json_response({"items": items, "revision": snap.revision})


@routes.get("/v1/groups/{group}")
async def get_group(request: web.Request) -> web.Response:
    name = path_name(request, "group")
    await require(request, Role.VIEWER)
    if name in BUILTIN_GROUPS:
        return json_response(_builtin_view(name, datetime.now(UTC)))
    entry = await request.app[STORE].get(keys.group(name))
    if entry is None:
        raise _group_not_found(name)
    stored = store_policies.parse_group(entry)
    return json_response(_group_view(stored), revision=stored.revision)


@routes.put("/v1/groups/{group}")
async def put_group(request: web.Request) -> web.Response:
    """Create or replace an admin-defined group; unknown members and cycles are 422s."""
    name = path_name(request, "group")
    await require(request, Role.ADMIN)
    if name in BUILTIN_GROUPS:
        raise _builtin_refused(name)
    dry_run = _dry_run(request)
    expected = if_match(request)
    data = await _document(request, name, "group")
    try:
        group = Group.model_validate(data)
    except ValidationError as exc:
        raise _model_error(exc) from None

    async def attempt(snap: Snapshot) -> web.Response:
        problems = validate_group(group, snap.valid_groups())
        if problems:
            raise _reference_error(problems)
        warnings = _warnings(snap, group=group)
        body = {**group.model_dump(mode="json"), "builtin": False}
        current = snap.groups.get(name)
        if dry_run:
            store_policies.expected_revision(
                current.revision if current else None, expected, keys.group(name)
            )
            replaced = StoredGroup(
                name, group, None, current.revision if current else 0, group.model_dump(mode="json")
            )
            return json_response(
                {
                    **body,
                    "revision": current.revision if current else None,
                    "created": current is None,
                    "dry_run": True,
                    "warnings": warnings,
                    "impact": await _impact(request, groups={name: replaced}),
                }
            )
        revision, created = await store_policies.write_group(
            request.app[STORE], group, snap, if_match=expected
        )
        return json_response(
            {**body, "revision": revision, "created": created, "warnings": warnings},
            status=201 if created else 200,
            revision=revision,
        )

    return await store_policies.with_snapshot(request.app[STORE], attempt)


@routes.delete("/v1/groups/{group}")
async def delete_group(request: web.Request) -> web.Response:
    """Delete a group nobody refers to; 409 naming the referrers otherwise.

    Race-free: the check and the delete use one snapshot, and the delete's txn compares
    the residency fence, which every policy and group write moves.
    """
    name = path_name(request, "group")
    await require(request, Role.ADMIN)
    if name in BUILTIN_GROUPS:
        raise _builtin_refused(name)
    expected = if_match(request)

    async def attempt(snap: Snapshot) -> int:
        if name not in snap.groups:
            raise _group_not_found(name)
        refs = [
            str(r)
            for r in references_to_group(
                name, policies=snap.valid_policies(), groups=snap.valid_groups()
            )
            if not (r.kind == "group" and r.name == name)
        ]
        refs += store_policies.malformed_referrers(snap, name)
        if refs:
            raise ApiError(
                409,
                f"group {name!r} is still referred to by {', '.join(refs)}; "
                "remove those references first",
                details={"referenced_by": refs},
            )
        return await store_policies.delete_group(request.app[STORE], name, snap, if_match=expected)

    revision = await store_policies.with_snapshot(request.app[STORE], attempt)
    return json_response({"name": name, "deleted": True, "revision": revision})


# -- evaluation -----------------------------------------------------------------------


def _unknown_classes_error(requested: list[str], exc: UnknownDataClassError) -> ApiError:
    details = []
    for i, data_class in enumerate(requested):
        if data_class not in exc.data_classes:
            continue
        suggestion = exc.suggestions.get(data_class)
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        message = (
            f"no policy names data class {data_class!r}{hint} "
            "(only 'public' may be used without a policy)"
        )
        detail: JSONDict = {"field": f"data_classes.{i}", "message": message}
        if suggestion:
            detail["suggestion"] = suggestion
        details.append(detail)
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(422, f"{first['field']}: {first['message']}{more}", details=details)


@routes.post("/v1/residency/evaluate")
async def evaluate_residency(request: web.Request) -> web.Response:
    """Every registered region's verdict, with reasons, for a set of data classes."""
    await require(request, Role.VIEWER)
    data = await read_document(request)
    if not isinstance(data, dict):
        raise invalid("body", "must be an object")
    try:
        spec = EvaluateRequest.model_validate(data)
    except ValidationError as exc:
        raise _model_error(exc) from None
    store = request.app[STORE]
    snap = await store_policies.snapshot(store)
    policies = snap.all_policies()
    try:
        check_data_classes(spec.data_classes, policies)
    except UnknownDataClassError as exc:
        raise _unknown_classes_error(spec.data_classes, exc) from None
    regions, _ = await store_regions.locations(store)
    groups = snap.valid_groups()
    now = spec.at or datetime.now(UTC)
    result = evaluate(
        data_classes=spec.data_classes,
        service=spec.service,
        regions=regions,
        policies=policies,
        groups=groups,
        now=now,
    )
    requested = set(spec.data_classes)
    warnings = [
        w.message for w in empty_data_classes(policies, groups, now) if w.data_class in requested
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
