"""Regions in etcd: the record, its admin state (cordon, labels, ceiling), its tokens.
The liveness key and the last heartbeat: `federation.store.heartbeats`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from federation.model.region import (
    Capacity,
    Cordon,
    HeartbeatRecord,
    RegionRecord,
    RegionView,
    region_view,
)
from federation.model.token import TokenRecord
from federation.store import audit, keys
from federation.store import tokens as store_tokens
from federation.store.audit import Change
from federation.store.errors import Conflict
from federation.store.etcd import Cond, Entry, Op, Store


class RegionNotFound(LookupError):
    """No region of that name."""


class RegionReplaced(Exception):
    """The region was deleted and registered again under its name meanwhile: what was
    decided about the one before does not hold for this one."""


# Writes that compare the region's record are tried again when it changed meanwhile,
# this many times in all, then 409.
ATTEMPTS = 5


async def create(store: Store, record: RegionRecord, token_digest: str, token: TokenRecord) -> int:
    """Create the region and its token in one txn (create-if-absent on the region key),
    audited."""
    return await audit.create(
        store,
        keys.region(record.name),
        record.model_dump(mode="json"),
        also=[Op.put(keys.token(token_digest), token.model_dump(mode="json"))],
        change=Change(
            "region.create",
            keys.region(record.name),
            details={"country": record.country, "token_id": token.id},
        ),
    )


async def record_entry(store: Store, name: str) -> Entry:
    entry = await store.get(keys.region(name))
    if entry is None:
        raise RegionNotFound(name)
    return entry


async def list_views(store: Store) -> tuple[list[RegionView], int]:
    """Every region with its state, and the store revision of the read."""
    records, revision = await store.scan(keys.REGIONS)
    alive, _ = await store.scan(keys.ALIVE)
    beats, _ = await store.scan(keys.HEARTBEATS)
    alive_names = {e.key.removeprefix(keys.ALIVE) for e in alive}
    beat_by_name = {
        e.key.removeprefix(keys.HEARTBEATS): HeartbeatRecord.model_validate(e.value) for e in beats
    }
    views = []
    for entry in records:
        record = RegionRecord.model_validate(entry.value)
        views.append(
            region_view(
                record,
                entry.revision,
                alive=record.name in alive_names,
                heartbeat=beat_by_name.get(record.name),
            )
        )
    return views, revision


async def lost(store: Store) -> list[str]:
    """Registered regions with no liveness key (lost: unreachable), sorted."""
    records, _ = await store.scan(keys.REGIONS)
    alive, _ = await store.scan(keys.ALIVE)
    alive_names = {e.key.removeprefix(keys.ALIVE) for e in alive}
    return sorted(
        name for e in records if (name := e.key.removeprefix(keys.REGIONS)) not in alive_names
    )


async def get_view(store: Store, name: str) -> RegionView:
    """One region with its state; RegionNotFound if there is none."""
    entry = await record_entry(store, name)
    alive = await store.get(keys.alive(name))
    beat = await store.get(keys.heartbeat(name))
    return region_view(
        RegionRecord.model_validate(entry.value),
        entry.revision,
        alive=alive is not None,
        heartbeat=HeartbeatRecord.model_validate(beat.value) if beat else None,
    )


async def get_record(store: Store, name: str) -> RegionRecord | None:
    """The region's record as etcd holds it now (one read, shared by concurrent ones)."""
    entry = await store.get_shared(keys.region(name))
    return RegionRecord.model_validate(entry.value) if entry is not None else None


async def _amend(
    store: Store, name: str, revision: int | None, amend: Callable[[RegionRecord], Change]
) -> RegionView:
    """Change the region's record with `amend` (which says, as a Change, what it did)
    and write it back; CAS on the record, audited."""
    entry = await record_entry(store, name)
    if revision is not None and revision != entry.revision:
        raise Conflict(keys.region(name), revision, entry.revision)
    record = RegionRecord.model_validate(entry.value)
    change = amend(record)
    await audit.replace(
        store,
        keys.region(name),
        record.model_dump(mode="json"),
        revision=entry.revision,
        change=change,
    )
    return await get_view(store, name)


async def set_cordon(
    store: Store, name: str, cordon: Cordon | None, *, revision: int | None = None
) -> RegionView:
    """Cordon (or uncordon, with None) a region; CAS on its record."""

    def amend(record: RegionRecord) -> Change:
        record.cordon = cordon
        action = "region.cordon" if cordon else "region.uncordon"
        return Change(
            action, keys.region(name), details={"reason": cordon.reason} if cordon else {}
        )

    return await _amend(store, name, revision, amend)


async def set_labels(
    store: Store, name: str, labels: dict[str, str], *, revision: int | None = None
) -> RegionView:
    """Replace a region's labels (what `placement.prefer_labels` matches); CAS on its
    record, audited with the labels before and after."""

    def amend(record: RegionRecord) -> Change:
        before, record.labels = record.labels, dict(sorted(labels.items()))
        details = {"before": before, "after": record.labels}
        return Change("region.labels", keys.region(name), details=details)

    return await _amend(store, name, revision, amend)


