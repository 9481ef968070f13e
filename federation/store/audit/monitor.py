"""The highest audit head a server has seen, and an alarm when the head goes back.

Cutting the log's tail means moving the head back too (else `verify` names the missing
entries). Each server follows `audit-head` on the watch its mirror already holds and
remembers the highest head it saw; a lower seq, or the same seq with another hash, is
an alarm: an ERROR log line, the counter `federation_audit_head_regressions`, and a
detail in `/v1/health`. Legitimate writes only ever move the head forward; a restore
from an older backup moves it back, and is reported too (the operator knows why).

The memory is the process's own: a server started after the cut sees nothing wrong.
A signed checkpoint covers that case (federation.store.audit.checkpoint).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from federation.store import keys
from federation.store.audit.chain import Head
from federation.store.mirror import Mirror
from federation.telemetry import metrics

log = logging.getLogger(__name__)


class HeadMonitor:
    """The heads one server has seen (fed by `follow`), and its alarms."""

    def __init__(self) -> None:
        self.last: Head | None = None  # what the next head is compared with
        self.highest_seq = 0  # the highest seq ever seen, for the health detail
        self.regressions = 0
        self.detail: str | None = None  # the last alarm's sentence, with its time

    def observe(self, head: Head, now: datetime) -> str | None:
        """Note the head seen `now`; the alarm's sentence when it went back, else None.

        After an alarm, the head seen becomes the one the next is compared with: each
        move back is reported once, not again on every write that follows it."""
        last, self.last = self.last, head
        self.highest_seq = max(self.highest_seq, head.seq)
        if last is None or head.seq > last.seq or head == last:
            return None
        if head.seq == last.seq:
            sentence = f"audit head changed in place: entry {head.seq} now has another hash"
        else:
            sentence = f"audit head went back from entry {last.seq} to entry {head.seq}"
        self.regressions += 1
        self.detail = f"{sentence} (seen {now.isoformat(timespec='seconds')})"
        metrics.audit_head_regressions.add(1)
        log.error(
            "%s: the audit log was cut, wiped or restored from an older backup; "
            "check it with `federation audit verify --checkpoint FILE`",
            sentence,
        )
        return sentence

    def as_json(self) -> dict[str, Any]:
        return {
            "regressions": self.regressions,
            "highest_seq": self.highest_seq,
            "detail": self.detail,
        }


def follow(mirror: Mirror, monitor: HeadMonitor) -> None:
    """Feed `monitor` every head `mirror` applies (it must mirror `audit-head`)."""
    if keys.AUDIT_HEAD not in mirror.prefixes:
        raise ValueError(f"the mirror does not follow {keys.AUDIT_HEAD}")

    def changed(key: str, revision: int) -> None:
        # "" after a re-list, when anything may have changed.
        if key in (keys.AUDIT_HEAD, ""):
            monitor.observe(_head(mirror.json(keys.AUDIT_HEAD, "")), datetime.now(UTC))

    mirror.subscribe(changed)


def _head(value: Any) -> Head:
    """The head a stored value names; the empty log's for none (deleted) or garbage."""
    if not isinstance(value, dict):
        return Head()
    seq, hashed = value.get("seq"), value.get("hash")
    if not isinstance(seq, int) or not isinstance(hashed, str):
        return Head()
    return Head(seq, hashed)
