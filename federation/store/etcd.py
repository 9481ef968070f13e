"""The etcd-backed store (see the package docstring for the contract)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import grpc
import grpc.aio
from etcd3aio import (
    Etcd3Client,
    EtcdConnectionError,
    EtcdTransientError,
    prefix_range_end,
)
from etcd3aio._protobuf import Compare, TxnRequest
from etcd3aio.kv import KVService
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from federation.store.errors import (
    AlreadyExists,
    Compacted,
    Conflict,
    CredentialRevoked,
    StoreUnavailable,
)
from federation.telemetry import metrics as _metrics
from federation.telemetry.setup import child_span

if TYPE_CHECKING:
    from federation.store.audit import Change

log = logging.getLogger(__name__)

T = TypeVar("T")
JSON = dict[str, Any]

_EVENT_DELETE = 1  # mvccpb.Event.EventType
_SCAN_PAGE = 1000  # keys per Range reply of a scan
_SHARED_READ_WAIT = 0.02  # see Store.get_shared
# An attempt of one call waits at most this long before it is tried again (see
# Store._attempts): a write a follower forwarded to a leader that has just died is
# lost, and etcd never answers it.
ATTEMPT_TIMEOUT = 2.0


class _Transient(Exception):
    """A gRPC failure worth retrying within the operation's deadline."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key: its JSON value and the revisions etcd keeps for it."""

    key: str
    value: JSON
    revision: int  # mod_revision
    created: int  # create_revision
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch. `value` is None for a delete."""

    type: Literal["put", "delete"]
    key: str
    value: JSON | None
    revision: int


@dataclass(frozen=True, slots=True)
class Cond:
    """A transaction condition on one key (relative to the prefix)."""

    key: str
    kind: Literal["absent", "exists", "revision", "value"]
    revision: int = 0
    value: str = ""

    @staticmethod
    def absent(key: str) -> Cond:
        """The key does not exist (create_revision == 0)."""
        return Cond(key, "absent")

    @staticmethod
    def exists(key: str) -> Cond:
        """The key exists (create_revision > 0)."""
        return Cond(key, "exists")

    @staticmethod
    def at_revision(key: str, revision: int) -> Cond:
        """The key's mod_revision equals `revision` (0 means: absent)."""
        return Cond(key, "revision", revision=revision)

    @staticmethod
    def value_is(key: str, value: str) -> Cond:
        """The key's raw value equals `value` (used for the leader key)."""
        return Cond(key, "value", value=value)


@dataclass(frozen=True, slots=True)
class Op:
    """A transaction operation: put a JSON value (optionally on a lease) or delete."""

    kind: Literal["put", "delete", "delete_prefix", "put_raw"]
    key: str
    value: JSON | None = None
    raw: str = ""
    lease: int = 0

    @staticmethod
    def put(key: str, value: JSON | str, *, lease: int = 0) -> Op:
        """Put a JSON value; a str is taken as JSON already encoded (e.g. by pydantic's
        `model_dump_json`, several times faster than dumping a dict)."""
        if isinstance(value, str):
            return Op("put_raw", key, raw=value, lease=lease)
        return Op("put", key, value=value, lease=lease)

    @staticmethod
    def put_raw(key: str, raw: str, *, lease: int = 0) -> Op:
        return Op("put_raw", key, raw=raw, lease=lease)

    @staticmethod
    def delete(key: str) -> Op:
        return Op("delete", key)

    @staticmethod
    def delete_prefix(key: str) -> Op:
        return Op("delete_prefix", key)


@dataclass(eq=False)
class WriteFence:
    """The credential a task's writes are made for: `cond` compares its key."""

    cond: Cond
    # Seen to hold by one of the task's txns (it committed, or read the key back).
    held: bool = False


# The credential the current task's writes are made for (see `fence_writes`).
_FENCE: contextvars.ContextVar[WriteFence | None] = contextvars.ContextVar(
    "write_fence", default=None
)


def fence_writes(key: str, revision: int) -> None:
    """Make every write of the current task (an API request) compare `key` at
    `revision` in its own txn. The API fences a request's writes with its caller's
    token: a write whose token was revoked or changed before it committed does not
    land, and raises CredentialRevoked."""
    _FENCE.set(WriteFence(Cond.at_revision(key, revision)))


def unfence_writes() -> None:
    """Writes of the current task compare nothing more (a request that only reads)."""
    _FENCE.set(None)


def write_fence() -> WriteFence | None:
    """The fence `fence_writes` set for the current task, if any."""
    return _FENCE.get()


