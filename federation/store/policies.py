"""Residency policies and admin-defined groups in etcd (`policies/{name}`, `groups/{name}`).

Reads are robust: a stored value that fails validation is still returned, a policy as
`MalformedPolicy` (so evaluation rejects what it binds: fail closed) and a group with
its error (left out of the mapping evaluation gets, so a policy using it is rejected as
referring to an unknown group).

Writes are serialised through one fence key (`keys.RESIDENCY_FENCE`): every write reads
a `Snapshot` (the fence first, then all policies and groups), validates against it, and
commits in one txn that compares the fence's mod_revision and bumps it. So whatever was
checked against the snapshot (no unknown group, no cycle, nobody refers to a deleted
group) still holds when the write applies. A write that loses the race raises
`FenceMoved`; `with_snapshot` re-reads and runs the check again.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from federation.model.jurisdictions import GROUP_PREFIX
from federation.model.policy import Group, Policy
from federation.residency.evaluate import AnyPolicy, MalformedPolicy
from federation.residency.snapshot import Snapshot, StoredGroup, StoredPolicy
from federation.store import audit, keys
from federation.store.audit import Change
from federation.store.errors import Conflict
from federation.store.etcd import JSON, Cond, Entry, Op, Store
from federation.store.mirror import Mirror

T = TypeVar("T")

WRITE_ATTEMPTS = 5


class PolicyNotFound(LookupError):
    """No stored policy of that name."""


class GroupNotFound(LookupError):
    """No stored (admin-defined) group of that name."""


class FenceMoved(Conflict):
    """Another policy or group write committed after the snapshot was read."""


def _error_text(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


def _declared_classes(value: JSON) -> tuple[str, ...] | None:
    # What a malformed policy binds: its data classes when they are at least readable,
    # else None, which evaluation takes as "binds every service".
    classes = value.get("data_classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    return None


def parse_policy(entry: Entry) -> StoredPolicy:
    """A stored policy; never raises: what does not validate becomes a MalformedPolicy."""
    name = entry.key.removeprefix(keys.POLICIES)
    policy: AnyPolicy
    try:
        parsed = Policy.model_validate(entry.value)
    except ValidationError as exc:
        policy = MalformedPolicy(name, _error_text(exc), _declared_classes(entry.value))
    else:
        if parsed.name == name:
            policy = parsed
        else:
            policy = MalformedPolicy(
                name, f"stored as {name!r} but named {parsed.name!r}", tuple(parsed.data_classes)
            )
    return StoredPolicy(name, policy, entry.revision, entry.value)


def parse_group(entry: Entry) -> StoredGroup:
    """A stored group; never raises: what does not validate keeps its error instead."""
    name = entry.key.removeprefix(keys.GROUPS)
    try:
        group = Group.model_validate(entry.value)
    except ValidationError as exc:
        return StoredGroup(name, None, _error_text(exc), entry.revision, entry.value)
    if group.name != name:
        error = f"stored as {name!r} but named {group.name!r}"
        return StoredGroup(name, None, error, entry.revision, entry.value)
    return StoredGroup(name, group, None, entry.revision, entry.value)


async def policies(store: Store) -> list[AnyPolicy]:
    """Every stored policy, malformed ones included (one Range read; no fence, no
    groups: for checks that only need to know which data classes are named)."""
    entries, _ = await store.scan(keys.POLICIES)
    return [parse_policy(e).policy for e in entries]


async def snapshot(store: Store) -> Snapshot:
    """Read the fence, then every policy and group (three Range reads).

    The reads are not one etcd revision, but a write that commits between them moves the
    fence, so a write based on this snapshot fails and is retried with a fresh one.
    """
    fence = await store.get(keys.RESIDENCY_FENCE)
    policy_entries, revision = await store.scan(keys.POLICIES)
    group_entries, _ = await store.scan(keys.GROUPS)
    return Snapshot(
        policies={p.name: p for p in map(parse_policy, policy_entries)},
        groups={g.name: g for g in map(parse_group, group_entries)},
        fence=fence.revision if fence else 0,
        revision=revision,
    )


# What `policies_of` parsed last, by the policy keys' revisions it was parsed at: the
# API checks every deploy's data classes against the policies, which rarely change.
_parsed: weakref.WeakKeyDictionary[Mirror, tuple[tuple[tuple[str, int], ...], list[AnyPolicy]]] = (
    weakref.WeakKeyDictionary()
)


def policies_of(mirror: Mirror) -> list[AnyPolicy]:
    """Every policy the mirror holds, malformed ones included (no etcd read)."""
    stamp = mirror.revisions(keys.POLICIES)
    cached = _parsed.get(mirror)
    if cached is None or cached[0] != stamp:
        cached = _parsed[mirror] = (stamp, snapshot_of(mirror).all_policies())
    return list(cached[1])


def snapshot_of(mirror: Mirror) -> Snapshot:
    """The snapshot as the mirror holds it (no etcd read; for the controller's passes)."""
    fence = mirror.raw(keys.RESIDENCY_FENCE, "")

    def entries(prefix: str) -> list[Entry]:
        found = []
        for tail in mirror.tails(prefix):
            held = mirror.raw(prefix, tail)
            value = mirror.json(prefix, tail)
            if held is not None and isinstance(value, dict):
                found.append(Entry(prefix + tail, value, held[1], 0, 0))
        return found

    return Snapshot(
        policies={p.name: p for p in map(parse_policy, entries(keys.POLICIES))},
        groups={g.name: g for g in map(parse_group, entries(keys.GROUPS))},
        fence=fence[1] if fence else 0,
        revision=mirror.revision,
    )


async def with_snapshot(store: Store, attempt: Callable[[Snapshot], Awaitable[T]]) -> T:
    """Run `attempt` on a fresh snapshot until it does not raise FenceMoved (a few times)."""
    for _ in range(WRITE_ATTEMPTS - 1):
        try:
            return await attempt(await snapshot(store))
        except FenceMoved:
            continue
    # Last try: let FenceMoved (a Conflict, hence a 409) reach the caller.
    return await attempt(await snapshot(store))


def expected_revision(current: int | None, if_match: int | None, key: str) -> int:
    """The key's revision to compare in the txn; Conflict when If-Match is already stale."""
    have = current or 0
    if if_match is not None and if_match != have:
        raise Conflict(key, if_match, current)
    return have


async def _commit(store: Store, key: str, snap: Snapshot, expected: int, op: Op) -> int:
    # Audited in the same txn; the actor is the caller's (see audit.acting_as).
    kind = "policy" if key.startswith(keys.POLICIES) else "group"
    change = Change(
        f"{kind}.{op.kind}", key, before_revision=expected, details={"value": op.value or {}}
    )
    ok, revision, entries = await audit.txn(
        store,
        [Cond.at_revision(keys.RESIDENCY_FENCE, snap.fence), Cond.at_revision(key, expected)],
        [op, Op.put(keys.RESIDENCY_FENCE, {"last_write": key})],
        change,
        read_on_failure=[keys.RESIDENCY_FENCE],
    )
    if not ok:
        fence = entries[0] if entries else None
        raise FenceMoved(keys.RESIDENCY_FENCE, snap.fence, fence.revision if fence else None)
    return revision


async def write_policy(
    store: Store, policy: Policy, snap: Snapshot, *, if_match: int | None
) -> tuple[int, bool]:
    """Create or replace a policy validated against `snap`; returns (revision, created).

    `if_match` compares the policy's revision (0: it must not exist yet).
    """
    key = keys.policy(policy.name)
    current = snap.policies.get(policy.name)
    expected = expected_revision(current.revision if current else None, if_match, key)
    revision = await _commit(
        store, key, snap, expected, Op.put(key, policy.model_dump(mode="json"))
    )
    return revision, current is None


async def delete_policy(store: Store, name: str, snap: Snapshot, *, if_match: int | None) -> int:
    """Delete a policy (CAS on its revision when `if_match` is given)."""
    key = keys.policy(name)
    current = snap.policies.get(name)
    if current is None:
        raise PolicyNotFound(name)
    expected = expected_revision(current.revision, if_match, key)
    return await _commit(store, key, snap, expected, Op.delete(key))


async def write_group(
    store: Store, group: Group, snap: Snapshot, *, if_match: int | None
) -> tuple[int, bool]:
    """Create or replace an admin-defined group validated against `snap`."""
    key = keys.group(group.name)
    current = snap.groups.get(group.name)
    expected = expected_revision(current.revision if current else None, if_match, key)
    revision = await _commit(store, key, snap, expected, Op.put(key, group.model_dump(mode="json")))
    return revision, current is None


async def delete_group(store: Store, name: str, snap: Snapshot, *, if_match: int | None) -> int:
    """Delete a group that `snap` shows nobody refers to (the caller checks that)."""
    key = keys.group(name)
    current = snap.groups.get(name)
    if current is None:
        raise GroupNotFound(name)
    expected = expected_revision(current.revision, if_match, key)
    return await _commit(store, key, snap, expected, Op.delete(key))


def _mentions(value: Any, ref: str) -> bool:
    if isinstance(value, str):
        return value == ref
    if isinstance(value, Mapping):
        return any(_mentions(v, ref) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, ref) for v in value)
    return False


def malformed_referrers(snap: Snapshot, name: str) -> list[str]:
    """Malformed policies and groups whose stored value mentions `group:NAME` anywhere.

    They cannot be parsed, so we cannot tell where; deleting the group under them would
    turn "malformed" into "malformed and dangling" unnoticed, so they count as referrers.
    """
    ref = GROUP_PREFIX + name
    found = [
        f"policy {p.name} (malformed)"
        for p in snap.policies.values()
        if isinstance(p.policy, MalformedPolicy) and _mentions(p.raw, ref)
    ]
    found += [
        f"group {g.name} (malformed)"
        for g in snap.groups.values()
        if g.group is None and g.name != name and _mentions(g.raw, ref)
    ]
    return sorted(found)
