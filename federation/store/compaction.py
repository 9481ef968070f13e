"""Compaction of etcd's history by the leader: a window of revisions kept, no more.

etcd keeps every revision of every key until its history is compacted; heartbeats,
reports and audit entries would fill its quota within weeks, after which etcd raises
NOSPACE and refuses every write. So the leader compacts, as Kubernetes' API server
does: every replica samples the store's revision every `interval_s` (time, revision),
and the leader compacts up to the revision sampled `window_s` ago, so the last
`window_s` of history stays for watches that resume (an agent back from a short
network cut, a mirror whose stream broke). It compacts in steps of at most `step`
revisions, so etcd never takes one large compaction at once.

Never past what this server's own mirror still needs: its watch resumes from its
revision + 1 (`floor`), unless that is older than two windows (a mirror stuck that
long, or one whose prefix is quiet while others write, lists again). Every other
watch relists when its start revision is compacted: etcd tells it, `Store.watch`
raises `Compacted`, the mirror lists again and an agent's assignment watch gets a
`relist` line (federation.api.assignments), after which it lists and misses nothing.

While etcd's NOSPACE alarm is raised the window is dropped: the leader compacts up
to the current revision, since history is worth less than writes. Defragmenting and
disarming stay with a person (`federation etcd defrag`, `federation etcd disarm`): a
member being defragmented answers nothing for the while.

Compaction is not a state write, so it is not fenced by the leader key: a deposed
leader that compacts once more only does what the new one would. etcd's own
revision-mode auto-compaction (set by `up` and deploy/) is the second line of
defence, for a federation with no leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from federation.store import maintenance
from federation.store.election import LeaderElection
from federation.store.errors import NotPermitted, StoreError
from federation.store.etcd import Store
from federation.telemetry import metrics as _metrics

log = logging.getLogger(__name__)

TASK = "compaction"  # its name among the server's tasks
WINDOW_S = 300.0
STEP = 10_000


def default_interval(window_s: float) -> float:
    """A tenth of the window, between 0.1 s and 30 s."""
    return min(30.0, max(0.1, window_s / 10))


class Compactor:
    """Samples the store's revision; while `election` leads, compacts to the window."""

    def __init__(
        self,
        store: Store,
        election: LeaderElection,
        *,
        window_s: float = WINDOW_S,
        interval_s: float | None = None,
        step: int = STEP,
        floor: Callable[[], int | None] = lambda: None,
    ) -> None:
        if window_s < 0:
            raise ValueError("the history window cannot be negative")
        if step < 1:
            raise ValueError("a compaction step must be at least one revision")
        self.store = store
        self.election = election
        self.window_s = window_s
        self.interval_s = default_interval(window_s) if interval_s is None else interval_s
        self.step_revisions = step
        self.floor = floor
        self.samples: deque[tuple[float, int]] = deque()
        self.compacted = 0
        self.revision = 0

    def _sample(self, now: float, revision: int) -> None:
        self.samples.append((now, revision))
        # Two windows and a little: enough to judge a floor against (see `_target`).
        while self.samples and self.samples[0][0] < now - 2 * self.window_s - self.interval_s:
            self.samples.popleft()

    def _seen_before(self, moment: float) -> int | None:
        """The newest revision sampled at or before `moment`."""
        found = None
        for at, revision in self.samples:
            if at > moment:
                break
            found = revision
        return found

    def _target(self, now: float) -> int | None:
        target = self._seen_before(now - self.window_s)
        if target is None:
            return None
        floor = self.floor()
        if floor is not None and floor < target:
            stuck_since = self._seen_before(now - 2 * self.window_s)
            if stuck_since is None or floor >= stuck_since:
                target = floor
        return target

    async def step(self) -> str:
        """Sample, and compact if leading; returns what it did, as a sentence."""
        now = time.monotonic()
        self.compacted, self.revision = await maintenance.compacted_revision(
            self.store, at_least=self.compacted
        )
        self._sample(now, self.revision)
        _metrics.observe_history(revision=self.revision, compacted=self.compacted)
        raised = {name for _, name in await maintenance.alarms(self.store)}
        kept = f"{self.revision - self.compacted} revisions of history"
        if not self.election.is_leader:
            return f"standing by: {kept}"
        nospace = "NOSPACE" in raised
        target = self.revision if nospace else self._target(now)
        if target is None:
            return f"keeping {kept}: less than the {self.window_s:g} s window sampled yet"
        if target <= self.compacted:
            return f"nothing to compact: {kept}"
        steps = 0
        while self.compacted < target and self.election.is_leader:
            upto = min(target, self.compacted + self.step_revisions)
            # On NOSPACE, wait until the space is free: a defragmentation comes next.
            if await maintenance.compact(self.store, upto, physical=nospace):
                self.compacted = upto
            else:  # compacted further already, by etcd itself or another leader
                self.compacted, _ = await maintenance.compacted_revision(
                    self.store, at_least=self.compacted
                )
                if self.compacted < upto:
                    break
            steps += 1
        _metrics.observe_history(revision=self.revision, compacted=self.compacted)
        kept = f"{self.revision - self.compacted} revisions of history"
        why = "NOSPACE alarm: the window dropped, " if nospace else ""
        return f"{why}compacted to revision {self.compacted} in {steps} step(s), {kept} kept"

    async def run(self) -> None:
        """Step every `interval_s` for ever. NOSPACE and a refusal by etcd are logged
        as warnings (a refusal once); the rest at DEBUG."""
        refused = False
        while True:
            level = logging.DEBUG
            try:
                sentence = await self.step()
                refused = False
            except NotPermitted as exc:
                sentence = f"etcd refuses to compact: {exc}"
                level = logging.DEBUG if refused else logging.WARNING
                refused = True
            except StoreError as exc:
                sentence = f"compaction step failed: {exc}"
            if "NOSPACE" in sentence:
                level = logging.WARNING
            log.log(level, "compaction: %s", sentence)
            await asyncio.sleep(self.interval_s)
