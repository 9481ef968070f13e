"""etcd maintenance: members' status, alarms, defragmentation and compaction.

What an operator needs to keep etcd from filling (docs/operations.md): how big each
member's database is and how much of it is in use, which alarms are raised, and the
three steps out of a NOSPACE alarm: compact the history, defragment each member (one
at a time: a member being defragmented answers nothing), disarm the alarm.

Status and defragmentation are per member, so each is asked through a store of the
same credentials connected to that member alone (`member_store`). Alarms and
compaction are cluster-wide and go through any member.

`snapshot` writes the whole database to a file (`federation backup`).

etcd does not say how far its history is compacted; `compacted_revision` finds it
with ranges at old revisions (a binary search the first time, two ranges after).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from etcd3aio import (
    AlarmType,
    EtcdConnectionError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
)

from federation.store import retry
from federation.store.errors import NotPermitted, StoreUnavailable
from federation.store.etcd import Store

T = TypeVar("T")

DEFRAG_TIMEOUT = 600.0  # a member of a few GB takes tens of seconds


@dataclass(frozen=True)
class MemberStatus:
    """One etcd member as its own status call says, or why it could not say."""

    id: str  # hexadecimal, as etcdctl shows it
    name: str
    endpoint: str
    db_size: int | None = None
    db_size_in_use: int | None = None
    revision: int | None = None
    leader: bool = False
    version: str = ""
    alarms: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "endpoint": self.endpoint,
            "db_size": self.db_size,
            "db_size_in_use": self.db_size_in_use,
            "revision": self.revision,
            "leader": self.leader,
            "version": self.version,
            "alarms": list(self.alarms),
            "errors": list(self.errors),
        }


def member_store(store: Store, endpoint: str) -> Store:
    """A store with `store`'s credentials that talks to one member only. Connect it."""
    ca_cert, cert_key, cert_chain = store._tls
    user, password = store._credentials or (None, None)
    return Store(
        [endpoint],
        prefix=store.prefix,
        timeout=store.timeout,
        ca_cert=ca_cert,
        cert_key=cert_key,
        cert_chain=cert_chain,
        tls_server_name=store._tls_server_name,
        username=user,
        password=password,
    )


async def _maintenance_call(
    store: Store, what: str, fn: Callable[[Any, float], Awaitable[T]], *, deadline: float
) -> T:
    """One Maintenance or Cluster call, under the store's retry policy; a long call
    (defragmentation) gets the whole deadline for its one attempt."""
    client = store._client
    if client.maintenance is None or client.cluster is None:
        raise StoreUnavailable("store is not connected")
    try:
        return await retry.call(
            what,
            lambda t: fn(client, t),
            deadline=deadline,
            attempt_timeout=max(store.attempt_timeout, deadline),
        )
    except EtcdPermissionDeniedError as exc:
        raise NotPermitted(f"etcd refuses {what} to this etcd user: {exc}") from exc
    except grpc.aio.AioRpcError as exc:
        # etcd 3.5 answers a maintenance call its auth refuses with UNKNOWN.
        if "permission denied" in (exc.details() or ""):
            raise NotPermitted(f"etcd refuses {what} to this etcd user") from exc
        # Anything else etcd refuses that retry did not take (a member gone meanwhile):
        # unavailable, a 503 saying what, never a traceback.
        raise StoreUnavailable(f"etcd {what}: {exc.code().name}: {exc.details()}") from exc


async def alarms(store: Store) -> list[tuple[str, str]]:
    """Every raised alarm as (member id in hex, alarm name); also noted on `store`."""
    resp = await _maintenance_call(
        store, "alarms", lambda c, t: c.maintenance.alarms(timeout=t), deadline=store.timeout
    )
    raised = [(f"{a.memberID:x}", AlarmType(a.alarm).name) for a in resp.alarms]
    store.saw_alarms(frozenset(name for _, name in raised))
    return raised


async def disarm(store: Store) -> list[tuple[str, str]]:
    """Deactivate every raised alarm, member by member (etcd clears only the alarm
    and member named); returns what was raised. A NOSPACE alarm disarmed before
    the database has room is raised again by the next write that does not fit."""
    raised = await alarms(store)
    for member, name in raised:
        await _maintenance_call(
            store,
            "alarm disarm",
            lambda c, t, m=member, n=name: c.maintenance.alarm_deactivate(  # type: ignore[misc]
                AlarmType[n], member_id=int(m, 16), timeout=t
            ),
            deadline=store.timeout,
        )
    store.saw_alarms(frozenset())
    return raised


async def _members(store: Store) -> list[tuple[str, str, str]]:
    resp = await _maintenance_call(
        store,
        "member list",
        lambda c, t: c.cluster.member_list(timeout=t),
        deadline=store.timeout,
    )
    found = []
    for member in resp.members:
        urls = [u.removeprefix("http://").removeprefix("https://") for u in member.clientURLs]
        found.append((f"{member.ID:x}", member.name, urls[0] if urls else ""))
    return found


