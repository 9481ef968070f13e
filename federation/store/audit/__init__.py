"""The audit log: who changed what, appended in the same etcd transaction as the change.

Layout (docs/keys.md): `audit/{seq:020d}` -> AuditEntry, and `audit-head` -> `{"seq",
"hash"}` of the last entry. An audited write is one txn holding the change's own
conditions and operations, the condition that `audit-head` is still the head its entry
chains onto, and the puts of the entry and the new head: the entry lands if and only
if its change does. Entries are hash-chained, so `verify` names the first entry that
was edited, removed or reordered; a cut tail with the head moved back, or a log wiped
whole, still verifies alone, and is caught against a signed checkpoint kept outside
etcd (`checkpoint`) and by the servers that saw the head go back (`monitor`).

The package, bottom up:

- `chain`: the entry format, its digest, the head, checking a run of entries (pure);
- `actor`: who acts in the current task (`acting_as`, set by the API per request);
- `checkpoint`: signed checkpoints of the head, the anchor outside etcd (pure);
- `reads`: the head, entries since a sequence number, `verify` (against a checkpoint),
  `walk` (the whole log a page at a time, verified as it is read);
- `monitor`: the highest head a server saw, and its alarm when the head goes back;
- `committer`: group commit of one Store's audited writes, and its task's lifecycle;
- `writes`: what callers use, `txn`, `create`, `replace`, `delete`, typed like the
  Store's own writes with a `Change` added.

`Store` knows nothing of this package: audited writes reach etcd as the committer's
plain `Store.txn` calls.
"""

from federation.store.audit.actor import acting_as, current_actor
from federation.store.audit.chain import (
    GENESIS,
    AuditEntry,
    Change,
    Head,
    Verification,
    check,
    digest,
    entry_key,
    make_entry,
)
from federation.store.audit.checkpoint import Checkpoint
from federation.store.audit.committer import WRITE_ATTEMPTS, Committer, committer
from federation.store.audit.monitor import HeadMonitor, follow
from federation.store.audit.reads import ChainBroken, read_head, since, verify, view, walk
from federation.store.audit.writes import create, delete, replace, txn

__all__ = [
    "GENESIS",
    "WRITE_ATTEMPTS",
    "AuditEntry",
    "ChainBroken",
    "Change",
    "Checkpoint",
    "Committer",
    "Head",
    "HeadMonitor",
    "Verification",
    "acting_as",
    "check",
    "committer",
    "create",
    "current_actor",
    "delete",
    "digest",
    "entry_key",
    "follow",
    "make_entry",
    "read_head",
    "replace",
    "since",
    "txn",
    "verify",
    "view",
    "walk",
]
