"""The store: every read and write of federation state, and the only importer of etcd3aio.

Contract (what callers may rely on; each method's docstring names its etcd primitive):

- Keys are relative to a configurable prefix (default ``/federation/``); callers never
  see or build absolute etcd keys. Every name inside a key has been validated as a
  DNS-1123 label by ``federation.model`` before it gets here.
- Values are JSON objects. ``Entry.revision`` is the key's etcd ``mod_revision``; it
  is the ``revision`` and ``ETag`` the API shows, and what ``If-Match`` compares.
- ``create`` is create-if-absent (txn on ``create_revision == 0``); ``replace`` and
  ``delete`` with a revision are compare-and-swap on ``mod_revision``; ``txn`` applies
  several puts/deletes atomically under several conditions, in one etcd revision, with
  at most ``TXN_LIMIT`` compares and as many operations.
- An audited write (``federation.store.audit``: ``txn``, ``create``, ``replace``,
  ``delete``) is one of those with its audit entry and the new audit head in the same
  txn: the entry lands if and only if the change does. Concurrent audited writes of
  one process may share a txn (group commit), each still getting its own answer.
- ``scan`` returns the entries and the store revision they were read at, so a watch
  from ``revision + 1`` misses nothing. ``watch`` raises ``Compacted`` when that
  revision is gone: the caller re-lists.
- ``fence_writes(key, revision)`` (``federation.store.fence``) makes every write of the
  current task compare that key (the API's caller's token) in its own txn, audited or
  not; ``CredentialRevoked`` when it moved, and nothing was written.
- ``StoreUnavailable`` means etcd did not answer within the operation's deadline
  (no quorum, network, process down); the operation may or may not have applied.
  Every call retries transient errors with backoff (``federation.store.retry``) until
  that deadline. The API answers 503 for it; loops log it and try again.
- ``NoSpace`` (a ``StoreUnavailable``) means etcd refused a write because its NOSPACE
  alarm is raised: nothing was written, nothing is retried. ``Store.alarms`` holds the
  alarms last seen; ``maintenance`` reads, defragments and disarms them, and the
  leader's ``compaction`` keeps etcd's history to a window.

Modules: ``etcd`` (the ``Store`` driver), ``txn`` (its vocabulary: ``Cond``, ``Op``,
``Entry``), ``wire`` (the one adapter to etcd3aio's private API), ``retry``,
``fence``, ``audit``, then one module per resource (``regions``, ``services``...),
the ``mirror``, the ``election``, ``maintenance`` and ``compaction``.
"""

from federation.store.errors import (
    AlreadyExists,
    Compacted,
    Conflict,
    CredentialRevoked,
    NoSpace,
    StoreError,
    StoreUnavailable,
)
from federation.store.etcd import Store
from federation.store.fence import (
    WriteFence,
    check_fence,
    fence_writes,
    unfence_writes,
    write_fence,
)
from federation.store.txn import TXN_LIMIT, Cond, Entry, Event, Op

__all__ = [
    "TXN_LIMIT",
    "AlreadyExists",
    "Compacted",
    "Cond",
    "Conflict",
    "CredentialRevoked",
    "Entry",
    "Event",
    "NoSpace",
    "Op",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WriteFence",
    "check_fence",
    "fence_writes",
    "unfence_writes",
    "write_fence",
]