async def _member_status(
    store: Store, member: tuple[str, str, str], raised: list[tuple[str, str]]
) -> MemberStatus:
    ident, name, endpoint = member
    own = tuple(alarm for who, alarm in raised if who == ident)
    if not endpoint:
        return MemberStatus(ident, name, endpoint, alarms=own, errors=("no client URL",))
    one = member_store(store, endpoint)
    try:
        await one.connect()
        resp = await _maintenance_call(
            one, "status", lambda c, t: c.maintenance.status(timeout=t), deadline=store.timeout
        )
    except StoreUnavailable as exc:
        return MemberStatus(ident, name, endpoint, alarms=own, errors=(str(exc),))
    finally:
        await one.close()
    return MemberStatus(
        ident,
        name,
        endpoint,
        db_size=int(resp.dbSize),
        db_size_in_use=int(resp.dbSizeInUse),
        revision=int(resp.header.revision),
        leader=resp.leader == int(ident, 16),
        version=str(resp.version),
        alarms=own,
        errors=tuple(str(e) for e in resp.errors),
    )


async def status(store: Store) -> list[MemberStatus]:
    """Every member's status (an unreachable one says why in `errors`)."""
    raised = await alarms(store)
    return [await _member_status(store, m, raised) for m in await _members(store)]


async def defragment(store: Store, member_id: str) -> MemberStatus | None:
    """Defragment one member (it answers nothing meanwhile) and return its status
    after; None when no member has that id."""
    for member in await _members(store):
        if member[0] == member_id:
            break
    else:
        return None
    one = member_store(store, member[2])
    try:
        await one.connect()
        await _maintenance_call(
            one,
            "defragment",
            lambda c, t: c.maintenance.defragment(timeout=t),
            deadline=DEFRAG_TIMEOUT,
        )
    finally:
        await one.close()
    return await _member_status(store, member, await alarms(store))


def _out_of_range(exc: grpc.aio.AioRpcError) -> bool:
    return bool(exc.code() == grpc.StatusCode.OUT_OF_RANGE)


async def _readable(store: Store, revision: int) -> bool:
    # Straight to etcd, not through the retry policy: a probe of a compacted revision
    # is an expected answer, not an etcd error to count.
    kv = store._kv
    try:
        async with asyncio.timeout(store.timeout):
            await kv.get(store.prefix, revision=revision, count_only=True, timeout=store.timeout)
    except grpc.aio.AioRpcError as exc:
        if _out_of_range(exc):  # compacted away (or, racing a restore, in the future)
            return False
        raise StoreUnavailable(f"etcd history probe: {exc.code().name}") from exc
    except (EtcdConnectionError, EtcdTransientError, TimeoutError) as exc:
        raise StoreUnavailable(f"etcd history probe: {exc or 'no answer'}") from exc
    return True


async def compacted_revision(store: Store, *, at_least: int = 0) -> tuple[int, int]:
    """(the revision etcd's history is compacted to, the store's revision). The
    oldest readable revision is found by ranges at old revisions; `at_least`, an
    earlier answer (compaction only moves forward), makes that two ranges, not a
    search. 0 when nothing is compacted."""
    current = await store.revision()
    low = max(1, min(at_least, current))
    if await _readable(store, low):
        return (0 if low == 1 else low), current
    high = current  # the current revision is always readable
    while high - low > 1:  # low unreadable, high readable
        middle = (low + high) // 2
        if await _readable(store, middle):
            high = middle
        else:
            low = middle
    return high, current


async def compact(store: Store, revision: int, *, physical: bool = False) -> bool:
    """Compact the history up to `revision` (kept: it and everything after); with
    `physical`, answer once the old revisions are gone from the backend. False when
    it was compacted that far already (by etcd itself, or another leader)."""
    try:
        await store.compact(revision, physical=physical)
    except grpc.aio.AioRpcError as exc:
        if _out_of_range(exc):
            return False
        raise
    except EtcdPermissionDeniedError as exc:
        raise NotPermitted(f"etcd refuses compaction to this etcd user: {exc}") from exc
    return True


async def snapshot(store: Store, path: Path) -> int:
    """Write an etcd snapshot (the whole database, every prefix) to `path`; returns
    its size. Written to a temporary file and renamed, so `path` is never partial."""
    maintenance = store._client.maintenance
    if maintenance is None:
        raise StoreUnavailable("store is not connected")
    tmp = path.with_name(path.name + ".partial")
    size = 0
    try:
        with tmp.open("wb") as out:
            async for chunk in maintenance.snapshot(timeout=300):
                out.write(chunk)
                size += len(chunk)
    except (EtcdConnectionError, EtcdTransientError) as exc:
        tmp.unlink(missing_ok=True)
        raise StoreUnavailable(f"etcd snapshot: {exc}") from exc
    tmp.replace(path)
    return size
