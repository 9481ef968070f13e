"""Group commit: one Store's audited writes, committed together with their entries.

Audited writes through one Store queue for that Store's committer, which commits
whatever is waiting as ONE txn: every writer's conditions and operations, one entry
per change chained in queue order (seq+1, seq+2, ...), the condition that
`audit-head` is still the head the entries chain onto, and one head put. So an entry
lands if and only if its change does, concurrent writers serialise on the head, and
N of them cost about one etcd round trip, not N.

Writers whose keys overlap (one writes a key another writes or compares) are never
in the same txn: conditions are evaluated before any operation, so merging them would
not be equivalent to running them one after the other; the later one waits for the
next txn. When a merged txn fails on a writer's own condition (not the head), the
writers are committed one by one, so each gets exactly the answer it would have had
alone. Each side of a txn stays within etcd's --max-txn-ops (TXN_LIMIT; a writer too
large to share commits alone) and far below its --max-request-bytes.

The committer remembers the head it last wrote, so the usual txn needs no read of the
head first: it compares the head's exact value (a value compare, unlike a revision,
cannot be fooled by an etcd restored from a snapshot whose revisions run again). When
another process appended meanwhile, the failed txn reads the current head and the
committer chains onto that (comparing its mod_revision), with a jittered backoff so
replicas take turns; Conflict after WRITE_ATTEMPTS such races.

Each writer's actor and write fence (its caller's token) are resolved in the caller's
task before it is queued (federation.store.audit.writes). The committer's task starts
from an empty context, and each txn runs in a copy of its first writer's context with
the fence taken out (so the txn joins the caller's trace but compares fences only as
the committer puts them: each writer's, in the txn carrying its change; a writer
whose fence fails gets CredentialRevoked).

Lifecycle: by default the task exists only while writes wait (started by the first
write, ended when the queue is empty), so nothing outlives the Store or its event
loop. A server starts it for its lifetime (`Committer.start`) and stops it before it
closes the Store (`Committer.stop`: what is queued is committed first).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import random
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

import grpc
import grpc.aio
from pydantic_core import to_json

from federation.store import keys
from federation.store.audit.chain import Change, Head, entry_key, head_of, head_value, make_entry
from federation.store.audit.reads import read_head
from federation.store.errors import Conflict, CredentialRevoked
from federation.store.etcd import Cond, Op, Result, Store
from federation.store.fence import WriteFence, check_fence
from federation.store.txn import TXN_LIMIT

WRITE_ATTEMPTS = 40

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


@dataclass(eq=False)
class Write:
    """One queued audited write and the future its caller awaits."""

    conditions: tuple[Cond, ...]
    ops: tuple[Op, ...]
    change: Change  # its actor resolved
    read_on_failure: tuple[str, ...]
    future: asyncio.Future[Result]
    context: contextvars.Context  # the caller's, unfenced: the txn's span joins its trace
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


def committer(store: Store) -> Committer:
    """The committer of `store`'s audited writes (one per Store, made on first use)."""
    found = _committers.get(store)
    if found is None:
        found = _committers[store] = Committer(store)
    return found


class Committer:
    """Group commit of one Store's audited writes (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        # Weak: the registry maps each Store to its committer, which must not keep it.
        self._store = weakref.ref(store)
        self.pending: deque[Write] = deque()
        self.task: asyncio.Task[None] | None = None
        # Started by `start`: the task waits for writes instead of ending when idle.
        self.resident = False
        self._idle: asyncio.Future[None] | None = None
        # The head to chain onto: None until read; `ours` when it is the head this
        # committer wrote itself, so its exact value is known.
        self.head: Head | None = None
        self.ours = False

    def start(self) -> None:
        """Keep the committer's task ("audit-committer") running until `stop`."""
        self.resident = True
        self._run_task()

    async def stop(self) -> None:
        """Commit what is queued, then end the task. Later writes start it again only
        while they wait. Cancelled, it cancels the task: writers still queued see
        their write cancelled."""
        self.resident = False
        task = self.task
        if task is None or task.done():
            return
        self._wake()
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.cancelled():
            task.result()  # a crash of the committer is its stopper's to see

    async def submit(self, write: Write) -> Result:
        """Queue `write` and wait for its txn's answer."""
        self.pending.append(write)
        self._run_task()
        self._wake()
        # Cancelled while queued: the future is cancelled with it and skipped. Cancelled
        # while its txn is in flight: the write may land, as with any txn.
        return await write.future

    def _run_task(self) -> None:
        loop = asyncio.get_running_loop()
        if self.task is not None and self.task.get_loop() is not loop:
            # A Store used from a new event loop: what the old one left can never run.
            self.pending, self.task, self._idle = deque(), None, None
        store = self._store()
        if store is not None and (self.task is None or self.task.done()):
            # A context of its own: nothing of the request that happened to start it
            # (its fence, its actor, its trace) belongs to the writes of others.
            self.task = loop.create_task(
                self._run(store), name="audit-committer", context=contextvars.Context()
            )

    def _wake(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def _run(self, store: Store) -> None:
        loop = asyncio.get_running_loop()
        batch: list[Write] = []
        try:
            while True:
                while batch := self._take():
                    # Each txn runs in its first writer's context, so a trace that asked
                    # for the write shows its etcd txn.
                    commit = self._settle(store, batch)
                    await loop.create_task(commit, context=batch[0].context)
                if not self.resident:
                    return
                self._idle = loop.create_future()
                await self._idle
        except BaseException:
            # Cancelled with its event loop (or a bug here): no caller may wait for ever.
            for write in [*batch, *self.pending]:
                write.future.cancel()
            self.pending.clear()
            raise

    def _take(self) -> list[Write]:
        """The next txn's writers, in queue order; the rest stay queued, in order."""
        batch: list[Write] = []
        kept: deque[Write] = deque()
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
                    and n_conds + conds < TXN_LIMIT  # + the head's condition
                    and n_ops + ops < TXN_LIMIT  # + the head's put
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
            if not batch[0].mergeable or n_conds >= TXN_LIMIT - 1 or n_ops >= TXN_LIMIT - 2:
                break
        kept.extend(self.pending)
        self.pending = kept
        return batch

    async def _settle(self, store: Store, batch: list[Write]) -> None:
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

    async def _one_by_one(self, store: Store, batch: list[Write]) -> None:
        for write in batch:
            if not write.future.done():
                await self._settle(store, [write])

    async def _commit(self, store: Store, batch: list[Write]) -> None:
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
                conditions, ops, read_on_failure=[*own, keys.AUDIT_HEAD]
            )
            found_head = None if ok else head_of(entries[-1])
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


_committers: weakref.WeakKeyDictionary[Store, Committer] = weakref.WeakKeyDictionary()


def _assemble(
    batch: Sequence[Write], head: Head, ours: bool, now: datetime
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
    # revision, since its stored bytes need not be the ones head_value would give.
    if ours:
        conditions.append(Cond.value_is(keys.AUDIT_HEAD, head_value(head)))
    else:
        conditions.append(Cond.at_revision(keys.AUDIT_HEAD, head.revision))
    ops.append(Op.put_raw(keys.AUDIT_HEAD, head_value(last)))
    return conditions, ops, last
