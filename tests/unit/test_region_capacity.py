"""A region's capacity under its ceiling: pure, so tested over many values."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from federation.model.region import Capacity, Heartbeat, HeartbeatRecord, within

capacities = st.builds(
    Capacity,
    cpu=st.floats(min_value=0, max_value=1_000_000, allow_nan=False),
    memory_mb=st.integers(min_value=0, max_value=1_000_000_000_000),
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@given(claim=capacities, limit=st.none() | capacities)
def test_a_beat_is_stored_within_its_ceiling_with_its_claim_kept_when_above(
    claim: Capacity, limit: Capacity | None
) -> None:
    stored = HeartbeatRecord.of(NOW, Heartbeat(capacity=claim), limit)
    if limit is not None:
        assert stored.capacity.cpu <= limit.cpu
        assert stored.capacity.memory_mb <= limit.memory_mb
    assert stored.capacity.cpu <= claim.cpu and stored.capacity.memory_mb <= claim.memory_mb
    assert (stored.claimed is None) == (stored.capacity == claim)
    assert stored.claimed in (None, claim)


@given(claim=capacities, first=st.none() | capacities, then=st.none() | capacities)
def test_changing_the_ceiling_is_as_if_the_beat_came_under_the_new_one(
    claim: Capacity, first: Capacity | None, then: Capacity | None
) -> None:
    stored = HeartbeatRecord.of(NOW, Heartbeat(capacity=claim), first)
    assert stored.limited(then) == HeartbeatRecord.of(NOW, Heartbeat(capacity=claim), then)
    assert within(claim, None) == claim
