"""The open assignment watches, and what ends them.

A watch (`GET /v1/regions/{r}/assignments?watch=true`, federation.api.assignments) is
authorized when it opens but may stream for days, so each open watch is registered
here under the hash of its token and its region, and is ended when the right to open
it ends:

- its token is revoked, rotated away (a rotation deletes the region's old tokens), or
  changed so that it no longer allows the watch;
- its region is deleted;
- its token expires (a timer at the expiry time).

The first two are seen by one listener on the server's mirror, which already watches
the tokens and regions prefixes: no polling, and a change costs a lookup of the
watches it concerns. The mirror applies a change before it calls its listeners, so a
check reads the state after the change; a re-list of the mirror re-checks every watch.
Ending a watch only marks it and wakes its stream, which writes a last `closed` line
and returns (the server's side of "within a second": a few ms after the mirror).

A token holds at most `per_token` watches at once; `open` refuses the next one.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from federation.model.token import Role, TokenRecord, role_allows
from federation.store import keys
from federation.store.mirror import Mirror
from federation.telemetry import metrics as _metrics


def refusal(record: TokenRecord, region: str) -> str | None:
    """Why `record` may not read `region`'s assignments, or None: the region's own
    token may, and so may anyone who may view the federation."""
    if record.role is Role.REGION:
        if record.region != region:
            return f"only region {region}'s own token may read its assignments"
        return None
    if not role_allows(record.role, Role.VIEWER):
        return "this action needs the viewer role"
    return None


class TooManyWatches(Exception):
    """The token already holds as many watches as it may."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"at most {limit} assignment watches per token")


class Watch:
    """One open watch: what it was opened with, the lines to send, and whether (and
    why) it has been ended."""

    def __init__(self, *, region: str, digest: str, record: TokenRecord, revision: int) -> None:
        self.region = region
        self.digest = digest
        self.record = record
        self.revision = revision  # the token's, when last judged
        # Lines for the client; None only wakes the stream to see `ended`.
        self.lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.ended: str | None = None  # why, once ended
        self.region_gone = False  # ended because the region was deleted
        self._expiry: asyncio.TimerHandle | None = None
        self._expires_at: datetime | None = None

    def end(self, reason: str) -> None:
        """Mark the watch ended and wake its stream; nothing is sent after this."""
        if self.ended is not None:
            return
        self.ended = reason
        self.stop_timer()
        self.lines.put_nowait(None)

    def expire_at(self, when: datetime | None) -> None:
        """End the watch at `when` (its token's expiry), or never."""
        if when == self._expires_at:
            return
        self.stop_timer()
        self._expires_at = when
        if when is not None:
            delay = max(0.0, (when - datetime.now(UTC)).total_seconds())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        _metrics.watches_closed.add(1, {"reason": "token"})
        self.end("token expired")

    def stop_timer(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None


class Watches:
    """The server's open watches, by token hash and by region (see the module doc)."""

    def __init__(self, mirror: Mirror, *, per_token: int) -> None:
        self.mirror = mirror
        self.per_token = per_token
        self._by_token: dict[str, set[Watch]] = {}
        self._by_region: dict[str, set[Watch]] = {}
        mirror.subscribe(self._changed)

    def open(self, *, region: str, digest: str, record: TokenRecord, revision: int) -> Watch:
        """Register a watch, judged at once against the mirror (which the caller has
        brought up to the token and region it read, so it judges by no older state);
        TooManyWatches when the token holds `per_token` already. Check `ended` after:
        a revocation may have come in between."""
        held = self._by_token.setdefault(digest, set())
        if len(held) >= self.per_token:
            raise TooManyWatches(self.per_token)
        watch = Watch(region=region, digest=digest, record=record, revision=revision)
        held.add(watch)
        self._by_region.setdefault(region, set()).add(watch)
        self.check(watch)
        return watch

    def close(self, watch: Watch) -> None:
        """Forget a watch whose stream has returned (its slot is free again)."""
        watch.stop_timer()
        for index, key in ((self._by_token, watch.digest), (self._by_region, watch.region)):
            held = index.get(key)
            if held is not None:
                held.discard(watch)
                if not held:
                    del index[key]

    def __len__(self) -> int:
        return sum(len(held) for held in self._by_token.values())

    def check(self, watch: Watch) -> None:
        """End `watch` if its region or its token's right to it is gone."""
        if watch.ended is not None:
            return
        if not self.mirror.has(keys.REGIONS, watch.region):
            watch.region_gone = True
            _metrics.watches_closed.add(1, {"reason": "region"})
            watch.end(f"region {watch.region} deleted")
            return
        found = self.mirror.get(keys.TOKENS, watch.digest, TokenRecord)
        if found is None:
            reason: str | None = "token revoked"
        else:
            record, revision = found
            # A token rewritten in place is judged by what it says now.
            reason = refusal(record, watch.region)
            if record.expired(datetime.now(UTC)):
                reason = "token expired"
            watch.record, watch.revision = record, revision
        if reason is not None:
            _metrics.watches_closed.add(1, {"reason": "token"})
            watch.end(reason)
        else:
            watch.expire_at(watch.record.expires_at)

    def _changed(self, key: str, revision: int) -> None:
        """The mirror's listener: re-check the watches a change concerns."""
        if not key:  # the mirror re-listed: anything may have changed
            concerned: set[Watch] = set().union(*self._by_token.values())
        elif key.startswith(keys.TOKENS):
            concerned = self._by_token.get(key.removeprefix(keys.TOKENS), set())
        elif key.startswith(keys.REGIONS):
            concerned = self._by_region.get(key.removeprefix(keys.REGIONS), set())
        else:
            return
        for watch in list(concerned):
            self.check(watch)
