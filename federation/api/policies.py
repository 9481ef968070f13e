"""Policies and admin-defined groups over HTTP: one list, get, put and delete for both.

The two kinds differ only in what a `Kind` lists (model, store key and calls, reference
check, view, the built-in names a group may not take, who stops a delete); the order
of checks, dry runs, ETags and answers are written once, here. The routes themselves
are bound in `federation.api.residency`.

Writes validate in two steps: the static fields through pydantic (`allow.0: unknown
country code 'GER' ...; did you mean 'DE'?`), then references against the stored groups
(`validate_references`, `validate_group`). Both are 422s naming the field, with the
suggestion also in `details[].suggestion`. Every write is checked and committed against
one snapshot of all policies and groups (see `federation.store.policies`), so a check
cannot go stale before the write lands: the txn compares the residency fence, which
every policy and group write moves. A delete's referrer check is race-free the same way.

`?dry_run=true` on a PUT validates and answers what would be stored, with the warnings
and the `impact` on deployed services (which would move, which would become Pending or
Degraded), without writing anything.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from federation.api import views
from federation.api.auth import require
from federation.api.body import if_match, json_response, path_name, query_flag, read_named
from federation.api.context import CONFIG, STORE
from federation.api.errors import ApiError, from_validation, invalid, not_found, unresolved
from federation.model.jurisdictions import BUILTIN_GROUPS, BuiltinGroup
from federation.model.policy import Group, Policy
from federation.model.token import Role
from federation.planning.plan import impact
from federation.residency.evaluate import empty_data_classes
from federation.residency.groups import (
    ReferenceProblem,
    references_to_group,
    validate_group,
    validate_references,
)
from federation.residency.snapshot import Snapshot, StoredGroup, StoredPolicy
from federation.store import Entry, Store, keys
from federation.store import policies as store_policies
from federation.store.world import read_world

JSONDict = dict[str, Any]

D = TypeVar("D", bound=BaseModel)  # the document: a Policy or a Group
D_contra = TypeVar("D_contra", bound=BaseModel, contravariant=True)
S = TypeVar("S", StoredPolicy, StoredGroup)  # the document as a snapshot holds it


class Write(Protocol[D_contra]):
    """`store.policies.write_policy` / `write_group`: returns (revision, created)."""

    def __call__(
        self, store: Store, doc: D_contra, snap: Snapshot, /, *, if_match: int | None
    ) -> Awaitable[tuple[int, bool]]: ...


class Delete(Protocol):
    """`store.policies.delete_policy` / `delete_group`: returns the revision."""

    def __call__(
        self, store: Store, name: str, snap: Snapshot, /, *, if_match: int | None
    ) -> Awaitable[int]: ...


@dataclass(frozen=True)
class Kind(Generic[D, S]):
    """What differs between policies and groups."""

    name: str  # the path parameter, the `kind` a body may carry, the noun in messages
    model: type[D]
    key: Callable[[str], str]
    parse: Callable[[Entry], S]
    entries: Callable[[Snapshot], Mapping[str, S]]
    with_entry: Callable[[Snapshot, S], Snapshot]  # `snap` with that one replaced or added
    entry: Callable[[str, D, int], S]  # a valid document as it would be stored
    view: Callable[[S], JSONDict]
    check: Callable[[D, Mapping[str, Group]], list[ReferenceProblem]]
    referrers: Callable[[Snapshot, str], list[str]]  # who still names it: a 409 on delete
    write: Write[D]
    delete: Delete
    builtins: Mapping[str, BuiltinGroup]  # shown, never written


def _group_referrers(snap: Snapshot, name: str) -> list[str]:
    """Policies and other groups that name `group:NAME`, malformed ones that might."""
    refs = [
        str(r)
        for r in references_to_group(
            name, policies=snap.valid_policies(), groups=snap.valid_groups()
        )
        if not (r.kind == "group" and r.name == name)
    ]
    return refs + store_policies.malformed_referrers(snap, name)


POLICY: Kind[Policy, StoredPolicy] = Kind(
    name="policy",
    model=Policy,
    key=keys.policy,
    parse=store_policies.parse_policy,
    entries=lambda snap: snap.policies,
    with_entry=lambda snap, p: dataclasses.replace(snap, policies={**snap.policies, p.name: p}),
    entry=lambda name, p, revision: StoredPolicy(name, p, revision, p.model_dump(mode="json")),
    view=views.policy,
    check=validate_references,
    referrers=lambda snap, name: [],  # policies are bound by data class, never named
    write=store_policies.write_policy,
    delete=store_policies.delete_policy,
    builtins={},
)

GROUP: Kind[Group, StoredGroup] = Kind(
    name="group",
    model=Group,
    key=keys.group,
    parse=store_policies.parse_group,
    entries=lambda snap: snap.groups,
    with_entry=lambda snap, g: dataclasses.replace(snap, groups={**snap.groups, g.name: g}),
    entry=lambda name, g, revision: StoredGroup(name, g, None, revision, g.model_dump(mode="json")),
    view=views.group,
    check=validate_group,
    referrers=_group_referrers,
    write=store_policies.write_group,
    delete=store_policies.delete_group,
    builtins=BUILTIN_GROUPS,
)


def _refuse_builtin(kind: Kind[D, S], name: str) -> None:
    if name in kind.builtins:
        raise invalid(
            "name",
            f"{kind.name} {name!r} is built in and cannot be changed or deleted; "
            f"define a {kind.name} with another name",
        )


def _warnings(snap: Snapshot) -> list[str]:
    """Data classes that `snap`'s policies leave with no region at all."""
    found = empty_data_classes(snap.all_policies(), snap.valid_groups(), datetime.now(UTC))
    return [w.message for w in found]


