"""`POST /v1/plan`: a set of documents (region labels, groups, policies, secrets'
metadata, services, drill schedules) planned as one, written nowhere. `federation plan`, `diff` and
`apply` ask it; `apply` then writes each resource with the revision the plan saw as
`If-Match` (docs/gitops.md). Secrets' metadata is checked against the stored secrets,
never written: values do not go in files.

The documents are validated one by one as their own PUT would (a 422 naming
`documents.N.spec.FIELD`); what only the set as a whole can say (a group one of its
policies names, a data class only one of its policies binds) is decided in
`planning.changeset` against the store with every document in place.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from federation.api.auth import require
from federation.api.body import json_response, read_model
from federation.api.context import CONFIG, STORE, whole_read
from federation.api.errors import ApiError, invalid
from federation.api.schedules import check_signing_keys
from federation.api.secrets import check_references
from federation.model.names import Labels
from federation.model.policy import Group, Policy
from federation.model.region import RegionLabels
from federation.model.schedule import DrillSchedule
from federation.model.secret import SecretDeclaration
from federation.model.service import ServiceSpec
from federation.model.token import Role
from federation.planning.changeset import EXIT_ERROR, ChangeSet, StoredSecret, plan_changes
from federation.store import schedules as store_schedules
from federation.store import secrets as store_secrets
from federation.store.world import read_world

routes = web.RouteTableDef()

MAX_DOCUMENTS = 1000


class ServiceDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["service"]
    spec: ServiceSpec


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["policy"]
    spec: Policy


class GroupDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["group"]
    spec: Group


class RegionDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["region"]
    spec: RegionLabels


class SecretDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["secret"]
    spec: SecretDeclaration


class ScheduleDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["drill-schedule"]
    spec: DrillSchedule


Document = Annotated[
    ServiceDocument
    | PolicyDocument
    | GroupDocument
    | RegionDocument
    | SecretDocument
    | ScheduleDocument,
    Field(discriminator="kind"),
]


class PlanRequest(BaseModel):
    """Body of `POST /v1/plan`."""

    model_config = ConfigDict(extra="forbid")

    documents: list[Document] = Field(max_length=MAX_DOCUMENTS)
    # Delete every stored resource carrying all these labels that the set does not hold
    # (`apply --prune`); at least one label, so an empty selector cannot select all.
    prune: Annotated[Labels, Field(min_length=1)] | None = None


def change_set(request: PlanRequest) -> ChangeSet:
    """The documents by kind and name; a 422 naming the second of any pair that share
    both (which one should win is not for the server to guess)."""
    changes = ChangeSet(prune=request.prune)
    by_kind: dict[str, dict[str, Any]] = {
        "service": changes.services,
        "policy": changes.policies,
        "group": changes.groups,
        "region": changes.regions,
        "secret": changes.secrets,
        "drill-schedule": changes.schedules,
    }
    for i, doc in enumerate(request.documents):
        into = by_kind[doc.kind]
        if doc.spec.name in into:
            raise invalid(
                f"documents.{i}.spec.name", f"a second {doc.kind} named {doc.spec.name!r}"
            )
        into[doc.spec.name] = doc.spec
    return changes


@routes.post("/v1/plan")
async def post_plan(request: web.Request) -> web.Response:
    """What applying the documents would do: resources, moves, rejections, warnings."""
    await require(request, Role.OPERATOR)
    body = await read_model(request, PlanRequest)
    changes = change_set(body)
    async with whole_read(request):
        world = await read_world(request.app[STORE])
        read: dict[str, Any] = {}  # secrets by name, each read once
        secrets = await _stored_secrets(request, changes, read)
        schedules, _ = await store_schedules.list_all(request.app[STORE])
        answer = await asyncio.to_thread(
            partial(
                plan_changes,
                region_ttl=request.app[CONFIG].region_ttl,
                secrets=secrets,
                schedules={s.name: (s, revision) for s, revision in schedules},
            ),
            world,
            changes,
            datetime.now(UTC),
        )
        problems = await _secret_problems(request, changes, read)
    if problems:  # what the services' PUTs would refuse: nothing can be applied
        answer["problems"] = [*answer["problems"], *problems]
        answer["exit_code"] = EXIT_ERROR
    answer["revision"] = world.revision
    return json_response(answer)


async def _stored_secrets(
    request: web.Request, changes: ChangeSet, read: dict[str, Any]
) -> dict[str, StoredSecret]:
    """The metadata of each stored secret the set declares; what was read goes in
    `read` (by name), which the services' reference checks share."""
    found = {}
    for name in sorted(changes.secrets):
        read[name] = got = await store_secrets.get(request.app[STORE], name)
        if got is not None:
            record, revision = got
            keys = tuple(sorted(record.current().fingerprints))
            found[name] = StoredSecret(tuple(record.data_classes), keys, revision)
    return found


def _problems(kind: str, name: str, exc: ApiError, field: str) -> list[dict[str, str]]:
    """A refusal the resource's own PUT would give, as plan problems (one per field)."""
    details = exc.details if isinstance(exc.details, list) else []
    return [
        {"kind": kind, "name": name, "field": str(d.get("field", field)), "message": exc.message}
        for d in details
    ]


async def _secret_problems(
    request: web.Request, changes: ChangeSet, read: dict[str, Any]
) -> list[dict[str, str]]:
    """Each service's secret references checked as its PUT checks them (the secret and
    its key exist, its data classes are among the service's), and each drill schedule's
    webhook keys (signing keys only), as plan problems. `read`: the secrets read so far."""
    problems = []
    for name, spec in sorted(changes.services.items()):
        try:
            await check_references(request, spec, read=read)
        except ApiError as exc:
            problems += _problems("service", name, exc, "secrets")
    for name, schedule in sorted(changes.schedules.items()):
        try:
            await check_signing_keys(request, schedule)
        except ApiError as exc:
            problems += _problems("drill-schedule", name, exc, "notifications")
    return problems
