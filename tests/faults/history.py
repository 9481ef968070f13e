"""A history of client operations, and the checker run on it after a fault.

Every operation (a deploy, a delete, a policy change, a read) is logged with when it
started, when it ended (the test's monotonic clock), and its outcome:

- `ok`: a 2xx. A write is acknowledged; a read returned a value.
- `fail`: a 4xx. Definitely not applied (409, 404 on delete: nothing written).
- `unknown`: no answer, or a 5xx: a write may or may not have landed.

Each write puts a value no other write to that key puts (a delete puts None), so a
read's value names the write it came from. The checker then holds the history to:

1. every acknowledged write is present: the final value of each key is the value of
   a write (acknowledged or unknown) that no acknowledged write *started after it
   ended* superseded;
2. no stale read: a read returned the value of a write that began before the read
   ended and that no acknowledged write which finished before the read began had
   superseded.

That is linearizability for single-key registers, checked per key, which suffices
here: each key is written by one client at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "fail", "unknown"]
NEVER = float("-inf")


def outcome_of(status: int) -> Outcome:
    """How an HTTP status counts: 2xx ok, 4xx fail, anything else unknown."""
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500:
        return "fail"
    return "unknown"


@dataclass(frozen=True)
class Op:
    """One client operation; `value` is what a write put or what a read returned."""

    kind: Literal["write", "read"]
    key: str
    value: str | None
    start: float
    end: float
    outcome: Outcome
    status: int = 0
    via: str = ""


@dataclass
class History:
    """Operations as they complete, from any number of client threads."""

    ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write(
        self, key: str, value: str | None, call: Callable[[], int], *, via: str = ""
    ) -> Outcome:
        """Run `call` (it returns the HTTP status) as a write of `value` to `key`."""
        start = time.monotonic()
        status = call()
        op = Op("write", key, value, start, time.monotonic(), outcome_of(status), status, via)
        with self._lock:
            self.ops.append(op)
        return op.outcome

    def read(
        self, key: str, call: Callable[[], tuple[int, str | None]], *, via: str = ""
    ) -> Outcome:
        """Run `call` (it returns the status and the value found; a 404 is absent)."""
        start = time.monotonic()
        status, value = call()
        outcome: Outcome = "ok" if status == 404 else outcome_of(status)
        op = Op("read", key, value, start, time.monotonic(), outcome, status, via)
        with self._lock:
            self.ops.append(op)
        return op.outcome

    def snapshot(self) -> list[Op]:
        with self._lock:
            return list(self.ops)


_INITIAL = Op("write", "", None, NEVER, NEVER, "ok")  # every key starts absent


def _live(writes: list[Op], before: float, began_by: float) -> list[Op]:
    """The writes a read (or the final state) at that point may show: begun before
    `began_by`, and not superseded by an acknowledged write that started after it
    ended and finished before `before`."""
    acked = [w for w in writes if w.outcome == "ok"]
    return [
        w
        for w in writes
        if w.outcome != "fail"
        and w.start < began_by
        and not any(a.start > w.end and a.end < before for a in acked)
    ]


def lost_writes(ops: Iterable[Op], final: dict[str, str | None]) -> list[str]:
    """Rule 1: the keys whose `final` value (read after the fault healed and writes
    stopped) is not one a surviving write put."""
    problems = []
    for key, writes in sorted(_writes(ops).items()):
        allowed = {w.value for w in _live(writes, float("inf"), float("inf"))}
        if final.get(key) not in allowed:
            acked = [w for w in writes if w.outcome == "ok" and w is not _INITIAL]
            last = max(acked, key=lambda w: w.end, default=None)
            problems.append(
                f"lost write: {key} is {final.get(key)!r} at the end, expected one of "
                f"{sorted(map(repr, allowed))} (last acknowledged: {last})"
            )
    return problems


def stale_reads(ops: Iterable[Op]) -> list[Op]:
    """Rule 2: the reads that returned a value an acknowledged write which finished
    before the read began had already replaced (or a value never written)."""
    ops = list(ops)
    by_key = _writes(ops)
    return [
        read
        for read in ops
        if read.kind == "read"
        and read.outcome == "ok"
        and read.value
        not in {w.value for w in _live(by_key.get(read.key, [_INITIAL]), read.start, read.end)}
    ]


def violations(ops: Iterable[Op], final: dict[str, str | None]) -> list[str]:
    """Everything in the history that breaks either rule, as sentences; [] if none."""
    ops = list(ops)
    return lost_writes(ops, final) + [
        f"stale read: {r.key} read {r.value!r} via {r.via} [{r.start:.3f}, {r.end:.3f}]"
        for r in stale_reads(ops)
    ]


def _writes(ops: Iterable[Op]) -> dict[str, list[Op]]:
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind == "write":
            by_key.setdefault(op.key, [_INITIAL]).append(op)
    return by_key
