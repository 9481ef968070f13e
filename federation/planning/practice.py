"""When a drill schedule may run (pure: the clock is an argument).

Also whether one may start now at all (`incident`, `preflight`): never during an
incident, and never when the drill plan leaves a service without compliant room.

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
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from federation.model.drill import DrillPlan
from federation.model.schedule import DrillSchedule, WeeklyWindow
from federation.model.service import Assignment, Phase
from federation.model.status import service_status
from federation.planning.what_if import what_if
from federation.planning.world import World

HORIZON_DAYS = 400  # far enough to step over a year of blocked dates
Occurrence = tuple[date, int]


@dataclass(frozen=True)
class _Rules:
    """A schedule's windows parsed once (a next_run looks at hundreds of instants)."""

    zone: ZoneInfo
    allowed: tuple[WeeklyWindow, ...]
    blocked: tuple[WeeklyWindow, ...]
    blocked_dates: frozenset[date]
    # Per weekday: the minutes at which starting may become possible (each allowed
    # window's start, each blocked window's end), and those of them that the weekly
    # windows let start (inside an allowed window, in no blocked window).
    turns: tuple[tuple[int, ...], ...] = ()
    open: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def of(cls, schedule: DrillSchedule) -> _Rules:
        rules = cls(
            schedule.zone,
            tuple(schedule.allowed()),
            tuple(schedule.blocked()),
            frozenset(schedule.blocked_dates),
        )
        turns, open_ = [], []
        for weekday in range(7):
            minutes = {w.start for w in rules.allowed if w.day == weekday}
            if minutes:
                minutes |= {w.end for w in rules.blocked if w.day == weekday and w.end < 1440}
            turns.append(tuple(sorted(minutes)))
            open_.append(tuple(m for m in turns[-1] if rules.weekly_open(weekday, m)))
        return cls(
            rules.zone,
            rules.allowed,
            rules.blocked,
            rules.blocked_dates,
            tuple(turns),
            tuple(open_),
        )

    def weekly_open(self, weekday: int, minute: int) -> bool:
        """The wall-clock minute of that weekday is in an allowed window and in no
        blocked one."""

        def inside(w: WeeklyWindow) -> bool:
            return w.day == weekday and w.start <= minute < w.end

        return any(map(inside, self.allowed)) and not any(map(inside, self.blocked))

    def occurrence(self, local: datetime) -> Occurrence | None:
        for index, window in enumerate(self.allowed):
            if window.holds(local):
                return local.date(), index
        return None


def occurrence(schedule: DrillSchedule, at: datetime) -> Occurrence | None:
    """The window occurrence `at` is in (its local date, the window's index), or None
    when `at` is outside every allowed window."""
    rules = _Rules.of(schedule)
    return rules.occurrence(at.astimezone(rules.zone))


def _blocked(rules: _Rules, local: datetime, windows: str) -> str | None:
    if local.date() in rules.blocked_dates:
        return f"{local.date().isoformat()} is a blocked date"
    for window in rules.blocked:
        if window.holds(local):
            return f"inside blocked window {window}"
    if rules.occurrence(local) is None:
        return f"outside the allowed window(s) {windows}"
    return None


def blocked_reason(schedule: DrillSchedule, at: datetime) -> str | None:
    """Why `at` may not start a run, as a sentence; None when it may."""
    rules = _Rules.of(schedule)
    reason = _blocked(rules, at.astimezone(rules.zone), ", ".join(schedule.windows))
    return None if reason is None else f"{reason} ({schedule.time_zone})"


def may_start(schedule: DrillSchedule, at: datetime) -> bool:
    """`at` is inside an allowed window, not on a blocked date, not in a blocked window."""
    return blocked_reason(schedule, at) is None


def _shifts(zone: ZoneInfo, day: date) -> bool:
    """The zone's offset changes during local `day` (daylight saving)."""
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start.utcoffset() != end.utcoffset()


def _candidates(rules: _Rules, day: date) -> list[datetime]:
    """Instants of local `day` at which starting may become possible (as UTC). Only
    those the weekly windows let start, except on a day whose wall clock jumps (a
    minute that does not exist is read as another, so every turn is tried)."""
    weekday = day.weekday()
    if not rules.turns[weekday] or day in rules.blocked_dates:
        return []
    minutes = rules.open[weekday]
    if minutes != rules.turns[weekday] and _shifts(rules.zone, day):
        minutes = rules.turns[weekday]
    return [
        datetime.combine(day, time(m // 60, m % 60), tzinfo=rules.zone).astimezone(UTC)
        for m in minutes
    ]


def next_run(
    schedule: DrillSchedule, now: datetime, last_runs: Iterable[datetime] = ()
) -> datetime | None:
    """The first instant at or after `now` at which the schedule may start a run in an
    occurrence no run (other than a BLOCKED one: leave those out of `last_runs`) has
    used; None when there is none within HORIZON_DAYS or the schedule is disabled."""
    if not schedule.enabled:
        return None
    rules = _Rules.of(schedule)
    used = {rules.occurrence(r.astimezone(rules.zone)) for r in last_runs} - {None}

    def fits(at: datetime) -> bool:
        local = at.astimezone(rules.zone)
        occ = rules.occurrence(local)
        return occ is not None and occ not in used and _blocked(rules, local, "") is None

    if fits(now):
        return now
    first = now.astimezone(rules.zone).date()
    for offset in range(-1, HORIZON_DAYS + 1):
        for at in _candidates(rules, first + timedelta(days=offset)):
            if at > now and fits(at):
                return at
    return None


def _by_service(world: World) -> dict[str, dict[str, Assignment]]:
    """Service -> {region: its assignment}, in one pass over the assignments."""
    index: dict[str, dict[str, Assignment]] = {}
    for (region, service), assignment in world.assignments.items():
        index.setdefault(service, {})[region] = assignment
    return index


def incident(world: World, schedule: DrillSchedule, services: set[str]) -> str | None:
    """Why a practice run must not start now (a sentence), or None."""
    for name in sorted(world.regions):
        if name not in world.alive:
            return f"region {name} is lost (unreachable): no practice during an incident"
    for name in schedule.regions:
        region = world.regions.get(name)
        if region is None:
            return f"region {name} does not exist"
        if region.cordon is not None:
            return f"region {name} is cordoned (by {region.cordon.by})"
    assigned = _by_service(world)
    for name in sorted(services):
        found = world.services.get(name)
        if found is None:
            continue
        placement = world.placements.get(name)
        regions = assigned.get(name, {})
        status = service_status(
            found[0],
            placement[0] if placement else None,
            regions,
            world.reports_of(name, regions),
            world.alive,
        )
        if status["phase"] == Phase.PROGRESSING.value:
            return f"service {name} is in a rollout (Progressing)"
    return None


def preflight(
    world: World, schedule: DrillSchedule, region_ttl: float
) -> tuple[DrillPlan, str | None]:
    """The drill plan and why the run must not start (or None): CPU-bound, so the
    scheduler runs it in a thread."""
    plan = what_if(world, schedule.regions, datetime.now(UTC), region_ttl=region_ttl)
    return plan, incident(world, schedule, {s.service for s in plan.services})
