"""The etcd-backed store (see the package docstring for the contract).

`Store` turns the contract's operations into etcd calls: reads are Range, writes are
Txn (through `federation.store.wire`, which fills etcd's request in place), watches
are etcd watch streams. Every unary call goes through one retry policy
(`federation.store.retry`); every txn compares the current task's write fence, if
any (`federation.store.fence`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from etcd3aio import (
    Etcd3Client,
    EtcdConnectionError,
    EtcdTransientError,
    prefix_range_end,
)
from etcd3aio.kv import KVService

from federation.store import retry, wire
from federation.store import txn as single  # the single-key writes, over any txn
from federation.store.endpoints import resolve
from federation.store.errors import Compacted, NoSpace, StoreUnavailable
from federation.store.fence import check_fence, write_fence
from federation.store.retry import ATTEMPT_TIMEOUT, reraise_cancellation
from federation.store.txn import JSON, Cond, Entry, Event, Op, Result, decode, encode
from federation.telemetry import metrics as _metrics

# Re-exported: the store modules import the vocabulary from here.
__all__ = ["ATTEMPT_TIMEOUT", "JSON", "Cond", "Entry", "Event", "Op", "Result", "Store"]

T = TypeVar("T")
Stride = Callable[[str, int], str | None]  # (last key, n) -> the key n more lie before

_EVENT_DELETE = 1  # mvccpb.Event.EventType
_SCAN_PAGE = 1000  # keys per Range reply of a scan
_SHARED_READ_WAIT = 0.02  # see Store.get_shared


class Store:
    """Typed access to federation state in etcd, under one key prefix."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "/federation/",
        timeout: float = 5.0,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        ca_cert: bytes | None = None,
        cert_key: bytes | None = None,
        cert_chain: bytes | None = None,
        tls_server_name: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._endpoints = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
        self._tls = (ca_cert, cert_key, cert_chain)
        self._tls_server_name = tls_server_name
        self._client = self._make_client(self._endpoints, tls_server_name)
        self._connected = False
        # The highest revision this client wrote, and the highest etcd answered a `get`
        # at: a mirror waits for them (read your writes; reads after a token's read).
        self.last_write = self.last_read = 0
        # Concurrent reads of one key share a round trip (see get_shared).
        self._next_reads: dict[str, asyncio.Future[Entry | None]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._credentials = (username, password) if username else None
        self._refresher: Any = None
        # etcd's raised alarms as this process last saw them (NOSPACE, CORRUPT): from
        # a refused write at once, and from the alarm list (federation.store.compaction).
        self.alarms: frozenset[str] = frozenset()

    async def connect(self) -> None:
        """Open the gRPC channel. With etcd credentials, authenticate now and keep the
        etcd auth token refreshed in the background; otherwise no round trip here."""
        resolved, name = await resolve(self._endpoints)
        if resolved != self._endpoints:
            # A TLS member is checked against the one name it was given by, unless the
            # operator named the certificates' name (several names: they must).
            tls_name = self._tls_server_name or (name if self._tls[0] else None)
            self._client = self._make_client(resolved, tls_name)
        await self._client.connect()
        self._connected = True
        if self._credentials is not None:
            name, secret = self._credentials
            try:
                self._refresher = self._client.token_refresher(name, secret or "")
                await self._refresher.__aenter__()
            except (EtcdConnectionError, EtcdTransientError) as exc:
                raise StoreUnavailable(f"etcd authentication: {exc}") from exc

    def _make_client(self, endpoints: list[str], tls_server_name: str | None) -> Etcd3Client:
        ca_cert, cert_key, cert_chain = self._tls
        # One retry policy (federation.store.retry): the client's own are switched off.
        client = Etcd3Client(
            endpoints,
            rpc_max_attempts=1,
            # Requests wait for the mirror's watch: after a member dies, its streams must
            # be back within a second, not the library's default of up to 5 s a try.
            watch_max_reconnect_backoff_seconds=0.5,
            tls_server_name=tls_server_name,
            ca_cert=ca_cert,
            cert_key=cert_key,
            cert_chain=cert_chain,
        )
        wire.allow_large_messages(client)
        return client

    async def close(self) -> None:
        """Close the channel; in-flight calls fail with StoreUnavailable."""
        if self._refresher is not None:
            await self._refresher.__aexit__(None, None, None)
            self._refresher = None
        if self._connected:
            await self._client.close()
            self._connected = False

    async def __aenter__(self) -> Store:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------

    def _abs(self, key: str) -> str:
        return self.prefix + key

    def _rel(self, key: bytes) -> str:
        return key.decode().removeprefix(self.prefix)

    @property
    def _kv(self) -> KVService:
        kv = self._client.kv
        if kv is None:
            raise StoreUnavailable("store is not connected")
        return kv

    async def _call(
        self, what: str, fn: Callable[[float], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        """Every unary etcd call goes through here: one retry policy (federation.store.retry)."""
        try:
            return await retry.call(
                what,
                fn,
                deadline=self.timeout if deadline is None else deadline,
                attempt_timeout=self.attempt_timeout,
            )
        except NoSpace:
            self.saw_alarms(self.alarms | {"NOSPACE"})
            raise

    def saw_alarms(self, alarms: frozenset[str]) -> None:
        """Note etcd's raised alarms (for health and metrics)."""
        if alarms != self.alarms:
            self.alarms = alarms
            _metrics.observe_etcd_alarms(alarms)

    def _wrote(self, revision: int) -> None:
        self.last_write = max(self.last_write, revision)
        if "NOSPACE" in self.alarms:  # a write landed: the alarm is disarmed
            self.saw_alarms(self.alarms - {"NOSPACE"})

    def _entry(self, kv: Any) -> Entry:
        return Entry(
            key=self._rel(kv.key),
            value=decode(kv.value),
            revision=int(kv.mod_revision),
            created=int(kv.create_revision),
            lease=int(kv.lease),
        )

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """Linearizable read of one key (Range)."""
        resp = await self._call("get", lambda t: self._kv.get(self._abs(key), timeout=t))
        self.last_read = max(self.last_read, int(resp.header.revision))
        return self._entry(resp.kvs[0]) if resp.kvs else None

    async def get_shared(self, key: str) -> Entry | None:
        """`get`, but concurrent callers share one round trip. Still linearizable: a
        caller that arrives while a read is in flight waits for the next one, which
        starts after it arrived. Under load that is about two reads per round trip
        (e.g. every request checking the same bearer token), not one per caller."""
        future = self._next_reads.get(key)
        if future is None:
            future = self._next_reads[key] = asyncio.get_running_loop().create_future()
            if key not in self._readers:
                self._readers[key] = asyncio.create_task(
                    self._read_for_all(key), name="store-shared-read"
                )
        return await asyncio.shield(future)

    async def _read_for_all(self, key: str) -> None:
        try:
            while (future := self._next_reads.pop(key, None)) is not None:
                read = asyncio.create_task(self._read_into(key, future))
                self._inflight.add(read)
                read.add_done_callback(self._inflight.discard)
                # The next read starts when this one has answered, or after a short
                # while if it has not: callers must never queue behind one another's
                # deadlines (an etcd without quorum answers nothing for seconds).
                await asyncio.wait([read], timeout=_SHARED_READ_WAIT)
        finally:
            del self._readers[key]

    async def _read_into(self, key: str, future: asyncio.Future[Entry | None]) -> None:
        try:
            found = await self.get(key)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: its callers may all have gone
        else:
            future.set_result(found)

    async def get_raw(self, key: str) -> tuple[str, int] | None:
        """Raw string value and mod_revision of one key, for non-JSON keys."""
        resp = await self._call("get", lambda t: self._kv.get(self._abs(key), timeout=t))
        if not resp.kvs:
            return None
        return resp.kvs[0].value.decode(), int(resp.kvs[0].mod_revision)

    async def scan(self, prefix: str) -> tuple[list[Entry], int]:
        """All keys under `prefix` and the store revision of the read (Range on a prefix)."""
        entries: list[Entry] = []
        revision = 0
        async for kvs, at in self._pages(prefix):
            entries += [self._entry(kv) for kv in kvs]
            revision = at
        return entries, revision

    async def scan_pages(
        self, prefix: str, *, stride: Stride | None = None, start: str | None = None
    ) -> AsyncGenerator[list[tuple[str, bytes, int, int]], None]:
        """A prefix too big to hold at once (a long audit log), from its key `start` if
        given, a page at a time, all at the first page's revision, undecoded: (key, raw
        value, mod_revision, create_revision) per key. `stride(last key, n)`: the key the
        next n keys lie before (None: unknown), for keys laid out so it can be named."""
        async for kvs, _ in self._pages(prefix, stride, start):
            yield [
                (self._rel(kv.key), bytes(kv.value), int(kv.mod_revision), int(kv.create_revision))
                for kv in kvs
            ]

    async def scan_raw(self, prefix: str) -> tuple[list[tuple[str, bytes, int]], int]:
        """`scan` without decoding: (key, raw value, mod_revision) per key, and the
        revision of the read. For the mirror, which keeps values as bytes."""
        found: list[tuple[str, bytes, int]] = []
        revision = 0
        async for kvs, at in self._pages(prefix):
            found += [(self._rel(kv.key), bytes(kv.value), int(kv.mod_revision)) for kv in kvs]
            revision = at
        return found, revision

    async def _pages(
        self, prefix: str, stride: Stride | None = None, start: str | None = None
    ) -> AsyncIterator[tuple[Sequence[Any], int]]:
        end = prefix_range_end(self._abs(prefix))
        # In pages, all at the first page's revision (one consistent read): one reply
        # must stay under gRPC's 4 MiB message limit whatever the number of keys. etcd
        # counts every key from a Range's start to its end, whatever its limit, so
        # pages of a long prefix cost O(n) each; a `stride` bounds each page's end.
        key, upto, revision = self._abs(start or prefix).encode(), end, 0
        while True:
            resp = await self._call(
                "list",
                lambda t, k=key, e=upto, r=revision: self._kv.get(  # type: ignore[misc]
                    k, range_end=e, revision=r, limit=_SCAN_PAGE, timeout=t
                ),
            )
            revision = revision or int(resp.header.revision)
            yield resp.kvs, revision
            full = resp.more or len(resp.kvs) >= _SCAN_PAGE
            if upto == end and not resp.more:
                return
            key = bytes(resp.kvs[-1].key) + b"\0" if resp.kvs else upto
            bound = stride(self._rel(resp.kvs[-1].key), _SCAN_PAGE) if stride and resp.kvs else None
            # After a short bounded page, one read to the end finds what lies beyond.
            ahead = self._abs(bound).encode() if bound and (full or upto == end) else end
            upto = ahead if key < ahead < end else end

    async def count(self, prefix: str) -> int:
        """Number of keys under `prefix` (Range count_only)."""
        start = self._abs(prefix)
        resp = await self._call(
            "count",
            lambda t: self._kv.get(
                start, range_end=prefix_range_end(start), count_only=True, timeout=t
            ),
        )
        return int(resp.count)

    async def revision(self) -> int:
        """The current store revision."""
        resp = await self._call("revision", lambda t: self._kv.get(self._abs(""), timeout=t))
        return int(resp.header.revision)

    # -- writes -----------------------------------------------------------------------

    async def txn(
        self,
        conditions: Sequence[Cond],
        ops: Sequence[Op],
        *,
        read_on_failure: Sequence[str] = (),
    ) -> Result:
        """Apply `ops` atomically iff every condition holds (one etcd Txn).

        Returns (succeeded, revision, entries): on failure, the current entries of the
        keys in `read_on_failure`, read in the same transaction, to explain the conflict.
        The txn also compares the current task's write fence, if any (`fence_writes`):
        CredentialRevoked when that compare fails.
        """
        fence = write_fence()
        if fence is not None:
            conditions = [*conditions, fence.cond]
            read_on_failure = [*read_on_failure, fence.cond.key]
        request = wire.txn_request(self.prefix, conditions, ops, read_on_failure)
        kv = self._kv
        resp = await self._call("txn", lambda t: wire.send_txn(kv, request, rpc_timeout=t))
        entries: list[Entry | None] = []
        if resp.succeeded and ops:
            self._wrote(int(resp.header.revision))
        if resp.succeeded and fence is not None:
            fence.held = True
        if not resp.succeeded:
            for r in resp.responses:
                kvs = r.response_range.kvs
                entries.append(self._entry(kvs[0]) if kvs else None)
            if fence is not None:
                check_fence(fence, entries.pop())
        return bool(resp.succeeded), int(resp.header.revision), entries

    async def _single(
        self, conditions: Sequence[Cond], ops: Sequence[Op], reads: Sequence[str], _: int | None
    ) -> Result:
        """`txn` as the single-key writes take it (federation.store.txn); a plain write
        has no audit entry, so the revision it expects is not needed here."""
        return await self.txn(conditions, ops, read_on_failure=reads)

    async def put(self, key: str, value: JSON, *, lease: int = 0) -> int:
        """Unconditional write (Put); returns the new revision. A fenced task's put is
        a txn comparing its fence (`fence_writes`)."""
        if write_fence() is not None:
            _, revision, _ = await self.txn([], [Op.put(key, value, lease=lease)])
            return revision
        data = encode(value)
        resp = await self._call(
            "put", lambda t: self._kv.put(self._abs(key), data, lease=lease, timeout=t)
        )
        self._wrote(int(resp.header.revision))
        return int(resp.header.revision)

    async def create(
        self, key: str, value: JSON | str, *, lease: int = 0, also: Sequence[Op] = ()
    ) -> int:
        """Create-if-absent (Txn on create_revision == 0), with `also` in the same txn;
        AlreadyExists when the key is there."""
        return await single.create(self._single, key, value, lease=lease, also=also)

    async def replace(
        self,
        key: str,
        value: JSON | str,
        *,
        revision: int | None = None,
        also: Sequence[Op] = (),
        conditions: Sequence[Cond] = (),
    ) -> int:
        """Write `key`; with `revision`, only if its mod_revision still equals it (CAS)."""
        return await single.replace(
            self._single, key, value, revision=revision, also=also, conditions=conditions
        )

    async def delete(
        self, key: str, *, revision: int | None = None, also: Sequence[Op] = ()
    ) -> int:
        """Delete `key` if it exists (and, with `revision`, is unchanged); CAS like replace."""
        return await single.delete(self._single, key, revision=revision, also=also)

    # -- leases -----------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """Grant a lease of `ttl` seconds (etcd may round it up to its minimum)."""
        lease = self._client.lease
        if lease is None:
            raise StoreUnavailable("store is not connected")
        resp = await self._call("lease grant", lambda t: lease.grant(ttl, timeout=t))
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once (LeaseKeepAlive); returns its TTL, or 0 if it has expired."""
        lease = self._client.lease
        if lease is None:
            raise StoreUnavailable("store is not connected")

        async def once(_: float) -> int:
            stream = lease.keep_alive(lease_id)
            try:
                async for response in stream:
                    return int(response.TTL)
                return 0
            finally:
                stream.cancel()

        return await self._call("lease keepalive", once)

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key attached to it at once."""
        lease = self._client.lease
        if lease is None:
            raise StoreUnavailable("store is not connected")
        try:
            await self._call("lease revoke", lambda t: lease.revoke(lease_id, timeout=t))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # already expired: nothing to do
                raise

    # -- watches ----------------------------------------------------------------------

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[list[Event]]:
        """Changes under `prefix` from `start_revision` on, one batch per etcd response.

        Raises Compacted when `start_revision` is older than etcd's history, and
        StoreUnavailable when the stream fails; either way the caller re-lists.
        """
        async for events in self._watch(prefix, start_revision):
            yield [
                Event(
                    type="delete" if ev.type == _EVENT_DELETE else "put",
                    key=self._rel(ev.kv.key),
                    value=None if ev.type == _EVENT_DELETE else decode(ev.kv.value),
                    revision=int(ev.kv.mod_revision),
                )
                for ev in events
            ]

    async def watch_raw(
        self, prefix: str, *, start_revision: int
    ) -> AsyncIterator[list[tuple[str, bytes | None, int]]]:
        """`watch` without decoding: (key, raw value or None for a delete, mod_revision)."""
        async for events in self._watch(prefix, start_revision):
            yield [
                (
                    self._rel(ev.kv.key),
                    None if ev.type == _EVENT_DELETE else bytes(ev.kv.value),
                    int(ev.kv.mod_revision),
                )
                for ev in events
            ]

    async def _watch(self, prefix: str, start_revision: int) -> AsyncIterator[Sequence[Any]]:
        watcher = self._client.watch
        if watcher is None:
            raise StoreUnavailable("store is not connected")
        start = self._abs(prefix)
        try:
            async for resp in watcher.watch(
                start, range_end=prefix_range_end(start), start_revision=start_revision
            ):
                if resp.compact_revision > 0:
                    raise Compacted(int(resp.compact_revision))
                if resp.canceled:
                    raise StoreUnavailable(f"watch cancelled: {resp.cancel_reason}")
                if resp.events:
                    yield resp.events
        except grpc.aio.AioRpcError as exc:
            reraise_cancellation(exc)
            raise StoreUnavailable(f"watch: {exc.code().name}") from exc
        # gRPC can end the stream quietly when the task is cancelled; never report a
        # cancelled watch as a finished one.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        raise StoreUnavailable("watch stream ended")

    # -- maintenance ------------------------------------------------------------------

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Compact etcd history up to `revision`; `physical`: answer only once the old
        revisions are gone from the backend (so a defragmentation after frees them)."""
        await self._call(
            "compact", lambda t: self._kv.compact(revision, physical=physical, timeout=t)
        )
