"""The audit log: who changed what, appended in the same etcd transaction as the change.

Layout (docs/keys.md): `audit/{seq:020d}` -> AuditEntry, and `audit-head` -> `{"seq",
"hash"}` of the last entry. An audited write is one txn holding the change's own
conditions and operations plus:

- the condition that `audit-head`'s mod_revision is still the one read, so concurrent
  audited writers serialise on the head (the loser re-reads it and tries again);
- the puts of the next entry and of the new head.

So an entry lands if and only if its change does. Each entry carries the SHA-256 of
its own canonical JSON, which includes the previous entry's hash: editing, removing or
reordering an entry breaks the chain from that entry on, and `verify` names it. The
entry's "after" revision is its own mod_revision (etcd gives the whole txn one
revision), so it is not part of the hash; `verify` also checks that no entry was
rewritten after it was written (mod_revision == create_revision).

The actor of a change is named explicitly by the caller, or else is the one the API
recorded for the current request with `acting_as` (a context variable: each request
is its own asyncio task).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import random
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from federation.store import keys
from federation.store.errors import Conflict
from federation.store.etcd import JSON, Cond, Entry, Op, Store

GENESIS = "0" * 64
WRITE_ATTEMPTS = 40

# Audited writes of one process take turns (they would only race on the head); other
# replicas are raced optimistically, with a jittered backoff.
_locks: weakref.WeakKeyDictionary[Store, asyncio.Lock] = weakref.WeakKeyDictionary()

_ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("audit_actor", default="system")


def acting_as(actor: str) -> None:
    """Record who acts in the current task (the API does this once it has authenticated)."""
    _ACTOR.set(actor)


def current_actor() -> str:
    """Who acts in the current task: what `acting_as` set, else "system"."""
    return _ACTOR.get()


@dataclass(frozen=True)
class Change:
    """What an audited write does: filled in by the caller, chained by `txn`."""

    action: str  # e.g. "policy.put", "service.delete", "token.revoke"
    resource: str  # e.g. "policies/eu-patient-data"
    actor: str | None = None  # None: current_actor()
    before_revision: int | None = None  # the resource's mod_revision before (0: absent)
    details: Mapping[str, Any] = field(default_factory=dict)

    def before(self, revision: int | None) -> Change:
        """This change with `before_revision` set, unless the caller already set it."""
        if self.before_revision is not None or revision is None:
            return self
        return Change(self.action, self.resource, self.actor, revision, self.details)


class AuditEntry(BaseModel):
    """One entry as stored."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    at: datetime
    actor: str
    action: str
    resource: str
    before_revision: int | None = None
    details: dict[str, Any] = {}
    prev: str
    hash: str


@dataclass(frozen=True)
class Head:
    """The last entry's sequence number and hash, and the head key's mod_revision."""

    seq: int = 0
    hash: str = GENESIS
    revision: int = 0


def entry_key(seq: int) -> str:
    return f"{keys.AUDIT}{seq:020d}"


