"""Reading the audit log back: the head, entries from a sequence number, verification."""

from __future__ import annotations

from federation.store import keys
from federation.store.audit.chain import Head, Verification, check, entry_key, head_of
from federation.store.etcd import JSON, Entry, Store


async def read_head(store: Store) -> Head:
    """The current head (Range on `audit-head`)."""
    return head_of(await store.get(keys.AUDIT_HEAD))


def view(entry: Entry) -> JSON:
    """An entry as the API shows it: as stored, plus the revision the change made."""
    return {**entry.value, "after_revision": entry.revision}


async def since(store: Store, seq: int, *, limit: int = 1000) -> tuple[list[JSON], int]:
    """Entries with a sequence number above `seq` (at most `limit`), and the read's revision."""
    entries, revision = await store.scan(keys.AUDIT)
    found = [view(e) for e in entries if int(e.value.get("seq", 0)) > seq]
    return found[:limit], revision


async def verify(store: Store) -> Verification:
    """Check the chain up to the head. The head is read first: entries appended after
    that read are past it and left for the next verification."""
    head = await store.get(keys.AUDIT_HEAD)
    entries, _ = await store.scan(keys.AUDIT)
    if head is not None:
        last_key = entry_key(int(head.value.get("seq", 0)))
        entries = [e for e in entries if e.key <= last_key]
    return check(entries, head)
