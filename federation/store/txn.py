"""The store's vocabulary: what a transaction compares and does, and what it reads back.

Plain data, no I/O: `Cond` and `Op` describe one etcd Txn, `Entry` and `Event` are
what reads and watches return. `create`, `replace` and `delete` are the single-key
writes of the contract (create-if-absent, compare-and-swap) written once over any
txn function, so a plain write (`Store`) and an audited one (`federation.store.audit`)
mean exactly the same thing and fail with the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from federation.store.errors import AlreadyExists, Conflict

JSON = dict[str, Any]

# etcd's --max-txn-ops (128 by default) bounds the compares, the success operations
# and the failure operations of one txn, each on its own; writers that batch stay
# under this, which keeps a margin for what they add (fences, audit entry and head).
TXN_LIMIT = 120


@dataclass(frozen=True, slots=True)
class Entry:
    """One key: its JSON value and the revisions etcd keeps for it."""

    key: str
    value: JSON
    revision: int  # mod_revision
    created: int  # create_revision
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch. `value` is None for a delete."""

    type: Literal["put", "delete"]
    key: str
    value: JSON | None
    revision: int


@dataclass(frozen=True, slots=True)
class Cond:
    """A transaction condition on one key (relative to the prefix)."""

    key: str
    kind: Literal["absent", "exists", "revision", "value"]
    revision: int = 0
    value: str = ""

    @staticmethod
    def absent(key: str) -> Cond:
        """The key does not exist (create_revision == 0)."""
        return Cond(key, "absent")

    @staticmethod
    def exists(key: str) -> Cond:
        """The key exists (create_revision > 0)."""
        return Cond(key, "exists")

    @staticmethod
    def at_revision(key: str, revision: int) -> Cond:
        """The key's mod_revision equals `revision` (0 means: absent)."""
        return Cond(key, "revision", revision=revision)

    @staticmethod
    def value_is(key: str, value: str) -> Cond:
        """The key's raw value equals `value` (used for the leader key)."""
        return Cond(key, "value", value=value)


@dataclass(frozen=True, slots=True)
class Op:
    """A transaction operation: put a JSON value (optionally on a lease) or delete."""

    kind: Literal["put", "delete", "delete_prefix", "put_raw"]
    key: str
    value: JSON | None = None
    raw: str = ""
    lease: int = 0

    @staticmethod
    def put(key: str, value: JSON | str, *, lease: int = 0) -> Op:
        """Put a JSON value; a str is taken as JSON already encoded (e.g. by pydantic's
        `model_dump_json`, several times faster than dumping a dict)."""
        if isinstance(value, str):
            return Op("put_raw", key, raw=value, lease=lease)
        return Op("put", key, value=value, lease=lease)

    @staticmethod
    def put_raw(key: str, raw: str, *, lease: int = 0) -> Op:
        return Op("put_raw", key, raw=raw, lease=lease)

    @staticmethod
    def delete(key: str) -> Op:
        return Op("delete", key)

    @staticmethod
    def delete_prefix(key: str) -> Op:
        return Op("delete_prefix", key)


# What a txn answers: (succeeded, revision, the `read_on_failure` entries if it failed).
Result = tuple[bool, int, list[Entry | None]]

# A txn function: (conditions, operations, keys to read if a condition fails) -> Result.
# `before` is the key's revision the write expects (None: any), for an audit entry.
Txn = Callable[[Sequence[Cond], Sequence[Op], Sequence[str], int | None], Awaitable[Result]]


def encode(value: JSON) -> bytes:
    """A value as stored: compact JSON with sorted keys."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str).encode()


def decode(raw: bytes) -> JSON:
    """A stored value as a JSON object; a raw (non-JSON) value, e.g. the leader key, is
    surfaced as {"raw": ...} rather than failing the read."""
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"raw": raw.decode(errors="replace")}
    return decoded if isinstance(decoded, dict) else {"value": decoded}


async def create(
    txn: Txn, key: str, value: JSON | str, *, lease: int = 0, also: Sequence[Op] = ()
) -> int:
    """Create-if-absent (create_revision == 0), with `also` in the same txn; returns the
    revision written. AlreadyExists when the key is there."""
    ok, revision, entries = await txn(
        [Cond.absent(key)], [Op.put(key, value, lease=lease), *also], [key], 0
    )
    if not ok:
        current = entries[0]
        raise AlreadyExists(key, current.revision if current else None)
    return revision


async def replace(
    txn: Txn,
    key: str,
    value: JSON | str,
    *,
    revision: int | None = None,
    also: Sequence[Op] = (),
    conditions: Sequence[Cond] = (),
) -> int:
    """Write `key`; with `revision`, only if its mod_revision still equals it (CAS).
    Conflict when a condition fails."""
    conds = [*conditions]
    if revision is not None:
        conds.append(Cond.at_revision(key, revision))
    ok, written, entries = await txn(conds, [Op.put(key, value), *also], [key], revision)
    if not ok:
        current = entries[0]
        raise Conflict(key, revision, current.revision if current else None)
    return written


async def delete(
    txn: Txn, key: str, *, revision: int | None = None, also: Sequence[Op] = ()
) -> int:
    """Delete `key` if it exists (and, with `revision`, is unchanged). Conflict if not."""
    cond = Cond.at_revision(key, revision) if revision is not None else Cond.exists(key)
    ok, written, entries = await txn([cond], [Op.delete(key), *also], [key], revision)
    if not ok:
        current = entries[0]
        raise Conflict(key, revision, current.revision if current else None)
    return written
