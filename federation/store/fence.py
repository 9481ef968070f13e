"""Write fences: the credential a task's writes are made for, compared in their own txn.

The API authenticates a request with a token it may take from the mirror, which can
lag a revocation by a few ms. So a request that changes state fences its writes with
its token's key and revision (`fence_writes`): `Store.txn` adds that compare to every
txn of the task, and a txn that fails on it raises CredentialRevoked, nothing written.
The fence lives in a context variable, so it is the current task's (each request is
its own task) and is copied into the tasks it starts; a task that writes for several
callers (the audit committer) starts from a fresh context and compares each caller's
fence itself.

`WriteFence.held` records that one of the task's txns saw the fence hold, so the API
need not read the token again before answering (`check_fence` on a read-back entry
does the same for a request that wrote nothing).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from federation.store.errors import CredentialRevoked
from federation.store.txn import Cond, Entry


@dataclass(eq=False)
class WriteFence:
    """The credential a task's writes are made for: `cond` compares its key."""

    cond: Cond
    # Seen to hold by one of the task's txns (it committed, or read the key back).
    held: bool = False


_FENCE: contextvars.ContextVar[WriteFence | None] = contextvars.ContextVar(
    "write_fence", default=None
)


def fence_writes(key: str, revision: int) -> None:
    """Make every write of the current task (an API request) compare `key` at
    `revision` in its own txn. The API fences a request's writes with its caller's
    token: a write whose token was revoked or changed before it committed does not
    land, and raises CredentialRevoked."""
    _FENCE.set(WriteFence(Cond.at_revision(key, revision)))


def unfence_writes() -> None:
    """Writes of the current task compare nothing more (a request that only reads)."""
    _FENCE.set(None)


def write_fence() -> WriteFence | None:
    """The fence `fence_writes` set for the current task, if any."""
    return _FENCE.get()


def check_fence(fence: WriteFence, entry: Entry | None) -> None:
    """CredentialRevoked unless `entry` (the fence's key, read back) still meets `fence`."""
    if entry is None or entry.revision != fence.cond.revision:
        raise CredentialRevoked(fence.cond.key)
    fence.held = True
