"""Audited writes: `Store`'s writes with a Change appended to the log in the same txn.

`txn` is `Store.txn` plus a Change; `create`, `replace` and `delete` are the store's
single-key writes (federation.store.txn), audited, with the same answers and errors,
and the change's `before_revision` taken from the revision they compare. Each call
resolves, in the caller's task, who acts (`change.actor`, else `current_actor()`) and
the caller's write fence, then waits for its Store's committer (group commit,
federation.store.audit.committer). Conflict when the log's head kept moving.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from collections.abc import Sequence

from federation.store import txn as single
from federation.store.audit.actor import current_actor
from federation.store.audit.chain import Change
from federation.store.audit.committer import Write, committer
from federation.store.etcd import JSON, Cond, Op, Result, Store
from federation.store.fence import unfence_writes, write_fence


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
    entries when the caller's own conditions fail; CredentialRevoked when the caller's
    write fence fails. Concurrent calls through one Store share txns.
    """
    fence = write_fence()
    context = contextvars.copy_context()
    if fence is not None:
        # The committer compares each writer's fence itself, in the txn of its change.
        context.run(unfence_writes)
    write = Write(
        tuple(conditions),
        tuple(ops),
        dataclasses.replace(change, actor=change.actor or current_actor()),
        tuple(read_on_failure),
        asyncio.get_running_loop().create_future(),
        context,
        fence,
    )
    return await committer(store).submit(write)


async def create(
    store: Store,
    key: str,
    value: JSON | str,
    *,
    change: Change,
    lease: int = 0,
    also: Sequence[Op] = (),
) -> int:
    """`Store.create`, audited (the change's before_revision: 0)."""
    return await single.create(_with(store, change), key, value, lease=lease, also=also)


async def replace(
    store: Store,
    key: str,
    value: JSON | str,
    *,
    change: Change,
    revision: int | None = None,
    also: Sequence[Op] = (),
    conditions: Sequence[Cond] = (),
) -> int:
    """`Store.replace`, audited (the change's before_revision: `revision`)."""
    return await single.replace(
        _with(store, change), key, value, revision=revision, also=also, conditions=conditions
    )


async def delete(
    store: Store,
    key: str,
    *,
    change: Change,
    revision: int | None = None,
    also: Sequence[Op] = (),
) -> int:
    """`Store.delete`, audited (the change's before_revision: `revision`)."""
    return await single.delete(_with(store, change), key, revision=revision, also=also)


def _with(store: Store, change: Change) -> single.Txn:
    """A txn function appending `change` (its before_revision filled in) to the log."""

    async def audited(
        conditions: Sequence[Cond], ops: Sequence[Op], reads: Sequence[str], before: int | None
    ) -> Result:
        return await txn(store, conditions, ops, change.before(before), read_on_failure=reads)

    return audited
