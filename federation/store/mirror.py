"""A watched in-memory copy of some prefixes of the store.

The controller and the API's reads answer from it instead of re-reading etcd: one
scan per prefix at start, then one watch on the whole keyspace applies every change,
so a controller pass or a status read costs what it touches, not the size of the
world.

Values are kept as the raw JSON bytes etcd holds, and parsed by whoever reads them:
pydantic models of every service would be several times the size of their bytes, so
the prefixes named in `packed` go further and hold each value deflated against a
sibling (`_Packer`). Prefixes named in `cached` also keep their parsed model, for the
few small keys every pass reads (regions, heartbeats, reports).

Consistency: `sync()` waits until the watch has applied every write this process made
(no round trip), so a read after a write through this server sees it. `catch_up()`
goes further, for the API's reads: it waits until the copy holds every audited write
acknowledged before it was called, through any replica. Every write a client makes is
audited in its own txn, which moves `audit-head`; so a linearizable read of that one
key gives a revision the copy must reach, and the wait is for this watch to deliver
it (a few ms; after a partition heals, until the watch has reconnected). Reads that
must be current for a write (bearer tokens, a spec before it is changed) go to etcd,
or are checked by the write's compare-and-swap. (A barrier on etcd's current revision
would not do: that revision also counts writes under other prefixes, which this watch
never sees; and etcd 3.5.1's watch progress responses may overtake events.)

The scan of each prefix and the watch's start are not one revision: the watch
replays from before the first scan, and an event only replaces a value older than
itself, so the copy converges on etcd's state once the watch has passed the scans.

Lifecycle: the watch is the eternal task `store mirror` of the `Tasks` given (the
server's), or of a group of its own when the mirror is used alone. `start()` starts
it (and, by default, waits for the first load); `stop()` ends it; `sync()` starts it
again should it have been stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from federation.runtime import Tasks
from federation.store import keys
from federation.store.errors import Compacted, StoreError, StoreUnavailable
from federation.store.etcd import Store

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# Called with (key, revision) for every change applied, and with ("", 0) after a
# re-list, when anything may have changed.
Listener = Callable[[str, int], None]

TASK = "store mirror"  # the watch's name among the server's tasks
_PRIMED = 2048  # parsed values kept from this process's own writes (see `prime`)
_REVISION = struct.Struct("<Q")
# Deflate with a 4 KiB window and little state: the values are small, and a copy of
# the primed compressor is made for each one.
_WBITS = -12
_MEM_LEVEL = 2


def _revision(held: bytes) -> int:
    return int(_REVISION.unpack_from(held)[0])


class _Packer:
    """How one prefix's values are held: the mod_revision (8 bytes), then the value,
    deflated against the first value the prefix saw when `compress` is set.

    Records of one kind share nearly all their bytes (keys, defaults, structure), so
    with a sibling as the preset dictionary a record packs into a few percent of its
    size, and the services, placements and assignments of a large federation take a
    few MB, not hundreds. Copying the primed compressor and inflating one value are
    cheap next to parsing the JSON that every reader does anyway.
    """

    def __init__(self, *, compress: bool) -> None:
        self.compress = compress
        self._zdict = b""
        self._base: zlib._Compress | None = None

    def pack(self, raw: bytes, revision: int) -> bytes:
        head = _REVISION.pack(revision)
        if not self.compress:
            return head + raw
        if self._base is None:
            self._zdict = raw[: 1 << -_WBITS]
            self._base = zlib.compressobj(
                1, zlib.DEFLATED, _WBITS, _MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, self._zdict
            )
        deflate = self._base.copy()
        return head + deflate.compress(raw) + deflate.flush()

    def unpack(self, held: bytes) -> tuple[bytes, int]:
        """The raw value and its revision."""
        body = memoryview(held)[_REVISION.size :]
        if not self.compress:
            return bytes(body), _revision(held)
        inflate = zlib.decompressobj(_WBITS, self._zdict)
        return inflate.decompress(body) + inflate.flush(), _revision(held)


class Mirror:
    """The keys under `prefixes`, kept current by a watch. Start with `start()`."""

    def __init__(
        self,
        store: Store,
        prefixes: Sequence[str],
        *,
        cached: Sequence[str] = (),
        packed: Sequence[str] = (),
        grouped: Sequence[str] = (),
        sync_timeout: float = 5.0,
        tasks: Tasks | None = None,
    ) -> None:
        self.store = store
        self.prefixes = tuple(prefixes)
        self.cached = tuple(cached)
        self.sync_timeout = sync_timeout
        self._packers = {p: _Packer(compress=p in packed) for p in self.prefixes}
        # For the prefixes in `grouped`, the tails under each first segment
        # ("{region}/{service}" by region): `under` answers without a scan.
        self._groups: dict[str, dict[str, set[str]]] = {p: {} for p in grouped}
        self._data: dict[str, dict[str, bytes]] = {p: {} for p in self.prefixes}
        self._models: dict[tuple[str, str], tuple[int, BaseModel]] = {}
        self._primed: dict[tuple[str, str], tuple[int, BaseModel]] = {}
        self.revision = 0
        self._listeners: list[Listener] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loaded = asyncio.Event()
        self._tasks = tasks if tasks is not None else Tasks()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, *, wait: bool = True) -> None:
        """Start following the store, unless already (idempotent); with `wait`, return
        once the prefixes are loaded (StoreUnavailable after `sync_timeout`)."""
        if self._task is None or self._task.done():
            self._task = self._tasks.start(TASK, self._run)
        if wait:
            await self._wait_loaded()

    async def stop(self) -> None:
        """Stop following the store; whoever waits for a revision gets StoreUnavailable."""
        # Bounded by the task group: a gRPC stream cannot hold a shutdown hostage.
        await self._tasks.stop(TASK)
        self._task = None
        self._loaded.clear()
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(StoreUnavailable("store mirror stopped"))
                future.exception()
        self._waiters = []

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(key, revision)` for every change applied from now on."""
        self._listeners.append(listener)

    async def _wait_loaded(self) -> None:
        try:
            async with asyncio.timeout(self.sync_timeout):
                await self._loaded.wait()
        except TimeoutError:
            raise StoreUnavailable(
                f"store mirror not loaded within {self.sync_timeout:g} s"
                + (f": {self._failure}" if self._failure else "")
            ) from None

    async def _run(self) -> None:
        relist = True
        while True:
            try:
                if relist:
                    await self._load()
                    relist = False
                async for events in self.store.watch_raw("", start_revision=self.revision + 1):
                    self._apply(events)
            except Compacted as exc:
                log.info("store mirror: history compacted (%s); re-listing", exc)
                relist = True
            except StoreError as exc:
                self._failure = exc
                log.info("store mirror: watch restarting: %s", exc)
                await asyncio.sleep(0.5)

    async def _load(self) -> None:
        start = await self.store.revision()
        data: dict[str, dict[str, bytes]] = {}
        for prefix in self.prefixes:
            entries, _ = await self.store.scan_raw(prefix)
            pack = self._packers[prefix].pack
            data[prefix] = {
                sys.intern(key[len(prefix) :]): pack(raw, rev) for key, raw, rev in entries
            }
        self._data = data
        self._models = {}
        for prefix, groups in self._groups.items():
            groups.clear()
            for tail in data[prefix]:
                self._group(prefix, tail, present=True)
        self.revision = start
        self._failure = None
        self._loaded.set()
        for listener in self._listeners:
            listener("", 0)
        self._wake()

    def _apply(self, events: Sequence[tuple[str, bytes | None, int]]) -> None:
        for key, raw, revision in events:
            prefix = self._prefix_of(key)
            if prefix is not None:
                table = self._data[prefix]
                tail = sys.intern(key[len(prefix) :])
                held = table.get(tail)
                if raw is None:
                    if held is None or _revision(held) <= revision:
                        table.pop(tail, None)
                        self._models.pop((prefix, tail), None)
                        self._group(prefix, tail, present=False)
                elif held is None or _revision(held) < revision:
                    table[tail] = self._packers[prefix].pack(raw, revision)
                    self._group(prefix, tail, present=True)
                for listener in self._listeners:
                    listener(key, revision)
            self.revision = max(self.revision, revision)
        self._wake()

    def _group(self, prefix: str, tail: str, *, present: bool) -> None:
        groups = self._groups.get(prefix)
        if groups is None:
            return
        head, slash, _ = tail.partition("/")
        if not slash:
            return
        if present:
            groups.setdefault(head, set()).add(tail)
        elif head in groups:
            groups[head].discard(tail)
            if not groups[head]:
                del groups[head]

    def _prefix_of(self, key: str) -> str | None:
        for prefix in self.prefixes:
            if key.startswith(prefix):
                return prefix
        return None

    def _wake(self) -> None:
        waiting = []
        for revision, future in self._waiters:
            if future.done():
                continue
            if revision <= self.revision:
                future.set_result(None)
            else:
                waiting.append((revision, future))
        self._waiters = waiting

    # -- consistency --------------------------------------------------------------------

    async def wait_for(self, revision: int) -> None:
        """Return once every change up to `revision` is applied (StoreUnavailable if
        that takes longer than `sync_timeout`)."""
        await self._wait_loaded()
        if revision <= self.revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, future))
        try:
            async with asyncio.timeout(self.sync_timeout):
                await future
        except TimeoutError:
            raise StoreUnavailable(
                f"store mirror is behind: at revision {self.revision}, waiting for {revision}"
            ) from None

    async def sync(self) -> int:
        """Wait until the mirror holds every write this process made through its store
        (read your own writes). Others' writes arrive by the watch, within a few ms.
        Returns the mirror's revision: a watch from the next one misses nothing."""
        running = self._task is not None and not self._task.done()
        if not (running and self._loaded.is_set() and self.store.last_write <= self.revision):
            # Only when behind: every request syncs, and timers cost on each one.
            await self.start()
            await self.wait_for(self.store.last_write)
        return self.revision

    async def catch_up(self, known: int = 0) -> int:
        """Wait until the copy holds every audited write acknowledged before this call,
        through any server (see the module's docstring): one shared linearizable read
        of `audit-head`, then the watch. `known`: etcd's revision as a linearizable read
        begun after the caller's own start found it; a copy already there needs no more
        (the usual case when this prefix is etcd's only user). StoreUnavailable when
        etcd cannot answer or the watch does not get there within `sync_timeout`.
        Returns the mirror's revision."""
        running = self._task is not None and not self._task.done() and self._loaded.is_set()
        if running and known and self.revision >= known:
            return self.revision
        head = await self.store.get_shared(keys.AUDIT_HEAD)
        if not running:
            await self.start()
        if head is not None:
            await self.wait_for(head.revision)
        return self.revision

    def needs(self) -> int | None:
        """The oldest revision this mirror's watch would resume from (its revision + 1),
        or None before its first load (which lists, needing no history)."""
        return self.revision + 1 if self._loaded.is_set() else None

    # -- reads --------------------------------------------------------------------------

    def raw(self, prefix: str, tail: str) -> tuple[bytes, int] | None:
        """The raw value and mod_revision of `prefix + tail`, if present."""
        held = self._data[prefix].get(tail)
        return self._packers[prefix].unpack(held) if held is not None else None

    def has(self, prefix: str, tail: str) -> bool:
        return tail in self._data[prefix]

    def tails(self, prefix: str) -> Iterator[str]:
        """The keys under `prefix`, without it (a snapshot: safe to change while iterating)."""
        return iter(list(self._data[prefix]))

    def under(self, prefix: str, head: str) -> list[str]:
        """The tails `head/...` under `prefix`, one of the `grouped` prefixes."""
        return sorted(self._groups[prefix].get(head, ()))

    def count(self, prefix: str) -> int:
        return len(self._data[prefix])

    def revisions(self, prefix: str) -> tuple[tuple[str, int], ...]:
        """Every key under `prefix` with its revision: while this answer is the same,
        nothing under the prefix changed (for the callers that cache what they parse)."""
        return tuple((tail, _revision(held)) for tail, held in self._data[prefix].items())

    def get(self, prefix: str, tail: str, model: type[M]) -> tuple[M, int] | None:
        """`prefix + tail` parsed as `model`, with its revision; None if absent or if it
        does not validate (logged: only validated writes reach the store)."""
        held = self._data[prefix].get(tail)
        if held is None:
            return None
        revision = _revision(held)
        memo = self._models.get((prefix, tail))
        if memo is None:
            memo = self._primed.get((prefix, tail))
        if memo is not None and memo[0] == revision and isinstance(memo[1], model):
            return memo[1], revision
        try:
            parsed = model.model_validate_json(self._packers[prefix].unpack(held)[0])
        except ValidationError:
            log.error("stored %s%s does not validate as %s; skipped", prefix, tail, model.__name__)
            return None
        if prefix in self.cached:
            self._models[(prefix, tail)] = (revision, parsed)
        return parsed, revision

    def prime(self, prefix: str, tail: str, revision: int, parsed: BaseModel) -> None:
        """Offer the parsed form of a value this process just wrote at `revision`, so
        the next reader of that revision (the controller, placing a deploy) need not
        parse it again. Only the last few thousand are kept."""
        self._primed[(prefix, tail)] = (revision, parsed)
        if len(self._primed) > _PRIMED:
            del self._primed[next(iter(self._primed))]

    def all(self, prefix: str, model: type[M]) -> dict[str, tuple[M, int]]:
        """Every key under `prefix`, parsed (meant for the small, cached prefixes)."""
        found: dict[str, tuple[M, int]] = {}
        for tail in list(self._data[prefix]):
            got = self.get(prefix, tail, model)
            if got is not None:
                found[tail] = got
        return found

    def json(self, prefix: str, tail: str) -> Any:
        """`prefix + tail` as decoded JSON, or None."""
        held = self.raw(prefix, tail)
        if held is None:
            return None
        with contextlib.suppress(ValueError):
            return json.loads(held[0])
        return None
