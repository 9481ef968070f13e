"""Regions in etcd: the record, the liveness key on its lease, the last heartbeat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from federation.model.region import (
    Capacity,
    Cordon,
    Heartbeat,
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
from federation.store.mirror import Mirror
from federation.store.txn import JSON
from federation.telemetry import metrics


class RegionNotFound(LookupError):
    """No region of that name."""


class RegionReplaced(Exception):
    """The region was deleted and registered again under its name meanwhile: what was
    decided about the one before does not hold for this one."""


class _RegionChanged(Exception):
    """The region's record changed since it was read (a cordon, a ceiling, a token)."""


# Writes that compare the region's record are tried again when it changed meanwhile,
# this many times in all, then 409.
_ATTEMPTS = 5


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


async def _entry(store: Store, name: str) -> Entry:
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


async def get_view(store: Store, name: str) -> RegionView:
    """One region with its state; RegionNotFound if there is none."""
    entry = await _entry(store, name)
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


async def set_cordon(
    store: Store, name: str, cordon: Cordon | None, *, revision: int | None = None
) -> RegionView:
    """Cordon (or uncordon, with None) a region; CAS on its record."""
    entry = await _entry(store, name)
    if revision is not None and revision != entry.revision:
        raise Conflict(keys.region(name), revision, entry.revision)
    record = RegionRecord.model_validate(entry.value)
    record.cordon = cordon
    change = Change(
        "region.cordon" if cordon else "region.uncordon",
        keys.region(name),
        details={"reason": cordon.reason} if cordon else {},
    )
    await audit.replace(
        store,
        keys.region(name),
        record.model_dump(mode="json"),
        revision=entry.revision,
        change=change,
    )
    return await get_view(store, name)


async def set_labels(
    store: Store, name: str, labels: dict[str, str], *, revision: int | None = None
) -> RegionView:
    """Replace a region's labels (what `placement.prefer_labels` matches); CAS on its
    record, audited with the labels before and after."""
    entry = await _entry(store, name)
    if revision is not None and revision != entry.revision:
        raise Conflict(keys.region(name), revision, entry.revision)
    record = RegionRecord.model_validate(entry.value)
    before, record.labels = record.labels, dict(sorted(labels.items()))
    await audit.replace(
        store,
        keys.region(name),
        record.model_dump(mode="json"),
        revision=entry.revision,
        change=Change(
            "region.labels",
            keys.region(name),
            details={"before": before, "after": record.labels},
        ),
    )
    return await get_view(store, name)


async def set_capacity_limit(
    store: Store, name: str, limit: Capacity | None, *, revision: int | None = None
) -> RegionView:
    """Set (or, with None, lift) the ceiling on what the region's heartbeats may claim.

    One txn, CAS on the region's record, also puts its last heartbeat under the new
    ceiling (CAS on that too): the scheduler plans with it at once, not from the next
    beat. A beat landing meanwhile fails the CAS, and this is tried again."""
    for _ in range(_ATTEMPTS):
        entry = await _entry(store, name)
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
    """Delete a region with its liveness, heartbeat, reports and tokens, in one txn.

    The txn compares the region's record, and every region token is made in a txn
    that rewrites it (`mint_token`): a token made after the tokens were listed fails
    this txn, and (without `revision`, the caller's If-Match) the list is read again.
    """
    for _ in range(_ATTEMPTS):
        entry = await _entry(store, name)
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
    for _ in range(_ATTEMPTS):
        entry = await _entry(store, name)
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
    for _ in range(_ATTEMPTS):
        entry = await _entry(store, name)
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


async def heartbeat(
    store: Store,
    name: str,
    beat: Heartbeat,
    *,
    ttl: int,
    known: tuple[RegionRecord, int] | None = None,
    mirror: Mirror | None = None,
    seen: LastSeen | None = None,
) -> str:
    """Refresh the region's liveness lease (held by the server for it), and record the
    beat when what it claims changed, its capacity clamped to the region's ceiling
    (counted in `federation_region_capacity_clamped`).

    Returns what happened, as a sentence. A beat that claims what the stored record
    says (compared without its time, from `mirror` when given, else read) writes
    nothing: the keep-alive is not a write, so a steady region adds nothing to etcd's
    history. The record's `at` is therefore when the claim last changed; when a region
    was last heard from is the server's to say (`LastSeen`).

    Any replica may serve a heartbeat: the lease id travels in the liveness key, and a
    race between replicas is settled by create-if-absent on that key. The record is
    written comparing the region's record (`known`, e.g. from the mirror, else read
    here) so the ceiling it was clamped to is the one in force; when the record changed
    meanwhile, it is read again. With `mirror` and `seen`, the lease this server last
    kept alive is kept alive again without reading the liveness key, while the mirror
    holds that key as it was then (the same mod_revision: the key is on that lease).
    """
    for _ in range(_ATTEMPTS):
        if known is None:
            entry = await _entry(store, name)
            known = RegionRecord.model_validate(entry.value), entry.revision
        record, revision = known
        stored = HeartbeatRecord.of(datetime.now(UTC), beat, record.capacity_limit)
        if mirror is not None:
            got = mirror.get(keys.HEARTBEATS, name, HeartbeatRecord)
            held = got[0] if got is not None else None
        else:
            last = await store.get(keys.heartbeat(name))
            held = HeartbeatRecord.model_validate(last.value) if last is not None else None
        changed = held is None or held.model_copy(update={"at": stored.at}) != stored
        try:
            said, lease = await _beat(
                store,
                name,
                stored if changed else None,
                revision,
                ttl=ttl,
                held=_held_lease(name, mirror, seen),
            )
        except _RegionChanged:
            known = None
            continue
        if seen is not None:
            seen.hold(name, lease)
        if stored.claimed is None:
            return said
        metrics.region_capacity_clamped.add(1, {"region": name})
        return f"{said}; capacity clamped to the region's ceiling"
    raise Conflict(keys.region(name), None, None)


