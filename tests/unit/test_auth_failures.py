"""The bounds on failed authentications (federation.api.failures), on a fake clock:
what is remembered, for how long, and that memory stays bounded."""

from __future__ import annotations

from federation.api.failures import FailureLimiter, UnknownTokens, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_unknown_token_is_remembered_for_its_ttl_only() -> None:
    clock = Clock()
    unknown = UnknownTokens(ttl=1.0, size=10, clock=clock)
    unknown.add("d1")
    assert unknown.holds("d1") and not unknown.holds("d2")
    clock.now += 0.99
    assert unknown.holds("d1")
    clock.now += 0.02
    assert not unknown.holds("d1")
    assert len(unknown) == 0


def test_unknown_tokens_keep_the_newest_few_thousand_at_most() -> None:
    unknown = UnknownTokens(ttl=60.0, size=1000, clock=Clock())
    for i in range(5000):
        unknown.add(f"d{i}")
    assert len(unknown) == 1000
    assert unknown.holds("d4999") and not unknown.holds("d0")


def test_an_address_may_fail_a_burst_then_at_the_refill_rate() -> None:
    clock = Clock()
    limiter = FailureLimiter(burst=3, per_s=2.0, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 1
    assert limiter.retry_after("10.0.0.2") == 0  # each address has its own budget
    clock.now += 0.5  # one failure's worth at 2/s
    assert limiter.retry_after("10.0.0.1") == 0
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 1
    clock.now += 60  # never more than the burst
    for _ in range(3):
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 1


def test_ipv6_addresses_share_a_budget_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key(None) == ""
    limiter = FailureLimiter(burst=1, per_s=1.0, clock=Clock())
    limiter.failed("2001:db8:1:2::1")
    assert limiter.retry_after("2001:db8:1:2::ffff") == 1


def test_the_limiter_tracks_a_bounded_number_of_addresses() -> None:
    limiter = FailureLimiter(burst=1, per_s=0.001, addresses=100, clock=Clock())
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 100
    assert limiter.retry_after("10.0.3.231") > 0  # the most recent are kept
    assert limiter.retry_after("10.0.0.0") == 0  # the oldest were forgotten
