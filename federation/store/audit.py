"""The audit log: who changed what, appended in the same etcd transaction as the change.

Layout (docs/keys.md): `audit/{seq:020d}` -> AuditEntry, and `audit-head` -> `{"seq",
"hash"}` of the last entry. An audited write is one txn holding the change's own
conditions and operations plus:

- the condition that `audit-head` is still the head the writer chained onto, so
  concurrent audited writers serialise on the head (the loser re-reads it and tries
  again);
- the puts of the next entry and of the new head.

So an entry lands if and only if its change does. Each entry carries the SHA-256 of
its own canonical JSON, which includes the previous entry's hash: editing, removing or
reordering an entry breaks the chain from that entry on, and `verify` names it. The
entry's "after" revision is its own mod_revision (etcd gives the whole txn one
revision), so it is not part of the hash; `verify` also checks that no entry was
rewritten after it was written (mod_revision == create_revision).

Group commit. Audited writes through one Store queue for that Store's committer, which
commits whatever is waiting as ONE txn: every writer's conditions and operations, one
entry per change chained in queue order (seq+1, seq+2, ...) and one head put. So N
concurrent writers cost about one etcd round trip, not N. Writers whose keys overlap
(one writes a key another writes or compares) are never in the same txn: conditions
are evaluated before any operation, so merging them would not be equivalent to running
them one after the other; the later one waits for the next txn. When a merged txn fails
on a writer's own condition (not the head), the writers are committed one by one, so
each gets exactly the answer it would have had alone. Each side of a txn stays within
etcd's --max-txn-ops (a writer too large to share commits alone).

The committer remembers the head it last wrote, so the usual txn needs no read of the
head first: it compares the head's exact value (a value compare, unlike a revision,
cannot be fooled by an etcd restored from a snapshot whose revisions run again). When
another process appended meanwhile, the failed txn reads the current head and the
committer chains onto that (comparing its mod_revision), with a jittered backoff so
replicas take turns; Conflict after WRITE_ATTEMPTS such races.

The actor of a change is named explicitly by the caller, or else is the one the API
recorded for the current request with `acting_as` (a context variable: each request
is its own asyncio task); it is resolved in the caller's task, before queueing. So is
the caller's write fence (`fence_writes`, its token): each writer's fence is compared
in the txn that carries its change, and a writer whose fence fails gets
CredentialRevoked.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import hashlib
import json
import random
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import grpc
import grpc.aio
from pydantic import BaseModel, ConfigDict
from pydantic_core import to_json

from federation.store import keys
from federation.store.errors import Conflict, CredentialRevoked
from federation.store.etcd import (
    JSON,
    Cond,
    Entry,
    Op,
    Store,
    WriteFence,
    check_fence,
    write_fence,
)

GENESIS = "0" * 64
WRITE_ATTEMPTS = 40

# etcd's --max-txn-ops (128) bounds compares, success ops and failure ops separately;
# keep a margin, as the controller does.
_TXN_LIMIT = 120
# A merged txn stays far below etcd's --max-request-bytes (1.5 MiB by default); one
# writer alone may still send whatever it would have sent without group commit.
_BATCH_BYTES = 512 * 1024
# etcd rejected the txn as a whole, before applying anything (lease not found, too
# large, duplicate key...): one writer's operations may have spoilt a merged txn.
_REJECTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

Result = tuple[bool, int, list[Entry | None]]

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


def make_entry(head: Head, change: Change, now: datetime) -> tuple[str, Head]:
    """The next entry after `head` as stored (JSON, hash included), and the new head.

    The canonical JSON is written once: its keys split in two sorted runs around
    `hash` (action..details, then prev..seq), so the stored text is the canonical
    text with the hash put between them, and `digest` of what is read back agrees."""
    dumps = functools.partial(
        json.dumps, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    first = dumps(
        {
            "action": change.action,
            "actor": change.actor or current_actor(),
            "at": now.isoformat(),
            "before_revision": change.before_revision,
            "details": dict(change.details),
        }
    )
    second = dumps({"prev": head.hash, "resource": change.resource, "seq": head.seq + 1})
    canonical = first[:-1] + "," + second[1:]
    hashed = hashlib.sha256(canonical.encode()).hexdigest()
    return f'{first[:-1]},"hash":"{hashed}",{second[1:]}', Head(head.seq + 1, hashed)


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
) -> Result:
    """`Store.txn` with `change` appended to the log in the same transaction.

    Returns what `Store.txn` would: (ok, revision, entries), the `read_on_failure`
    entries when the caller's own conditions fail. Concurrent calls through one Store
    share txns (group commit, see the module docstring). Conflict when the head kept
    moving for WRITE_ATTEMPTS tries.
    """
    loop = asyncio.get_running_loop()
    write = _Write(
        tuple(conditions),
        tuple(ops),
        # The committer runs in its own task: the actor is this task's.
        dataclasses.replace(change, actor=change.actor or current_actor()),
        tuple(read_on_failure),
        loop.create_future(),
        contextvars.copy_context(),
        write_fence(),  # the caller's: the committer's txn is for several callers
    )
    committer = _committers.get(store)
    if committer is None:
        committer = _committers[store] = _Committer()
    return await committer.submit(store, write)


@dataclass(eq=False)
class _Write:
    """One queued audited write and the future its caller awaits."""

    conditions: tuple[Cond, ...]
    ops: tuple[Op, ...]
    change: Change
    read_on_failure: tuple[str, ...]
    future: asyncio.Future[Result]
    context: contextvars.Context  # the caller's: the txn's span goes under its trace
    fence: WriteFence | None = None  # the caller's token, compared in the txn

    @cached_property
    def mergeable(self) -> bool:
        # A prefix delete's keys are unknown here, so it cannot be checked for overlap.
        return all(op.kind != "delete_prefix" for op in self.ops)

    @cached_property
    def writes(self) -> frozenset[str]:
        return frozenset(op.key for op in self.ops)

    @cached_property
    def reads(self) -> frozenset[str]:
        return frozenset(cond.key for cond in self.compares)

    @cached_property
    def compares(self) -> tuple[Cond, ...]:
        """Its conditions, the fence included."""
        return self.conditions if self.fence is None else (*self.conditions, self.fence.cond)

    @cached_property
    def size(self) -> int:
        """Roughly the bytes this write adds to a txn request, entry included."""
        values = [op.value for op in self.ops if op.value is not None]
        values.append(dict(self.change.details))
        encoded = to_json(values, fallback=str)  # an estimate: need not be canonical
        return len(encoded) + sum(len(op.key) + len(op.raw) + 32 for op in self.ops) + 512

    def resolve(self, result: Result) -> None:
        if not self.future.done():  # done: the caller was cancelled
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _Committer:
    """Group commit of one Store's audited writes: a task that exists only while
    writes wait, so nothing outlives the Store or its event loop."""

    def __init__(self) -> None:
        self.pending: deque[_Write] = deque()
        self.task: asyncio.Task[None] | None = None
        # The head to chain onto: None until read; `ours` when it is the head this
        # committer wrote itself, so its exact value is known.
        self.head: Head | None = None
        self.ours = False

    async def submit(self, store: Store, write: _Write) -> Result:
        loop = asyncio.get_running_loop()
        if self.task is not None and self.task.get_loop() is not loop:
            # A Store used from a new event loop: what the old one left can never run.
            self.pending, self.task = deque(), None
        self.pending.append(write)
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._drain(store), name="audit-committer")
        # Cancelled while queued: the future is cancelled with it and skipped. Cancelled
        # while its txn is in flight: the write may land, as with any txn.
        return await write.future

    async def _drain(self, store: Store) -> None:
        batch: list[_Write] = []
        try:
            while batch := self._take():
                # Each txn runs in its first writer's context, so a trace that asked
                # for the write shows its etcd txn.
                commit = self._settle(store, batch)
                await asyncio.get_running_loop().create_task(commit, context=batch[0].context)
        except BaseException:
            # Cancelled with its event loop (or a bug here): no caller may wait for ever.
            for write in [*batch, *self.pending]:
                write.future.cancel()
            self.pending.clear()
            raise

    def _take(self) -> list[_Write]:
        """The next txn's writers, in queue order; the rest stay queued, in order."""
        batch: list[_Write] = []
        kept: deque[_Write] = deque()
        n_conds = n_ops = 0
        size: int | None = None  # estimated only once a second writer could join
        written: set[str] = set()
        read: set[str] = set()
        while self.pending:
            write = self.pending.popleft()
            if write.future.done():
                continue  # cancelled while queued
            conds, ops = len(write.compares), len(write.ops) + 1  # + its entry
            joins = not batch
            if batch:
                joins = (
                    batch[0].mergeable
                    and write.mergeable
                    and n_conds + conds < _TXN_LIMIT  # + the head's condition
                    and n_ops + ops < _TXN_LIMIT  # + the head's put
                    and write.writes.isdisjoint(written)
                    and write.writes.isdisjoint(read)
                    and write.reads.isdisjoint(written)
                )
                if joins:
                    size = (batch[0].size if size is None else size) + write.size
                    joins = size <= _BATCH_BYTES
                    if not joins:
                        size -= write.size
            if joins:
                batch.append(write)
                n_conds, n_ops = n_conds + conds, n_ops + ops
            else:
                kept.append(write)
                if not write.mergeable:
                    break  # everything after a prefix delete waits for it
            # Deferred writes' keys count too, so writes of one key keep their order.
            written |= write.writes
            read |= write.reads
            if not batch[0].mergeable or n_conds >= _TXN_LIMIT - 1 or n_ops >= _TXN_LIMIT - 2:
                break
        kept.extend(self.pending)
        self.pending = kept
        return batch

    async def _settle(self, store: Store, batch: list[_Write]) -> None:
        """Commit `batch` and answer every writer in it, whatever happens."""
        try:
            await self._commit(store, batch)
        except grpc.aio.AioRpcError as exc:
            if len(batch) == 1 or exc.code() not in _REJECTED:
                for write in batch:
                    write.fail(exc)
                return
            # Nothing was applied: let each writer meet etcd's answer to its own txn.
            await self._one_by_one(store, batch)
        except Exception as exc:  # StoreUnavailable (it may have applied), Conflict...
            for write in batch:
                write.fail(exc)

    async def _one_by_one(self, store: Store, batch: list[_Write]) -> None:
        for write in batch:
            if not write.future.done():
                await self._settle(store, [write])

    async def _commit(self, store: Store, batch: list[_Write]) -> None:
        if self.head is None:
            self.head, self.ours = await read_head(store), False
        for attempt in range(WRITE_ATTEMPTS):
            head, ours = self.head, self.ours
            conditions, ops, last = _assemble(batch, head, ours, datetime.now(UTC))
            # The callers' keys are read only for a lone writer: a merged txn that fails
            # on a caller's condition is redone one by one, with each caller's reads.
            lone = batch[0] if len(batch) == 1 else None
            own = [*lone.read_on_failure] if lone is not None else []
            if lone is not None and lone.fence is not None:
                own.append(lone.fence.cond.key)
            ok, revision, entries = await store.txn(
                conditions, ops, read_on_failure=[*own, keys.AUDIT_HEAD], fenced=False
            )
            found_head = None if ok else _head(entries[-1])
            if found_head is not None and (found_head.seq, found_head.hash) == (
                last.seq,
                last.hash,
            ):
                # The head is the one this txn writes: an attempt etcd did not answer
                # in time landed after all, and the retry found its own work.
                ok, revision = True, found_head.revision
                store.last_write = max(store.last_write, revision)
            if ok:
                # One revision for the whole txn: it is the head's new mod_revision.
                self.head, self.ours = dataclasses.replace(last, revision=revision), True
                for write in batch:
                    if write.fence is not None:
                        write.fence.held = True
                    write.resolve((True, revision, []))
                return
            assert found_head is not None
            self.head, self.ours = found_head, False
            if self.head == head:
                # The head held, so a caller's own condition failed.
                if lone is not None:
                    found = entries[:-1]
                    if lone.fence is not None:
                        try:
                            check_fence(lone.fence, found.pop())
                        except CredentialRevoked as exc:
                            lone.fail(exc)
                            return
                    lone.resolve((False, revision, found))
                else:
                    await self._one_by_one(store, batch)
                return
            # Another replica appended: back off a little, with jitter, so replicas take turns.
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        for write in batch:
            write.fail(Conflict(keys.AUDIT_HEAD, self.head.revision, None))