def _held_lease(name: str, mirror: Mirror | None, seen: LastSeen | None) -> int | None:
    """The lease this server last kept alive for `name`, if the liveness key the
    mirror holds is still the one on it."""
    if mirror is None or seen is None:
        return None
    cached = seen.lease(name)
    alive = mirror.raw(keys.ALIVE, name)
    if cached is None or alive is None or alive[1] != cached[1]:
        return None
    return cached[0]


async def _beat(
    store: Store,
    name: str,
    stored: HeartbeatRecord | None,
    revision: int,
    *,
    ttl: int,
    held: int | None,
) -> tuple[str, tuple[int, int] | None]:
    """Keep the lease alive (or make one), and write `stored` unless it is None.
    Returns what happened, and the lease kept alive with its liveness key's revision
    (None when that is not known)."""
    record = stored.model_dump(mode="json") if stored is not None else None
    region = Cond.at_revision(keys.region(name), revision)
    if held is not None and await store.keepalive(held) > 0:
        if record is not None:
            await _put_beat(store, name, record, region)
        return "refreshed the liveness lease", None
    current = await store.get(keys.alive(name))
    if current is not None and current.lease:
        remaining = await store.keepalive(current.lease)
        if remaining > 0:
            if record is not None:
                await _put_beat(store, name, record, region)
            return "refreshed the liveness lease", (current.lease, current.revision)
    lease = await store.grant(ttl)
    since = datetime.now(UTC).isoformat()
    ok, created, entries = await store.txn(
        [region, Cond.absent(keys.alive(name))],
        [
            Op.put(keys.alive(name), {"since": since}, lease=lease),
            *([Op.put(keys.heartbeat(name), record)] if record is not None else []),
        ],
        read_on_failure=[keys.region(name), keys.alive(name)],
    )
    # On our lease: an attempt etcd answered too late landed, and this one was its retry.
    if ok:
        return "region became reachable: new liveness lease", (lease, created)
    if entries[1] is not None and entries[1].lease == lease:
        return "region became reachable: new liveness lease", (lease, entries[1].revision)
    await store.revoke(lease)
    _check_region(name, entries[0], revision)
    # Another replica won the race (or the old key still lingers): refresh theirs.
    current = await store.get(keys.alive(name))
    if current is not None and current.lease:
        await store.keepalive(current.lease)
    if record is not None:
        await _put_beat(store, name, record, region)
    held_now = (current.lease, current.revision) if current is not None and current.lease else None
    return "refreshed the liveness lease held by another replica", held_now


async def _put_beat(store: Store, name: str, record: JSON, region: Cond) -> None:
    ok, _, entries = await store.txn(
        [region], [Op.put(keys.heartbeat(name), record)], read_on_failure=[keys.region(name)]
    )
    if not ok:
        _check_region(name, entries[0], region.revision)


class LastSeen:
    """When this server last served each region's heartbeat (wall clock, in memory).

    A steady region's beats write nothing to etcd, so `last_heartbeat` is kept here;
    a region whose beats go to another replica shows when its claim last changed
    instead (its stored record's `at`), which is never later than its last beat."""

    def __init__(self) -> None:
        self._at: dict[str, datetime] = {}
        # name -> (lease, mod_revision of the liveness key on it), as last kept alive
        self._leases: dict[str, tuple[int, int]] = {}

    def saw(self, name: str) -> None:
        self._at[name] = datetime.now(UTC)

    def forget(self, name: str) -> None:
        self._at.pop(name, None)
        self._leases.pop(name, None)

    def lease(self, name: str) -> tuple[int, int] | None:
        """The lease last kept alive for `name`, with its liveness key's revision."""
        return self._leases.get(name)

    def hold(self, name: str, lease: tuple[int, int] | None) -> None:
        """Remember the lease kept alive (None: keep what is known)."""
        if lease is not None:
            self._leases[name] = lease

    def of(self, view: RegionView) -> RegionView:
        """`view` with `last_heartbeat` as late as this server knows it."""
        seen = self._at.get(view.name)
        if seen is None or (view.last_heartbeat is not None and view.last_heartbeat >= seen):
            return view
        return view.model_copy(update={"last_heartbeat": seen})


def _check_region(name: str, entry: Entry | None, revision: int) -> None:
    """Why a txn comparing the region's record at `revision` failed, if it was that."""
    if entry is None:
        raise RegionNotFound(name)
    if entry.revision != revision:
        raise _RegionChanged(name)


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
