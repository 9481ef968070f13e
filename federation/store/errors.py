"""Store errors: small and meaningful, so the API can map each to one status code."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises."""


class StoreUnavailable(StoreError):
    """etcd did not answer within the deadline; the write may or may not have applied."""


class NoSpace(StoreUnavailable):
    """etcd refused a write: its database reached its quota and it raised the NOSPACE
    alarm. Nothing was written, and no write will be until the history is compacted,
    the members defragmented and the alarm disarmed (docs/operations.md). Reads,
    watches and lease refreshes still work. A `StoreUnavailable`, so every loop that
    waits out an etcd outage waits this out too."""

    def __init__(self, what: str) -> None:
        super().__init__(f"etcd {what}: database space exceeded (NOSPACE alarm)")


class NotPermitted(StoreError):
    """etcd refused the call to this client's etcd user (defragmentation and
    snapshots are for etcd's root role alone once etcd auth is on)."""


class Conflict(StoreError):
    """A compare-and-swap lost: the key changed (or vanished) since `expected` was read."""

    def __init__(self, key: str, expected: int | None, actual: int | None) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(f"{key}: expected revision {expected}, found {actual}")


class AlreadyExists(Conflict):
    """A create-if-absent found the key already there."""

    def __init__(self, key: str, actual: int | None) -> None:
        super().__init__(key, None, actual)


class Compacted(StoreError):
    """A watch asked for history that etcd has compacted away; re-list and watch again."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted up to {compact_revision}")


class CredentialRevoked(StoreError):
    """The token a write was made for was revoked (or changed) before the write
    committed (see `fence_writes`): nothing was written."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key}: the credential this write was made for is gone")
