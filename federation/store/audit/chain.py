"""The audit chain itself: the entry format, its digest, and checking a run of entries.

Pure: no I/O and no store calls, so the format and its verification can be read (and
tested) on their own. An entry is stored as its canonical JSON (sorted keys, compact,
non-ASCII kept) with `hash` = SHA-256 of that JSON without `hash`; `prev` is the
previous entry's hash (GENESIS for the first), so editing, removing or reordering an
entry breaks the chain from that entry on. The head (`audit-head`) holds the last
entry's `seq` and `hash`.

An entry's "after" revision is its own mod_revision (etcd gives a whole txn one
revision), so it is not hashed; `check` also requires mod_revision ==
create_revision, so an entry rewritten in place is caught even with a recomputed hash.
A chain cut short with the head moved back is whole again; `check` catches it only
against an `anchor`, the entry a signed checkpoint names (store.audit.checkpoint).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import from_json

from federation.store import keys
from federation.store.txn import JSON, Entry

GENESIS = "0" * 64
# Who acts when nobody was named (see federation.store.audit.actor).
SYSTEM = "system"


@dataclass(frozen=True)
class Change:
    """What an audited write does: filled in by the caller, chained by the committer."""

    action: str  # e.g. "policy.put", "service.delete", "token.revoke"
    resource: str  # e.g. "policies/eu-patient-data"
    actor: str | None = None  # None: the current task's (audit.current_actor)
    before_revision: int | None = None  # the resource's mod_revision before (0: absent)
    details: Mapping[str, Any] = field(default_factory=dict)

    def before(self, revision: int | None) -> Change:
        """This change with `before_revision` set, unless the caller already set it."""
        if self.before_revision is not None or revision is None:
            return self
        return Change(self.action, self.resource, self.actor, revision, self.details)


class AuditEntry(BaseModel):
    """One entry as stored."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    at: datetime
    actor: str
    action: str
    resource: str
    before_revision: int | None = None
    details: dict[str, Any] = {}
    prev: str
    hash: str


@dataclass(frozen=True)
class Head:
    """The last entry's sequence number and hash, and the head key's mod_revision."""

    seq: int = 0
    hash: str = GENESIS
    revision: int = 0


def entry_key(seq: int) -> str:
    return f"{keys.AUDIT}{seq:020d}"