def digest(value: Mapping[str, Any]) -> str:
    """SHA-256 of an entry's canonical JSON, its own `hash` field left out."""
    body = {k: v for k, v in value.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def make_entry(head: Head, change: Change, now: datetime) -> JSON:
    """The next entry after `head`, as stored (JSON), hash included."""
    entry: JSON = {
        "seq": head.seq + 1,
        "at": now.isoformat(),
        "actor": change.actor or current_actor(),
        "action": change.action,
        "resource": change.resource,
        "before_revision": change.before_revision,
        "details": json.loads(json.dumps(dict(change.details), default=str)),
        "prev": head.hash,
    }
    entry["hash"] = digest(entry)
    return entry


def chain(head: Head, change: Change, now: datetime) -> tuple[Cond, list[Op]]:
    """What to add to a txn to append `change` after `head`: one condition, two puts."""
    entry = make_entry(head, change, now)
    return Cond.at_revision(keys.AUDIT_HEAD, head.revision), [
        Op.put(entry_key(entry["seq"]), entry),
        Op.put(keys.AUDIT_HEAD, {"seq": entry["seq"], "hash": entry["hash"]}),
    ]


def _head(entry: Entry | None) -> Head:
    if entry is None:
        return Head()
    return Head(int(entry.value.get("seq", 0)), str(entry.value.get("hash", "")), entry.revision)


async def read_head(store: Store) -> Head:
    """The current head (Range on `audit-head`)."""
    return _head(await store.get(keys.AUDIT_HEAD))


async def txn(
    store: Store,
    conditions: Sequence[Cond],
    ops: Sequence[Op],
    change: Change,
    *,
    read_on_failure: Sequence[str] = (),
) -> tuple[bool, int, list[Entry | None]]:
    """`Store.txn` with `change` appended to the log in the same transaction.

    Audited writes through one Store take turns (a lock). When only the audit head
    moved (another replica's audited write won), take the new head and try again; when
    the caller's own conditions fail, return that failure as `Store.txn` would.
    Conflict on the head after WRITE_ATTEMPTS tries.
    """
    lock = _locks.setdefault(store, asyncio.Lock())
    async with lock:
        head = await read_head(store)
        for attempt in range(WRITE_ATTEMPTS):
            cond, more = chain(head, change, datetime.now(UTC))
            ok, revision, entries = await store.txn(
                [*conditions, cond],
                [*ops, *more],
                read_on_failure=[*read_on_failure, keys.AUDIT_HEAD],
            )
            if ok:
                return ok, revision, entries
            now_head = _head(entries[-1])
            if now_head.revision == head.revision:
                return ok, revision, entries[:-1]
            head = now_head
            # Another replica won: back off a little, with jitter, so replicas take turns.
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    raise Conflict(keys.AUDIT_HEAD, head.revision, None)


def view(entry: Entry) -> JSON:
    """An entry as the API shows it: as stored, plus the revision the change made."""
    return {**entry.value, "after_revision": entry.revision}


async def since(store: Store, seq: int, *, limit: int = 1000) -> tuple[list[JSON], int]:
    """Entries with a sequence number above `seq` (at most `limit`), and the read's revision."""
    entries, revision = await store.scan(keys.AUDIT)
    found = [view(e) for e in entries if int(e.value.get("seq", 0)) > seq]
    return found[:limit], revision


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify`: ok, how many entries, the first that fails and why."""

    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str | None = None
    head: str = GENESIS

    def as_json(self) -> JSON:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad": self.first_bad,
            "reason": self.reason,
            "head": self.head,
        }


def _problem(entry: Entry, expected: int, prev: str) -> str | None:
    value = entry.value
    if entry.key != entry_key(expected):
        return f"entry {expected} is missing (the next key is {entry.key})"
    if value.get("seq") != expected:
        return f"entry {expected} says it is entry {value.get('seq')}"
    if value.get("hash") != digest(value):
        return f"entry {expected}: its content does not match its hash"
    if value.get("prev") != prev:
        return f"entry {expected}: does not chain to the entry before it"
    if entry.revision != entry.created:
        return f"entry {expected}: was rewritten after it was written"
    return None


def check(entries: Sequence[Entry], head: Entry | None) -> Verification:
    """Walk the chain from the first entry; stop at the first one that does not verify."""
    prev = GENESIS
    for expected, entry in enumerate(entries, start=1):
        problem = _problem(entry, expected, prev)
        if problem is not None:
            return Verification(False, len(entries), expected, problem, prev)
        prev = str(entry.value["hash"])
    last = len(entries)
    if head is None:
        if last:
            return Verification(False, last, last, "the audit head is missing", prev)
        return Verification(True, 0, head=prev)
    head_seq = head.value.get("seq")
    if head_seq != last or head.value.get("hash") != prev:
        reason = f"the head names entry {head_seq} but the log ends at entry {last}"
        return Verification(False, last, last + 1 if head_seq != last else last, reason, prev)
    return Verification(True, last, head=prev)


async def verify(store: Store) -> Verification:
    """Check the chain up to the head. The head is read first: entries appended after
    that read are past it and left for the next verification."""
    head = await store.get(keys.AUDIT_HEAD)
    entries, _ = await store.scan(keys.AUDIT)
    if head is not None:
        last_key = entry_key(int(head.value.get("seq", 0)))
        entries = [e for e in entries if e.key <= last_key]
    return check(entries, head)
