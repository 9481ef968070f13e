"""Heartbeats in etcd: the liveness key on its lease (held by the server for the
region), the last claim of capacity, and when this server last heard each region."""

from __future__ import annotations

from datetime import UTC, datetime

from federation.model.region import Heartbeat, HeartbeatRecord, RegionRecord, RegionView
from federation.store import keys
from federation.store.errors import Conflict
from federation.store.etcd import Cond, Entry, Op, Store
from federation.store.mirror import Mirror
from federation.store.regions import ATTEMPTS, RegionNotFound, record_entry
from federation.store.txn import JSON
from federation.telemetry import metrics


class _RegionChanged(Exception):
    """The region's record changed since it was read (a cordon, a ceiling, a token)."""


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
    for _ in range(ATTEMPTS):
        if known is None:
            entry = await record_entry(store, name)
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
