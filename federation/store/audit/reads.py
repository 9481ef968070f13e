"""Reading the audit log back: the head, entries from a sequence number, verification."""

from __future__ import annotations

from federation.store import keys
from federation.store.audit.chain import Head, Verification, check, head_of
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


async def verify(store: Store, *, anchor: Head | None = None) -> Verification:
    """Check the whole chain, the head, and (given) a checkpoint's entry `anchor`.

    The head and the entries are read in one scan, at one revision: every entry was
    there with that head, so an entry past the head is an anomaly, not a write that
    landed between two reads."""
    found, _ = await store.scan(_AUDIT_KEYS)
    head = next((e for e in found if e.key == keys.AUDIT_HEAD), None)
    entries = [e for e in found if e.key.startswith(keys.AUDIT)]
    return check(entries, head, anchor=anchor)


# A prefix of both `audit/` and `audit-head`: one range holds them both.
_AUDIT_KEYS = "audit"
assert keys.AUDIT.startswith(_AUDIT_KEYS) and keys.AUDIT_HEAD.startswith(_AUDIT_KEYS)
