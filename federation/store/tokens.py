"""API tokens in etcd, stored under the hash of their secret; the secret is never kept."""

from __future__ import annotations

import weakref
from datetime import UTC, datetime

from pydantic import ValidationError

from federation.model.token import Role, TokenRecord
from federation.store import audit, keys
from federation.store.audit import Change
from federation.store.errors import Conflict
from federation.store.etcd import Cond, Entry, Op, Store
from federation.store.mirror import Mirror

# The id of the admin token a server is given in FEDERATION_ADMIN_TOKEN (`ensure_env_admin`).
ENV_ADMIN_ID = "tok-admin-env"
ENV_ADMIN_REVOKED = "FEDERATION_ADMIN_TOKEN was revoked: not stored again"
_ENSURE_ATTEMPTS = 10


class TokenNotFound(LookupError):
    """No token with that id."""


class LastAdminToken(Exception):
    """Revoking this token would leave no admin token at all."""


async def lookup(
    store: Store, digest: str, mirror: Mirror | None = None
) -> tuple[TokenRecord, int] | None:
    """The token stored under this secret's hash, if any, with its revision.

    From the server's `mirror` when it has the token (after a sync, so a revocation
    through this server is seen at once; one through another server within the
    watch's delay, a few ms); else one linearizable read, shared by concurrent
    lookups of the same token (a token made a moment ago through another server).
    Writes are not left to that delay: the API fences each request's writes with the
    token's revision (`fence_writes`), so none lands once the token is revoked."""
    if mirror is not None:
        await mirror.sync()
        found = mirror.get(keys.TOKENS, digest, TokenRecord)
        if found is not None:
            return found
    entry = await store.get_shared(keys.token(digest))
    parsed = _parsed.setdefault(store, {})
    if entry is None:
        parsed.pop(digest, None)
        return None
    # Parse each stored version of a token once.
    known = parsed.get(digest)
    if known is not None and known[0] == entry.revision:
        return known[1], entry.revision
    record = TokenRecord.model_validate(entry.value)
    if len(parsed) >= _PARSED_MAX:
        parsed.pop(next(iter(parsed)))
    parsed[digest] = (entry.revision, record)
    return record, entry.revision


# Per store: digest -> (revision, record) of tokens read from etcd lately. Only a read
# that found that very revision answers from here.
_parsed: weakref.WeakKeyDictionary[Store, dict[str, tuple[int, TokenRecord]]] = (
    weakref.WeakKeyDictionary()
)
_PARSED_MAX = 1024


async def put(store: Store, digest: str, record: TokenRecord) -> None:
    """Store a new token under its hash (create-if-absent), audited."""
    await audit.create(
        store,
        keys.token(digest),
        record.model_dump(mode="json"),
        change=Change(
            "token.create",
            f"tokens/{record.id}",
            details={"role": record.role.value, "region": record.region},
        ),
    )


async def list_all(store: Store) -> tuple[list[TokenRecord], int]:
    """Every token record (never a secret; the hashes stay in the keys), oldest first."""
    entries, revision = await store.scan(keys.TOKENS)
    found = [r for r in map(_parse, entries) if r is not None]
    found.sort(key=lambda r: (r.created_at, r.id))
    return found, revision


def _parse(entry: Entry) -> TokenRecord | None:
    try:
        return TokenRecord.model_validate(entry.value)
    except ValidationError:
        return None


async def revoke(store: Store, token_id: str) -> TokenRecord:
    """Delete the token with this id (CAS on its key), audited. Effective at once on
    every replica: reads look their token up in etcd, and writes compare it in
    their own txn (`fence_writes`)."""
    entries, _ = await store.scan(keys.TOKENS)
    parsed = [(e, _parse(e)) for e in entries]
    match = [(e, r) for e, r in parsed if r is not None and r.id == token_id]
    if not match:
        raise TokenNotFound(token_id)
    entry, record = match[0]
    conditions = [Cond.at_revision(entry.key, entry.revision)]
    ops = [Op.delete(entry.key)]
    if record.id == ENV_ADMIN_ID:
        # Remembered, so the next start with the same FEDERATION_ADMIN_TOKEN does not
        # store it again (`ensure_env_admin`).
        digest = entry.key.removeprefix(keys.TOKENS)
        revoked = {"revoked_at": datetime.now(UTC).isoformat()}
        ops.append(Op.put(keys.revoked_env_token(digest), revoked))
    if record.role is Role.ADMIN:
        admins = [e for e, r in parsed if r is not None and r.role is Role.ADMIN]
        if len(admins) <= 1:
            raise LastAdminToken(token_id)
        # Two revocations at once must not both see "another admin is left".
        conditions += [Cond.at_revision(e.key, e.revision) for e in admins]
    ok, _, _ = await audit.txn(
        store,
        conditions,
        ops,
        Change(
            "token.revoke",
            f"tokens/{record.id}",
            before_revision=entry.revision,
            details={"role": record.role.value, "region": record.region},
        ),
    )
    if not ok:
        raise Conflict(f"tokens/{record.id}", entry.revision, None)
    return record


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


async def ensure_env_admin(store: Store, digest: str, record: TokenRecord) -> str:
    """Store the admin token given from outside (FEDERATION_ADMIN_TOKEN, id
    `ENV_ADMIN_ID`), stored under `digest`; returns a sentence saying what was done.

    One `ENV_ADMIN_ID` record at most: a new value replaces the old record in one
    audited txn (the old secret stops working). A value that was revoked is not stored
    again (its tombstone is written by `revoke`). Replicas starting at once agree: each
    write compares what it read, and the loser reads again."""
    tombstone, key = keys.revoked_env_token(digest), keys.token(digest)
    for _ in range(_ENSURE_ATTEMPTS):
        if await store.get(tombstone) is not None:
            return ENV_ADMIN_REVOKED
        entries, _ = await store.scan(keys.TOKENS)
        if any(e.key == key for e in entries):
            return "FEDERATION_ADMIN_TOKEN already stored"
        olds = [e for e in entries if e.value.get("id") == ENV_ADMIN_ID]
        conditions = [
            Cond.absent(key),
            Cond.absent(tombstone),
            *(Cond.at_revision(e.key, e.revision) for e in olds),
        ]
        ops = [*(Op.delete(e.key) for e in olds), Op.put(key, record.model_dump(mode="json"))]
        if not olds:
            ops.append(Op.put(keys.BOOTSTRAP, {"token_id": record.id}))
        if not entries:
            # The federation's first token, like `bootstrap_admin`'s: not audited.
            ok, _, _ = await store.txn(conditions, ops)
            if ok:
                return "FEDERATION_ADMIN_TOKEN stored"
            continue
        change = Change(
            "token.replace" if olds else "token.create",
            f"tokens/{ENV_ADMIN_ID}",
            before_revision=olds[0].revision if olds else 0,
            details={"role": Role.ADMIN.value, "from": "FEDERATION_ADMIN_TOKEN"},
        )
        ok, _, _ = await audit.txn(store, conditions, ops, change)
        if ok and olds:
            return "FEDERATION_ADMIN_TOKEN changed: the old value's token was replaced"
        if ok:
            return "FEDERATION_ADMIN_TOKEN stored"
    raise Conflict(key, 0, None)


async def of_region(store: Store, region: str) -> list[Entry]:
    """The stored tokens of region `region` (a scan of all tokens: there are few)."""
    entries, _ = await store.scan(keys.TOKENS)
    return [
        e for e in entries if e.value.get("role") == "region" and e.value.get("region") == region
    ]
