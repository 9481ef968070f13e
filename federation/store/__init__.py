"""The store: every read and write of federation state, and the only importer of etcd3aio.

Contract (what callers may rely on; each method's docstring names its etcd primitive):

- Keys are relative to a configurable prefix (default ``/federation/``); callers never
  see or build absolute etcd keys. Every name inside a key has been validated as a
  DNS-1123 label by ``federation.model`` before it gets here.
- Values are JSON objects. ``Entry.revision`` is the key's etcd ``mod_revision``; it
  is the ``revision`` and ``ETag`` the API shows, and what ``If-Match`` compares.
- ``create`` is create-if-absent (txn on ``create_revision == 0``); ``replace`` and
  ``delete`` with a revision are compare-and-swap on ``mod_revision``; ``txn`` applies
  several puts/deletes atomically under several conditions, in one etcd revision.
- ``scan`` returns the entries and the store revision they were read at, so a watch
  from ``revision + 1`` misses nothing. ``watch`` raises ``Compacted`` when that
  revision is gone: the caller re-lists.
- ``fence_writes(key, revision)`` makes every write of the current task compare that
  key (the API's caller's token) in its own txn; ``CredentialRevoked`` when it moved.
- ``StoreUnavailable`` means etcd did not answer within the operation's deadline
  (no quorum, network, process down); the operation may or may not have applied.
  Every call retries transient errors with backoff (tenacity) until that deadline.
  The API answers 503 for it; loops log it and try again.
"""

from federation.store.errors import (
    AlreadyExists,
    Compacted,
    Conflict,
    CredentialRevoked,
    StoreError,
    StoreUnavailable,
)
from federation.store.etcd import (
    Cond,
    Entry,
    Event,
    Op,
    Store,
    fence_writes,
    unfence_writes,
    write_fence,
)

__all__ = [
    "AlreadyExists",
    "Compacted",
    "Cond",
    "Conflict",
    "CredentialRevoked",
    "Entry",
    "Event",
    "Op",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "fence_writes",
    "unfence_writes",
    "write_fence",
]
