"""Drill schedules' time rules (pure): a run may start only inside an allowed window,
never on a blocked date or in a blocked window, once per window occurrence, in the
schedule's own wall-clock time across daylight saving changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from federation.model.schedule import DAYS, DrillSchedule
from federation.planning.practice import blocked_reason, may_start, next_run, occurrence


def schedule(**fields: Any) -> DrillSchedule:
    base: dict[str, Any] = {
        "name": "weekly",
        "regions": ["eu-fr-1"],
        "windows": ["Tue 09:00-12:00"],
        "time_zone": "Europe/Berlin",
    }
    base.update(fields)
    return DrillSchedule.model_validate(base)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_next_run_is_the_window_start_in_local_time() -> None:
    s = schedule()
    # Monday 2026-06-01 12:00 UTC; Tuesday 09:00 in Berlin (CEST, +2) is 07:00 UTC.
    assert next_run(s, utc(2026, 6, 1, 12)) == utc(2026, 6, 2, 7)
    # In winter (CET, +1) the same wall-clock window is 08:00 UTC.
    assert next_run(s, utc(2026, 12, 7, 12)) == utc(2026, 12, 8, 8)


def test_inside_the_window_the_run_is_due_now_and_once() -> None:
    s = schedule()
    now = utc(2026, 6, 2, 8)
    assert may_start(s, now) and next_run(s, now) == now
    # A run already started in this occurrence: the next one is a week later.
    assert next_run(s, now, [utc(2026, 6, 2, 7, 5)]) == utc(2026, 6, 9, 7)


def test_blocked_date_and_blocked_window_move_the_run() -> None:
    s = schedule(blocked_dates=["2026-06-02"], blocked_windows=["Tue 09:00-10:30"])
    assert not may_start(s, utc(2026, 6, 2, 8))
    assert "blocked date" in (blocked_reason(s, utc(2026, 6, 2, 8)) or "")
    # The next Tuesday, after the blocked window ends.
    assert next_run(s, utc(2026, 6, 1)) == utc(2026, 6, 9, 8, 30)
    assert "blocked window" in (blocked_reason(s, utc(2026, 6, 9, 7, 15)) or "")


def test_dst_spring_forward_and_fall_back() -> None:
    # Europe/Berlin springs forward on Sunday 2026-03-29 at 02:00 -> 03:00.
    s = schedule(windows=["Sun 02:00-04:00"])
    assert next_run(s, utc(2026, 3, 28)) == utc(2026, 3, 29, 1)  # 03:00 CEST
    gap_only = schedule(windows=["Sun 02:00-02:30"])
    # The window does not exist that night: the next is a week later (CEST).
    assert next_run(gap_only, utc(2026, 3, 28)) == utc(2026, 4, 5, 0)
    # Falls back on Sunday 2026-10-25 at 03:00 -> 02:00: 02:30 happens twice, one
    # occurrence.
    back = schedule(windows=["Sun 02:00-03:00"])
    first = next_run(back, utc(2026, 10, 24))
    assert first == utc(2026, 10, 25, 0)  # 02:00 CEST
    assert next_run(back, utc(2026, 10, 25, 1, 10), [first]) == utc(2026, 11, 1, 1)


def test_invalid_fields_name_themselves() -> None:
    for field, value in [
        ("time_zone", "Mars/Olympus"),
        ("time_zone", "../../etc/passwd"),
        ("windows", ["Tue 12:00-09:00"]),
        ("windows", ["Tuesday 09:00-12:00"]),
        ("blocked_dates", ["2026-02-30"]),
        ("regions", ["eu-fr-1", "eu-fr-1"]),
    ]:
        with pytest.raises(ValidationError) as err:
            schedule(**{field: value})
        assert err.value.errors()[0]["loc"][0] == field


def test_urls_with_credentials_in_their_query_are_refused() -> None:
    hook = {"url": "https://hooks.example/d", "secret": "hook#key"}
    for field, value in [
        ("blocking_checks", [{"name": "h", "url": "http://10.0.0.1/health?api_key=abc"}]),
        ("blocking_checks", [{"name": "h", "url": "http://10.0.0.1/h?x=1&Token=abc"}]),
        (
            "outcome_checks",
            [{"name": "p", "kind": "prometheus", "server": "http://p/?password=x", "query": "up"}],
        ),
        ("notifications", {"webhooks": [{**hook, "url": "https://hooks.example/d?secret=s"}]}),
        (
            "notifications",
            {"webhooks": [{**hook, "url": "https://hooks.example/d?access_token=s"}]},
        ),
    ]:
        with pytest.raises(ValidationError) as err:
            schedule(**{field: value})
        assert err.value.errors()[0]["loc"][0] == field
        assert "credentials" in err.value.errors()[0]["msg"]
    fine = [{"name": "h", "url": "http://10.0.0.1/health?verbose=1&region=eu"}]
    assert schedule(blocking_checks=fine).blocking_checks[0].name == "h"


minutes = st.integers(min_value=0, max_value=24 * 60 - 1)


@st.composite
def windows(draw: st.DrawFn) -> str:
    day = draw(st.sampled_from(DAYS))
    start = draw(minutes)
    end = draw(st.integers(min_value=start + 1, max_value=24 * 60))
    return f"{day} {start // 60:02}:{start % 60:02}-{end // 60:02}:{end % 60:02}"


zones = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
)
instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None)
@given(
    allowed=st.lists(windows(), min_size=1, max_size=3),
    blocked=st.lists(windows(), max_size=3),
    zone=zones,
    now=instants,
    blocked_days=st.lists(st.integers(min_value=0, max_value=30), max_size=10),
    ran=st.lists(st.integers(min_value=-14 * 24 * 60, max_value=14 * 24 * 60), max_size=4),
)
def test_next_run_is_allowed_unblocked_unused_and_first(
    allowed: list[str],
    blocked: list[str],
    zone: str,
    now: datetime,
    blocked_days: list[int],
    ran: list[int],
) -> None:
    local_today = now.astimezone(schedule(time_zone=zone).zone).date()
    dates = sorted({(local_today + timedelta(days=d)).isoformat() for d in blocked_days})
    s = schedule(windows=allowed, blocked_windows=blocked, time_zone=zone, blocked_dates=dates)
    last = [now + timedelta(minutes=m) for m in ran]
    at = next_run(s, now, last)
    if at is None:
        return
    assert at >= now
    assert may_start(s, at), blocked_reason(s, at)
    local = at.astimezone(s.zone)
    assert date.fromisoformat(local.date().isoformat()) not in s.blocked_dates
    assert not any(w.holds(local) for w in s.blocked())
    assert any(w.holds(local) for w in s.allowed())
    used = {occurrence(s, r) for r in last}
    assert occurrence(s, at) not in used
    # Nothing earlier would do: every minute between now and `at` is blocked or used.
    probe = now
    while probe < at and probe - now < timedelta(days=15):
        assert not may_start(s, probe) or occurrence(s, probe) in used
        probe += timedelta(minutes=7)
