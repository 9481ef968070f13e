"""Leader election among server replicas: one key, a lease, create-if-absent.

The leader key (`leader`) holds the winner's identity and lives on its lease. Local
leadership is believed only until `monotonic() + ttl` measured from the start of the
last successful refresh, so a replica that cannot reach etcd stops acting as leader
before etcd could hand the key to another. Controller writes add `fence()` to their
transaction conditions, so a deposed leader cannot write even if it still thinks it
leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from federation.store import keys
from federation.store.errors import StoreError
from federation.store.etcd import Cond, Op, Store

log = logging.getLogger(__name__)

LEADER_KEY = keys.LEADER


class LeaderElection:
    """Campaign for the leader key and keep it while this replica is alive."""

    def __init__(self, store: Store, *, identity: str, ttl: int = 10) -> None:
        if ttl < 2:
            raise ValueError("election ttl must be at least 2 s (etcd's minimum lease)")
        self.store = store
        self.identity = identity
        self.ttl = ttl
        self._lease = 0
        self._valid_until = 0.0
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the key and its local lease has not run out."""
        return self._lease != 0 and time.monotonic() < self._valid_until

    def fence(self) -> Cond:
        """Transaction condition that holds only while this replica is the leader."""
        return Cond.value_is(LEADER_KEY, self.identity)

    async def leader(self) -> str | None:
        """Identity of the current leader, as etcd sees it."""
        raw = await self.store.get_raw(LEADER_KEY)
        return raw[0] if raw else None

    async def step(self) -> str:
        """One cycle of the election loop; returns what it did, as a sentence."""
        if self._lease:
            started = time.monotonic()
            try:
                # Unanswered when the local lease runs out, the refresh ends leadership
                # then, not at the store's deadline (etcd cut off: seconds later).
                async with asyncio.timeout(max(0.0, self._valid_until - started)):
                    ttl = await self.store.keepalive(self._lease)
            except (StoreError, TimeoutError) as exc:
                why = str(exc) or "no answer before the local lease ran out"
                if not self.is_leader:
                    self._drop()
                    return f"lost leadership: cannot refresh the lease ({why})"
                return f"still leader until the local lease runs out; refresh failed ({why})"
            if ttl <= 0:
                self._drop()
                return "lost leadership: the lease expired"
            self._valid_until = started + self.ttl
            return "refreshed leadership"
        current = await self.store.get_raw(LEADER_KEY)
        if current is not None:
            return "standing by: another replica holds the leader key"
        # Counted from before the grant: etcd starts the lease's TTL when it grants
        # it, and a slow answer must not make local leadership outlive the lease.
        started = time.monotonic()
        lease = await self.store.grant(self.ttl)
        ok, _, found = await self.store.txn(
            [Cond.absent(LEADER_KEY)],
            [Op.put_raw(LEADER_KEY, self.identity, lease=lease)],
            read_on_failure=[LEADER_KEY],
        )
        # On our lease: an attempt etcd answered too late took the key, and this was
        # its retry. Revoking the lease would give up what was just won.
        if not ok and not (found[0] is not None and found[0].lease == lease):
            await self.store.revoke(lease)
            return "standing by: another replica holds the leader key"
        self._lease = lease
        self._valid_until = started + self.ttl
        self.changed.set()
        return "acquired the leader key"

    def _drop(self) -> None:
        self._lease = 0
        self._valid_until = 0.0
        self.changed.set()

    async def run(self) -> None:
        """Campaign forever: refresh at ttl/3 as leader, poll at ttl/4 as standby."""
        last = ""
        while True:
            try:
                sentence = await self.step()
            except StoreError as exc:
                sentence = f"election step failed: {exc}"
            if sentence != last and sentence != "refreshed leadership":
                log.info("election: %s", sentence)
            last = sentence
            await asyncio.sleep(self.ttl / 3 if self._lease else min(0.5, self.ttl / 4))

    async def resign(self) -> None:
        """Give the key up at once (revoke the lease) so a standby takes over now."""
        lease, self._lease = self._lease, 0
        self._valid_until = 0.0
        if lease:
            with contextlib.suppress(StoreError):
                await self.store.revoke(lease)
            self.changed.set()