async def set_capacity_limit(
    store: Store, name: str, limit: Capacity | None, *, revision: int | None = None
) -> RegionView:
    """Set (or, with None, lift) the ceiling on what the region's heartbeats may claim.

    One txn, CAS on the region's record, also puts its last heartbeat under the new
    ceiling (CAS on that too): the scheduler plans with it at once, not from the next
    beat. A beat landing meanwhile fails the CAS, and this is tried again."""
    for _ in range(ATTEMPTS):
        entry = await record_entry(store, name)
        if revision is not None and revision != entry.revision:
            raise Conflict(keys.region(name), revision, entry.revision)
        record = RegionRecord.model_validate(entry.value)
        record.capacity_limit = limit
        beat = await store.get(keys.heartbeat(name))
        if beat is None:
            conditions, also = [Cond.absent(keys.heartbeat(name))], []
        else:
            limited = HeartbeatRecord.model_validate(beat.value).limited(limit)
            conditions = [Cond.at_revision(keys.heartbeat(name), beat.revision)]
            also = [Op.put(keys.heartbeat(name), limited.model_dump(mode="json"))]
        try:
            await audit.replace(
                store,
                keys.region(name),
                record.model_dump(mode="json"),
                revision=entry.revision,
                conditions=conditions,
                also=also,
                change=Change(
                    "region.capacity-limit",
                    keys.region(name),
                    details={"capacity_limit": limit.model_dump() if limit else None},
                ),
            )
        except Conflict:
            if revision is not None:
                raise
            continue
        return await get_view(store, name)
    raise Conflict(keys.region(name), revision, None)


async def delete(store: Store, name: str, *, revision: int | None = None) -> None:
    """Delete a region with its liveness, heartbeat, reports, tokens and last practice
    success, in one txn.

    The txn compares the region's record, and every region token is made in a txn
    that rewrites it (`mint_token`): a token made after the tokens were listed fails
    this txn, and (without `revision`, the caller's If-Match) the list is read again.
    """
    for _ in range(ATTEMPTS):
        entry = await record_entry(store, name)
        tokens = await store_tokens.of_region(store, name)
        try:
            await audit.delete(
                store,
                keys.region(name),
                revision=revision if revision is not None else entry.revision,
                also=[
                    Op.delete(keys.alive(name)),
                    Op.delete(keys.heartbeat(name)),
                    Op.delete_prefix(keys.reports(name)),
                    Op.delete(keys.REPORTS + name),  # a whole-region report (keys.REPORTS)
                    Op.delete(keys.practice_success(name)),
                    *[Op.delete(t.key) for t in tokens],
                ],
                change=Change(
                    "region.delete",
                    keys.region(name),
                    details={"tokens_revoked": [t.value.get("id") for t in tokens]},
                ),
            )
        except Conflict:
            if revision is not None:
                raise
            continue
        return
    raise Conflict(keys.region(name), revision, None)


async def mint_token(store: Store, name: str, digest: str, token: TokenRecord) -> TokenRecord:
    """Store a new token of region `name`, bound to the region as it is now.

    One txn compares the region's record and writes it back unchanged with the token:
    a region deleted before it fails the txn (no token outlives its region), and one
    deleted after it sees the token (`delete` compares the record too). The token
    carries the region's incarnation, which authentication compares. RegionNotFound
    when the region is gone, RegionReplaced when it was registered again meanwhile
    (the caller checked the one before). Audited as `token.create`."""
    first: int | None = None
    for _ in range(ATTEMPTS):
        entry = await record_entry(store, name)
        if first is not None and entry.created != first:
            raise RegionReplaced(name)
        first = entry.created
        record = RegionRecord.model_validate(entry.value)
        bound = token.model_copy(update={"region": name, "region_incarnation": record.incarnation})
        ok, _, _ = await audit.txn(
            store,
            [Cond.at_revision(entry.key, entry.revision), Cond.absent(keys.token(digest))],
            [
                Op.put(entry.key, entry.value),
                Op.put(keys.token(digest), bound.model_dump(mode="json")),
            ],
            Change(
                "token.create",
                f"tokens/{bound.id}",
                details={"role": bound.role.value, "region": name},
            ),
        )
        if ok:
            return bound
    raise Conflict(keys.region(name), None, None)


async def rotate_token(
    store: Store, name: str, digest: str, token: TokenRecord
) -> tuple[TokenRecord, list[str]]:
    """Store a new token of region `name` and revoke every other, in one txn (CAS on the
    region's record, as `mint_token` writes it: a token made meanwhile is revoked too).
    Returns the new token and the ids revoked."""
    for _ in range(ATTEMPTS):
        entry = await record_entry(store, name)
        record = RegionRecord.model_validate(entry.value)
        old = await store_tokens.of_region(store, name)
        revoked = [str(t.value.get("id")) for t in old]
        bound = token.model_copy(update={"region": name, "region_incarnation": record.incarnation})
        try:
            await audit.replace(
                store,
                entry.key,
                entry.value,
                revision=entry.revision,
                also=[
                    *[Op.delete(t.key) for t in old],
                    Op.put(keys.token(digest), bound.model_dump(mode="json")),
                ],
                change=Change(
                    "region.token-rotate",
                    entry.key,
                    details={"token_id": bound.id, "revoked": revoked},
                ),
            )
        except Conflict:
            continue
        return bound, revoked
    raise Conflict(keys.region(name), None, None)


@dataclass(frozen=True)
class RegionLocation:
    """A region's name and country, as residency evaluation needs them."""

    name: str
    country: str | None


async def locations(store: Store) -> tuple[list[RegionLocation], int]:
    """Every registered region with its country, and the store revision of the read.

    Read leniently: a record that fails validation still appears, with no country, so
    evaluation rejects it (fail closed) rather than leaving it out unnoticed.
    """
    entries, revision = await store.scan(keys.REGIONS)
    found = []
    for entry in entries:
        try:
            record = RegionRecord.model_validate(entry.value)
        except ValidationError:
            found.append(RegionLocation(entry.key.removeprefix(keys.REGIONS), None))
        else:
            found.append(RegionLocation(record.name, record.country))
    return found, revision