_committers: weakref.WeakKeyDictionary[Store, _Committer] = weakref.WeakKeyDictionary()


def _head_value(head: Head) -> str:
    return json.dumps({"hash": head.hash, "seq": head.seq}, sort_keys=True, separators=(",", ":"))


def _assemble(
    batch: Sequence[_Write], head: Head, ours: bool, now: datetime
) -> tuple[list[Cond], list[Op], Head]:
    """One txn for `batch` after `head`: its conditions, its operations, the new head."""
    # Writes of one caller share its fence: compared once.
    conditions = list(dict.fromkeys(cond for write in batch for cond in write.compares))
    ops = [op for write in batch for op in write.ops]
    last = head
    for write in batch:
        entry, last = make_entry(last, write.change, now)
        ops.append(Op.put_raw(entry_key(last.seq), entry))
    # The value this committer wrote is exact; a head read from etcd is compared by
    # revision, since its stored bytes need not be the ones _head_value would give.
    if ours:
        conditions.append(Cond.value_is(keys.AUDIT_HEAD, _head_value(head)))
    else:
        conditions.append(Cond.at_revision(keys.AUDIT_HEAD, head.revision))
    ops.append(Op.put_raw(keys.AUDIT_HEAD, _head_value(last)))
    return conditions, ops, last


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
