"""API tokens in etcd, stored under the hash of their secret; the secret is never kept."""

from __future__ import annotations

import contextlib

from federation.model.token import TokenRecord
from federation.store import keys
from federation.store.errors import AlreadyExists
from federation.store.etcd import Cond, Op, Store


async def lookup(store: Store, digest: str) -> TokenRecord | None:
    """The token stored under this secret's hash, if any (one linearizable read)."""
    entry = await store.get(keys.token(digest))
    return TokenRecord.model_validate(entry.value) if entry else None


async def put(store: Store, digest: str, record: TokenRecord) -> None:
    """Store a token under its hash."""
    await store.put(keys.token(digest), record.model_dump(mode="json"))


async def bootstrap_admin(store: Store, digest: str, record: TokenRecord) -> bool:
    """Make the first admin token, exactly once across all replicas and restarts.

    Returns False when a first admin token already exists (create-if-absent on
    the bootstrap key, in the same txn as the token).
    """
    ok, _, _ = await store.txn(
        [Cond.absent(keys.BOOTSTRAP)],
        [
            Op.put(keys.BOOTSTRAP, {"token_id": record.id}),
            Op.put(keys.token(digest), record.model_dump(mode="json")),
        ],
    )
    return ok


async def ensure(store: Store, digest: str, record: TokenRecord) -> None:
    """Store a token given from outside (FEDERATION_ADMIN_TOKEN) unless already there."""
    with contextlib.suppress(AlreadyExists):
        await store.create(
            keys.token(digest),
            record.model_dump(mode="json"),
            also=[Op.put(keys.BOOTSTRAP, {"token_id": record.id})],
        )
