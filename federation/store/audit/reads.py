"""Reading the audit log back: the head, entries from a sequence number, verification."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

from pydantic_core import from_json

from federation.store import keys
from federation.store.audit.chain import (
    GENESIS,
    Head,
    Verification,
    check,
    check_raw,
    entry_key,
    head_of,
)
from federation.store.etcd import JSON, Entry, Store
from federation.store.txn import decode

T = TypeVar("T")


class ChainBroken(Exception):
    """The audit log does not verify: from entry `seq` on, nothing it says can be
    trusted (a report built on it must not be printed)."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"the audit log does not verify at entry {seq}: {reason}")
        self.seq = seq
        self.reason = reason


async def read_head(store: Store) -> Head:
    """The current head (Range on `audit-head`)."""
    return head_of(await store.get(keys.AUDIT_HEAD))


def view(entry: Entry) -> JSON:
    """An entry as the API shows it: as stored, plus the revision the change made."""
    return {**entry.value, "after_revision": entry.revision}


async def since(store: Store, seq: int, *, limit: int = 1000) -> tuple[list[JSON], int]:
    """Entries with a sequence number above `seq` (at most `limit`), and the revision
    read at. Read from entry `seq + 1` on, in pages bounded by entry number: what the
    dashboard polls (the latest few) costs those few, however long the log."""
    revision = await store.revision()
    found: list[JSON] = []
    pages = store.scan_pages(keys.AUDIT, stride=_stride, start=entry_key(seq + 1))
    async with contextlib.aclosing(pages):
        async for page in pages:
            found += [{**from_json(raw), "after_revision": rev} for _, raw, rev, _ in page]
            if len(found) >= limit:
                break
    return found[:limit], revision


async def walk(store: Store, *, anchor: Head | None = None) -> AsyncIterator[list[JSON]]:
    """Every entry as `view` shows it, a page at a time, each verified as it is read
    (as `verify` does, without holding the whole log): ChainBroken at the first entry
    that fails, or at the end if the head does not name the last entry or the log no
    longer holds the checkpointed entry `anchor`. Yields only verified pages, so a
    consumer that sees ChainBroken has seen nothing past the break."""
    head: JSON | None = None
    expected, prev = 1, GENESIS
    async for page in _read_ahead(store.scan_pages(_AUDIT_KEYS, stride=_stride)):
        views = []
        for key, raw, revision, created in page:
            if key == keys.AUDIT_HEAD:
                try:
                    head = from_json(raw)
                except ValueError:
                    raise ChainBroken(expected, "the audit head is not JSON") from None
                continue
            if not key.startswith(keys.AUDIT):
                continue
            value, problem = check_raw(key, raw, revision, created, expected, prev)
            if problem is not None:
                raise ChainBroken(expected, problem)
            if anchor is not None and expected == anchor.seq and value["hash"] != anchor.hash:
                raise ChainBroken(expected, "not the entry the checkpoint signed: rewritten")
            prev = str(value["hash"])
            value["after_revision"] = revision
            views.append(value)
            expected += 1
        if views:
            yield views
    last = expected - 1
    if anchor is not None and anchor.seq > last:
        raise ChainBroken(last + 1, f"the log ends at entry {last}, before the checkpoint's")
    try:
        named = head_of(Entry(keys.AUDIT_HEAD, head, 0, 0, 0) if isinstance(head, dict) else None)
    except (ValueError, TypeError):
        raise ChainBroken(last + 1, "the audit head does not name an entry") from None
    if (named.seq, named.hash) != (last, prev if last else GENESIS):
        raise ChainBroken(last + 1, f"the head names entry {named.seq}; the log ends at {last}")


def _stride(last: str, n: int) -> str | None:
    """The key the `n` entries after entry key `last` lie before (None: not an entry's)."""
    seq = last.removeprefix(keys.AUDIT)
    if (
        last == seq
        or len(seq) != len(entry_key(0)) - len(keys.AUDIT)
        or not (seq.isascii() and seq.isdigit())
    ):
        return None
    return entry_key(int(seq) + 1 + n)


async def _read_ahead(pages: AsyncIterator[T]) -> AsyncIterator[T]:
    """`pages`, with the next one asked of etcd while the caller works on this one: etcd
    reading a page and this process checking the one before overlap."""
    ahead: asyncio.Task[T] = asyncio.ensure_future(anext(pages))
    try:
        while True:
            try:
                page = await ahead
            except StopAsyncIteration:
                return
            ahead = asyncio.ensure_future(anext(pages))
            yield page
    finally:
        ahead.cancel()
        # The caller has what it needs (or its own error to raise): whatever the read
        # ahead ended with is not its news.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ahead


async def verify(store: Store, *, anchor: Head | None = None) -> Verification:
    """Check the whole chain, the head, and (given) a checkpoint's entry `anchor`.

    The head and the entries are read in one scan, at one revision: every entry was
    there with that head, so an entry past the head is an anomaly, not a write that
    landed between two reads."""
    # Pages bounded by entry number, as `walk` reads them (etcd's cost stays linear).
    found = [
        Entry(key, decode(raw), revision, created, 0)
        async for page in store.scan_pages(_AUDIT_KEYS, stride=_stride)
        for key, raw, revision, created in page
    ]
    head = next((e for e in found if e.key == keys.AUDIT_HEAD), None)
    entries = [e for e in found if e.key.startswith(keys.AUDIT)]
    return check(entries, head, anchor=anchor)


# A prefix of both `audit/` and `audit-head`: one range holds them both.
_AUDIT_KEYS = "audit"
assert keys.AUDIT.startswith(_AUDIT_KEYS) and keys.AUDIT_HEAD.startswith(_AUDIT_KEYS)
