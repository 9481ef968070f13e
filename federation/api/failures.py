"""What a failed authentication may cost the server.

Every bearer token that is not in the server's mirror is looked up in etcd (a
linearizable read), so without a bound anyone could make the server read etcd once
per request by sending made-up tokens. Two bounds, both in memory and bounded:

- `UnknownTokens`: the hashes of tokens an etcd read just found absent (or expired),
  kept for a second. A request presenting one is refused without reading etcd, unless the
  server's mirror holds a live token under that hash by then (see
  `federation.api.auth`): a token created after it was tried works as soon as this
  server has seen it, not a second later.
- `FailureLimiter`: a token bucket of failed authentications per client address
  (IPv6 addresses by /64, the block one host is usually given). An address out of
  budget is answered 429 with Retry-After for tokens the mirror does not know, at no
  etcd cost; a good token from it is still served: the limit is on failures, not on
  users.

Only hashes and addresses are kept, never a token itself.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

UNKNOWN_TTL_S = 1.0  # how long an absent token's hash is remembered
UNKNOWN_MAX = 4096  # hashes remembered at most (the oldest go first)
ADDRESSES_MAX = 10_000  # addresses tracked at most (the least recently failed go first)


class UnknownTokens:
    """Hashes of tokens etcd did not hold (or held expired) a moment ago: a bounded,
    short-lived set."""

    def __init__(
        self,
        *,
        ttl: float = UNKNOWN_TTL_S,
        size: int = UNKNOWN_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    def add(self, digest: str) -> None:
        self._until.pop(digest, None)
        self._until[digest] = self._clock() + self.ttl
        while len(self._until) > self.size:
            self._until.popitem(last=False)

    def holds(self, digest: str) -> bool:
        """True while `digest` was found absent less than `ttl` seconds ago."""
        until = self._until.get(digest)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[digest]
            return False
        return True

    def __len__(self) -> int:
        return len(self._until)


def client_key(address: str | None) -> str:
    """The address a budget is kept for: IPv4 as is, IPv6 by its /64."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a unix socket's peer, say: one budget for it
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailureLimiter:
    """A token bucket per client address: `burst` failures at once, then `per_s`."""

    def __init__(
        self,
        *,
        burst: int,
        per_s: float,
        addresses: int = ADDRESSES_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self.addresses = addresses
        self._clock = clock
        # address -> (tokens left, when counted); least recently failed first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(self.burst)
        left, at = held
        return min(float(self.burst), left + (now - at) * self.per_s)

    def retry_after(self, address: str | None) -> int:
        """0 when `address` may fail again; else whole seconds until it may."""
        key = client_key(address)
        level = self._level(key, self._clock())
        if level >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - level) / self.per_s)) if self.per_s > 0 else 3600

    def failed(self, address: str | None) -> None:
        """Count one failed authentication from `address`."""
        key = client_key(address)
        now = self._clock()
        level = max(0.0, self._level(key, now) - 1.0)
        self._buckets.pop(key, None)
        self._buckets[key] = (level, now)
        # Evicting forgets a budget (that address starts full again): memory stays
        # bounded, and an address only costs its burst per eviction.
        while len(self._buckets) > self.addresses:
            self._buckets.popitem(last=False)


class Failures:
    """A server's bounds on failed authentications: the unknown tokens it remembers,
    and each client address's budget of failures."""

    def __init__(self, *, burst: int, per_s: float) -> None:
        self.unknown = UnknownTokens()
        self.limiter = FailureLimiter(burst=burst, per_s=per_s)