def digest(value: Mapping[str, Any]) -> str:
    """SHA-256 of an entry's canonical JSON, its own `hash` field left out."""
    body = {k: v for k, v in value.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def make_entry(head: Head, change: Change, now: datetime) -> tuple[str, Head]:
    """The next entry after `head` as stored (JSON, hash included), and the new head.

    The canonical JSON is written once: its keys split in two sorted runs around
    `hash` (action..details, then prev..seq), so the stored text is the canonical
    text with the hash put between them, and `digest` of what is read back agrees."""
    dumps = functools.partial(
        json.dumps, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    first = dumps(
        {
            "action": change.action,
            "actor": change.actor or SYSTEM,
            "at": now.isoformat(),
            "before_revision": change.before_revision,
            "details": dict(change.details),
        }
    )
    second = dumps({"prev": head.hash, "resource": change.resource, "seq": head.seq + 1})
    canonical = first[:-1] + "," + second[1:]
    hashed = hashlib.sha256(canonical.encode()).hexdigest()
    return f'{first[:-1]},"hash":"{hashed}",{second[1:]}', Head(head.seq + 1, hashed)


def head_of(entry: Entry | None) -> Head:
    """The head an `audit-head` entry names (the empty log's when there is none)."""
    if entry is None:
        return Head()
    return Head(int(entry.value.get("seq", 0)), str(entry.value.get("hash", "")), entry.revision)


def head_value(head: Head) -> str:
    """The `audit-head` value naming `head`, as stored."""
    return json.dumps({"hash": head.hash, "seq": head.seq}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Verification:
    """The outcome of `check`: ok, how many entries, the first that fails and why, and
    the checkpoint's seq when one was checked."""

    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str | None = None
    head: str = GENESIS
    checkpoint: int | None = None

    def as_json(self) -> JSON:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad": self.first_bad,
            "reason": self.reason,
            "head": self.head,
            "checkpoint": self.checkpoint,
        }


_HASH_FIELD = b'"hash":"'


def check_raw(
    key: str, raw: bytes, revision: int, created: int, expected: int, prev: str
) -> tuple[JSON, str | None]:
    """An entry as etcd holds it (undecoded), and why it is not entry `expected`
    chained to the hash `prev` (None: it is); for a walk of a long log a page at a time
    (store.audit.reads.walk).

    The committer stores the canonical text with the hash put in, so the hash is first
    checked on the bytes with the `"hash":"...",` cut out (no re-encoding); only text
    that is not in that form is checked the long way, by `digest` of the parsed value:
    the verdict is the same, the fast way is several times quicker."""
    try:
        value = from_json(raw)
    except ValueError:
        return {}, f"entry {expected} is not JSON"
    if not isinstance(value, dict):
        return {}, f"entry {expected} is not a JSON object"
    claimed = value.get("hash")
    hashed = False
    at = raw.find(_HASH_FIELD)
    if isinstance(claimed, str) and at >= 0:
        start, end = at + len(_HASH_FIELD), at + len(_HASH_FIELD) + len(claimed)
        if raw[start:end] == claimed.encode() and raw[end : end + 2] == b'",':
            view = memoryview(raw)  # hashed in place: no copy of either part
            digest_ = hashlib.sha256(view[:at])
            digest_.update(view[end + 2 :])
            hashed = digest_.hexdigest() == claimed
    seq = value.get("seq")
    if (
        hashed
        and type(seq) is int
        and seq == expected
        and value.get("prev") == prev
        and revision == created
        and key == entry_key(expected)
    ):
        return value, None  # the usual case, without building an Entry to say so
    entry = Entry(key, value, revision, created, 0)
    return value, _problem(entry, expected, prev, hash_checked=hashed)


def _problem(entry: Entry, expected: int, prev: str, *, hash_checked: bool = False) -> str | None:
    value = entry.value
    if entry.key != entry_key(expected):
        return f"entry {expected} is missing (the next key is {entry.key})"
    if value.get("seq") != expected:
        return f"entry {expected} says it is entry {value.get('seq')}"
    if not hash_checked and value.get("hash") != digest(value):
        return f"entry {expected}: its content does not match its hash"
    if value.get("prev") != prev:
        return f"entry {expected}: does not chain to the entry before it"
    if entry.revision != entry.created:
        return f"entry {expected}: was rewritten after it was written"
    return None


def _anchor_problem(entries: Sequence[Entry], anchor: Head) -> tuple[int, str] | None:
    """Where and why the log no longer holds the checkpointed entry `anchor`."""
    last = len(entries)
    named = f"checkpoint seq {anchor.seq}"
    if not last:
        return 1, f"the audit log is empty, but {named} was signed when it held that entry"
    if anchor.seq > last:
        return last + 1, (
            f"the log ends at entry {last}, before {named}: entries were removed "
            "and the head moved back"
        )
    if entries[anchor.seq - 1].value.get("hash") != anchor.hash:
        return (
            anchor.seq,
            f"entry {anchor.seq} is not the one {named} signed: the log was rewritten",
        )
    return None


def check(
    entries: Sequence[Entry], head: Entry | None, *, anchor: Head | None = None
) -> Verification:
    """Walk the chain from the first entry, every entry there is; stop at the first one
    that does not verify. Then: the log must still hold the checkpointed entry `anchor`
    (seq and hash, from a signed checkpoint), and the head must name the last entry
    (an entry past the head was written without moving it, or the head was moved back)."""
    checked = anchor.seq if anchor is not None else None
    prev = GENESIS
    for expected, entry in enumerate(entries, start=1):
        problem = _problem(entry, expected, prev)
        if problem is not None:
            return Verification(False, len(entries), expected, problem, prev, checked)
        prev = str(entry.value["hash"])
    last = len(entries)
    if anchor is not None and (lost := _anchor_problem(entries, anchor)) is not None:
        return Verification(False, last, lost[0], lost[1], prev, checked)
    if head is None:
        if last:
            return Verification(False, last, last, "the audit head is missing", prev, checked)
        return Verification(True, 0, head=prev, checkpoint=checked)
    head_seq = head.value.get("seq")
    if isinstance(head_seq, int) and head_seq < last:
        reason = (
            f"entries {head_seq + 1} to {last} lie past the head (entry {head_seq}): "
            "written without moving the head, or the head was moved back"
        )
        return Verification(False, last, head_seq + 1, reason, prev, checked)
    if head_seq != last or head.value.get("hash") != prev:
        reason = f"the head names entry {head_seq} but the log ends at entry {last}"
        return Verification(
            False, last, last + 1 if head_seq != last else last, reason, prev, checked
        )
    return Verification(True, last, head=prev, checkpoint=checked)