def check_fence(fence: WriteFence, entry: Entry | None) -> None:
    """CredentialRevoked unless `entry` (read by a failed txn) still meets `fence`."""
    if entry is None or entry.revision != fence.cond.revision:
        raise CredentialRevoked(fence.cond.key)
    fence.held = True


def _reraise_cancellation(exc: grpc.aio.AioRpcError) -> None:
    """gRPC turns a cancelled task into a CANCELLED rpc error; give the task its
    cancellation back, or a loop that retries errors would swallow its own stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def _encode(value: JSON) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str).encode()


def _decode(raw: bytes) -> JSON:
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        # A raw (non-JSON) value, e.g. the leader key: surface it rather than fail.
        return {"raw": raw.decode(errors="replace")}
    return decoded if isinstance(decoded, dict) else {"value": decoded}


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
        # One retry policy (ours, below): the client's own retries are switched off.
        self._client = Etcd3Client(
            [e.removeprefix("http://").removeprefix("https://") for e in endpoints],
            rpc_max_attempts=1,
            # Every request waits for the mirror's watch (read your writes): after an
            # etcd member dies, its streams must come back within a second, not the
            # library's default of up to 5 s between tries.
            watch_max_reconnect_backoff_seconds=0.5,
            tls_server_name=tls_server_name,
            ca_cert=ca_cert,
            cert_key=cert_key,
            cert_chain=cert_chain,
        )
        self._connected = False
        # The highest revision this client wrote: a mirror of the store waits for it,
        # so what this process wrote, it reads (federation.store.mirror).
        self.last_write = 0
        # Concurrent reads of one key share a round trip (see get_shared).
        self._next_reads: dict[str, asyncio.Future[Entry | None]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._credentials = (username, password) if username else None
        self._refresher: Any = None

    async def connect(self) -> None:
        """Open the gRPC channel. With etcd credentials, authenticate now and keep the
        etcd auth token refreshed in the background; otherwise no round trip here."""
        await self._client.connect()
        self._connected = True
        if self._credentials is not None:
            name, secret = self._credentials
            try:
                self._refresher = self._client.token_refresher(name, secret or "")
                await self._refresher.__aenter__()
            except (EtcdConnectionError, EtcdTransientError) as exc:
                raise StoreUnavailable(f"etcd authentication: {exc}") from exc

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
        """Every unary etcd call goes through here: a span (when tracing), its latency
        and its errors by operation (federation.telemetry), then `_attempts`."""
        started = time.perf_counter()
        try:
            with child_span(f"etcd {what}", **{"db.system": "etcd", "db.operation": what}):
                return await self._attempts(what, fn, deadline=deadline)
        except Exception as exc:
            kind = "unavailable" if isinstance(exc, StoreUnavailable) else type(exc).__name__
            if isinstance(exc, grpc.aio.AioRpcError):
                kind = exc.code().name.lower()
            _metrics.etcd_errors.add(1, {"operation": what, "kind": kind})
            raise
        finally:
            _metrics.etcd_duration.record(time.perf_counter() - started, {"operation": what})

    async def _attempts(
        self, what: str, fn: Callable[[float], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        """Run one etcd call, retrying transient failures until the operation's deadline.

        Each attempt gets at most `attempt_timeout` of it. When the etcd leader dies, a
        follower forwards writes to it until a new leader is elected, and those writes
        are lost without an answer: only a fresh attempt, after the election, lands.
        A retried write whose first attempt did land after all fails its own
        conditions (every txn that matters is a compare-and-swap), or is recognised
        as landed (the audit committer, which checks the head it would have written).
        """
        deadline = deadline if deadline is not None else self.timeout
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline

        async def attempt() -> T:
            remaining = max(0.05, min(self.attempt_timeout, end - loop.time()))
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that races with completion, and a stop would hang.
                async with asyncio.timeout(remaining):
                    return await fn(remaining)
            except (EtcdConnectionError, EtcdTransientError, TimeoutError) as exc:
                raise _Transient(str(exc) or type(exc).__name__) from exc
            except grpc.aio.AioRpcError as exc:
                _reraise_cancellation(exc)
                if exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                ):
                    raise _Transient(exc.code().name) from exc
                raise

        try:
            # Most calls succeed at once: only a failed first attempt pays for the
            # retry machinery.
            return await attempt()
        except _Transient:
            pass
        try:
            async for retrying in AsyncRetrying(
                retry=retry_if_exception_type(_Transient),
                stop=stop_after_delay(max(0.0, end - loop.time())),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with retrying:
                    return await attempt()
        except _Transient as exc:
            raise StoreUnavailable(f"etcd {what}: {exc}") from exc
        raise StoreUnavailable(f"etcd {what}: no attempt made")  # pragma: no cover

    def _entry(self, kv: Any) -> Entry:
        return Entry(
            key=self._rel(kv.key),
            value=_decode(kv.value),
            revision=int(kv.mod_revision),
            created=int(kv.create_revision),
            lease=int(kv.lease),
        )

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """Linearizable read of one key (Range)."""
        resp = await self._call("get", lambda t: self._kv.get(self._abs(key), timeout=t))
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

    async def scan_raw(self, prefix: str) -> tuple[list[tuple[str, bytes, int]], int]:
        """`scan` without decoding: (key, raw value, mod_revision) per key, and the
        revision of the read. For the mirror, which keeps values as bytes."""
        found: list[tuple[str, bytes, int]] = []
        revision = 0
        async for kvs, at in self._pages(prefix):
            found += [(self._rel(kv.key), bytes(kv.value), int(kv.mod_revision)) for kv in kvs]
            revision = at
        return found, revision

    async def _pages(self, prefix: str) -> AsyncIterator[tuple[Sequence[Any], int]]:
        start = self._abs(prefix)
        end = prefix_range_end(start)
        # In pages, all at the first page's revision (one consistent read): one reply
        # must stay under gRPC's 4 MiB message limit whatever the number of keys.
        key: str | bytes = start
        revision = 0
        while True:
            resp = await self._call(
                "list",
                lambda t, k=key, r=revision: self._kv.get(  # type: ignore[misc]
                    k, range_end=end, revision=r, limit=_SCAN_PAGE, timeout=t
                ),
            )
            revision = revision or int(resp.header.revision)
            yield resp.kvs, revision
            if not resp.more or not resp.kvs:
                return
            key = bytes(resp.kvs[-1].key) + b"\0"

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

    def _txn_request(
        self, conditions: Sequence[Cond], ops: Sequence[Op], read_on_failure: Sequence[str]
    ) -> Any:
        """The etcd TxnRequest, each message filled in place: building them apart and
        handing them over copies each one, which cost five times as much (a deploy's
        txns carry a few hundred operations a second)."""
        request = TxnRequest()
        for cond in conditions:
            compare = request.compare.add()
            compare.key = self._abs(cond.key).encode()
            if cond.kind == "absent":
                compare.target = Compare.CREATE
                compare.create_revision = 0
            elif cond.kind == "exists":
                compare.result = Compare.GREATER
                compare.target = Compare.CREATE
                compare.create_revision = 0
            elif cond.kind == "revision":
                compare.target = Compare.MOD
                compare.mod_revision = cond.revision
            else:
                compare.target = Compare.VALUE
                compare.value = cond.value.encode()
        for op in ops:
            key = self._abs(op.key).encode()
            if op.kind in ("put", "put_raw"):
                put = request.success.add().request_put
                put.key = key
                if op.kind == "put":
                    assert op.value is not None
                    put.value = _encode(op.value)
                else:
                    put.value = op.raw.encode()
                if op.lease:
                    put.lease = op.lease
            else:
                delete = request.success.add().request_delete_range
                delete.key = key
                if op.kind == "delete_prefix":
                    delete.range_end = prefix_range_end(key)
        for read in read_on_failure:
            request.failure.add().request_range.key = self._abs(read).encode()
        return request

    async def txn(
        self,
        conditions: Sequence[Cond],
        ops: Sequence[Op],
        *,
        read_on_failure: Sequence[str] = (),
        audit: Change | None = None,
        fenced: bool = True,
    ) -> tuple[bool, int, list[Entry | None]]:
        """Apply `ops` atomically iff every condition holds (one etcd Txn).

        Returns (succeeded, revision, entries): on failure, the current entries of the
        keys in `read_on_failure`, read in the same transaction, to explain the conflict.
        With `audit`, the change is appended to the audit log in the same txn (see
        `federation.store.audit`); Conflict if the log's head keeps moving. The txn
        also compares the task's write fence, if any (`fence_writes`), unless
        `fenced` is False (the audit committer, writing for several callers).
        """
        if audit is not None:
            # Imported here: the audit module builds on this one.
            from federation.store import audit as audit_log

            # The audit log's committer fences each write with its own caller's token.
            return await audit_log.txn(
                self, conditions, ops, audit, read_on_failure=read_on_failure
            )
        fence = _FENCE.get() if fenced else None
        if fence is not None:
            conditions = [*conditions, fence.cond]
            read_on_failure = [*read_on_failure, fence.cond.key]
        request = self._txn_request(conditions, ops, read_on_failure)
        kv = self._kv
        # KVService.txn would build (and copy) the request again; its `_rpc` is what
        # every KVService call goes through (error mapping, etcd auth metadata).
        resp = await self._call(
            "txn", lambda t: kv._rpc(kv._stub.Txn, request, operation="KV.Txn", timeout=t)
        )
        entries: list[Entry | None] = []
        if resp.succeeded and ops:
            self.last_write = max(self.last_write, int(resp.header.revision))
        if resp.succeeded and fence is not None:
            fence.held = True
        if not resp.succeeded:
            for r in resp.responses:
                kvs = r.response_range.kvs
                entries.append(self._entry(kvs[0]) if kvs else None)
            if fence is not None:
                check_fence(fence, entries.pop())
        return bool(resp.succeeded), int(resp.header.revision), entries

    async def put(self, key: str, value: JSON, *, lease: int = 0) -> int:
        """Unconditional write (Put); returns the new revision. A fenced task's put is
        a txn comparing its fence (`fence_writes`)."""
        if _FENCE.get() is not None:
            _, revision, _ = await self.txn([], [Op.put(key, value, lease=lease)])
            return revision
        data = _encode(value)
        resp = await self._call(
            "put", lambda t: self._kv.put(self._abs(key), data, lease=lease, timeout=t)
        )
        self.last_write = max(self.last_write, int(resp.header.revision))
        return int(resp.header.revision)

    async def create(
        self,
        key: str,
        value: JSON | str,
        *,
        lease: int = 0,
        also: Sequence[Op] = (),
        audit: Change | None = None,
    ) -> int:
        """Create-if-absent (Txn on create_revision == 0), with `also` in the same txn."""
        ok, rev, entries = await self.txn(
            [Cond.absent(key)],
            [Op.put(key, value, lease=lease), *also],
            read_on_failure=[key],
            audit=audit.before(0) if audit else None,
        )
        if not ok:
            current = entries[0]
            raise AlreadyExists(key, current.revision if current else None)
        return rev

    async def replace(
        self,
        key: str,
        value: JSON | str,
        *,
        revision: int | None = None,
        also: Sequence[Op] = (),
        conditions: Sequence[Cond] = (),
        audit: Change | None = None,
    ) -> int:
        """Write `key`; with `revision`, only if its mod_revision still equals it (CAS)."""
        conds = [*conditions]
        if revision is not None:
            conds.append(Cond.at_revision(key, revision))
        ok, rev, entries = await self.txn(
            conds,
            [Op.put(key, value), *also],
            read_on_failure=[key],
            audit=audit.before(revision) if audit else None,
        )
        if not ok:
            current = entries[0]
            raise Conflict(key, revision, current.revision if current else None)
        return rev

    async def delete(
        self,
        key: str,
        *,
        revision: int | None = None,
        also: Sequence[Op] = (),
        audit: Change | None = None,
    ) -> int:
        """Delete `key` if it exists (and, with `revision`, is unchanged); CAS like replace."""
        cond = Cond.at_revision(key, revision) if revision is not None else Cond.exists(key)
        ok, rev, entries = await self.txn(
            [cond],
            [Op.delete(key), *also],
            read_on_failure=[key],
            audit=audit.before(revision) if audit else None,
        )
        if not ok:
            current = entries[0]
            raise Conflict(key, revision, current.revision if current else None)
        return rev

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
                    value=None if ev.type == _EVENT_DELETE else _decode(ev.kv.value),
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
            _reraise_cancellation(exc)
            raise StoreUnavailable(f"watch: {exc.code().name}") from exc
        # gRPC can end the stream quietly when the task is cancelled; never report a
        # cancelled watch as a finished one.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        raise StoreUnavailable("watch stream ended")

    # -- maintenance ------------------------------------------------------------------

    async def snapshot(self, path: Path) -> int:
        """Write an etcd snapshot (the whole database, every prefix) to `path`; returns
        its size. Written to a temporary file and renamed, so `path` is never partial."""
        maintenance = self._client.maintenance
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

    async def compact(self, revision: int) -> None:
        """Compact etcd history up to `revision` (tests and maintenance)."""
        await self._call("compact", lambda t: self._kv.compact(revision, timeout=t))
