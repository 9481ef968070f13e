"""When a drill schedule may run (pure: the clock is an argument).

An instant may start a run when, in the schedule's time zone, it falls inside one of
its weekly windows, on no blocked date and in no blocked window. A window's
*occurrence* (its local date and index) runs at most once: a run that was not BLOCKED
uses it up; BLOCKED attempts are retried later in the same occurrence.

Wall-clock times are read through zoneinfo, so across a daylight saving change a
09:00 window stays 09:00 local; a window inside the hour that does not exist that
night (spring forward) does not happen, and an instant that exists twice (fall back)
is judged by its own wall-clock reading.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

from federation.model.schedule import DrillSchedule

HORIZON_DAYS = 400  # far enough to step over a year of blocked dates
Occurrence = tuple[date, int]


def _local(schedule: DrillSchedule, at: datetime) -> datetime:
    return at.astimezone(schedule.zone)


def occurrence(schedule: DrillSchedule, at: datetime) -> Occurrence | None:
    """The window occurrence `at` is in (its local date, the window's index), or None
    when `at` is outside every allowed window."""
    local = _local(schedule, at)
    for index, window in enumerate(schedule.allowed()):
        if window.holds(local):
            return local.date(), index
    return None


def blocked_reason(schedule: DrillSchedule, at: datetime) -> str | None:
    """Why `at` may not start a run, as a sentence; None when it may."""
    local = _local(schedule, at)
    if local.date() in schedule.blocked_dates:
        return f"{local.date().isoformat()} is a blocked date"
    for window in schedule.blocked():
        if window.holds(local):
            return f"inside blocked window {window} ({schedule.time_zone})"
    if occurrence(schedule, at) is None:
        windows = ", ".join(schedule.windows)
        return f"outside the allowed window(s) {windows} ({schedule.time_zone})"
    return None


def may_start(schedule: DrillSchedule, at: datetime) -> bool:
    """`at` is inside an allowed window, not on a blocked date, not in a blocked window."""
    return blocked_reason(schedule, at) is None


def _used(schedule: DrillSchedule, runs: Iterable[datetime]) -> set[Occurrence]:
    found = set()
    for started in runs:
        occ = occurrence(schedule, started)
        if occ is not None:
            found.add(occ)
    return found


def _candidates(schedule: DrillSchedule, day: date) -> list[datetime]:
    """Instants of local `day` at which starting may become possible: each allowed
    window's start and each blocked window's end (as UTC)."""
    zone = schedule.zone
    minutes = [w.start for w in schedule.allowed() if w.day == day.weekday()]
    minutes += [w.end for w in schedule.blocked() if w.day == day.weekday() and w.end < 24 * 60]
    out = []
    for minute in sorted(set(minutes)):
        local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
        out.append(local.astimezone(UTC))
    return out


def next_run(
    schedule: DrillSchedule, now: datetime, last_runs: Iterable[datetime] = ()
) -> datetime | None:
    """The first instant at or after `now` at which the schedule may start a run in an
    occurrence no run (other than a BLOCKED one: leave those out of `last_runs`) has
    used; None when there is none within HORIZON_DAYS or the schedule is disabled."""
    if not schedule.enabled:
        return None
    used = _used(schedule, last_runs)

    def fits(at: datetime) -> bool:
        occ = occurrence(schedule, at)
        return occ is not None and occ not in used and may_start(schedule, at)

    if fits(now):
        return now
    first = _local(schedule, now).date()
    for offset in range(-1, HORIZON_DAYS + 1):
        day = first + timedelta(days=offset)
        for at in _candidates(schedule, day):
            if at > now and fits(at):
                return at
    return None