async def _impact(request: web.Request, kind: Kind[D, S], entry: S) -> JSONDict:
    """What writing `entry` would do to deployed services, planned as the controller would."""
    before = await read_world(request.app[STORE])
    after = copy.copy(before)
    after.residency = kind.with_entry(before.residency, entry)
    return impact(before, after, datetime.now(UTC), region_ttl=request.app[CONFIG].region_ttl)


async def list_all(request: web.Request, kind: Kind[D, S]) -> web.Response:
    """Every document of the kind (built-in groups first), with the snapshot's revision."""
    await require(request, Role.VIEWER)
    snap = await store_policies.snapshot(request.app[STORE])
    now = datetime.now(UTC)
    items = [views.builtin_group(n, kind.builtins[n], now) for n in sorted(kind.builtins)]
    stored = kind.entries(snap)
    items += [kind.view(stored[n]) for n in sorted(stored)]
    return json_response({"items": items, "revision": snap.revision})


async def get_one(request: web.Request, kind: Kind[D, S]) -> web.Response:
    """One document, with its revision as the ETag (a built-in group has none)."""
    name = path_name(request, kind.name)
    await require(request, Role.VIEWER)
    if name in kind.builtins:
        return json_response(views.builtin_group(name, kind.builtins[name], datetime.now(UTC)))
    entry = await request.app[STORE].get(kind.key(name))
    if entry is None:
        raise not_found(kind.name, name)
    stored = kind.parse(entry)
    return json_response(kind.view(stored), revision=stored.revision)


async def put(request: web.Request, kind: Kind[D, S]) -> web.Response:
    """Create or replace a document; 201 on create, 200 on update, with warnings."""
    name = path_name(request, kind.name)
    await require(request, Role.ADMIN)
    _refuse_builtin(kind, name)
    dry_run = query_flag(request, "dry_run")
    expected = if_match(request)
    data = await read_named(request, name, kind=kind.name)
    try:
        doc = kind.model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc, suggestions=True) from None
    store = request.app[STORE]

    async def attempt(snap: Snapshot) -> web.Response:
        problems = kind.check(doc, snap.valid_groups())
        if problems:
            raise unresolved(problems)
        current = kind.entries(snap).get(name)
        current_revision = current.revision if current else None
        entry = kind.entry(name, doc, current_revision or 0)
        warnings = _warnings(kind.with_entry(snap, entry))
        if dry_run:
            # A stale If-Match fails a dry run as it would fail the write.
            store_policies.expected_revision(current_revision, expected, kind.key(name))
            return json_response(
                {
                    **kind.view(entry),
                    "revision": current_revision,
                    "created": current is None,
                    "dry_run": True,
                    "warnings": warnings,
                    "impact": await _impact(request, kind, entry),
                }
            )
        revision, created = await kind.write(store, doc, snap, if_match=expected)
        return json_response(
            {**kind.view(entry), "revision": revision, "created": created, "warnings": warnings},
            status=201 if created else 200,
            revision=revision,
        )

    return await store_policies.with_snapshot(store, attempt)


async def delete(request: web.Request, kind: Kind[D, S]) -> web.Response:
    """Delete a document nobody refers to; 409 naming the referrers otherwise."""
    name = path_name(request, kind.name)
    await require(request, Role.ADMIN)
    _refuse_builtin(kind, name)
    expected = if_match(request)
    store = request.app[STORE]

    async def attempt(snap: Snapshot) -> int:
        if name not in kind.entries(snap):
            raise not_found(kind.name, name)
        refs = kind.referrers(snap, name)
        if refs:
            raise ApiError(
                409,
                f"{kind.name} {name!r} is still referred to by {', '.join(refs)}; "
                "remove those references first",
                details={"referenced_by": refs},
            )
        return await kind.delete(store, name, snap, if_match=expected)

    revision = await store_policies.with_snapshot(store, attempt)
    return json_response({"name": name, "deleted": True, "revision": revision})
