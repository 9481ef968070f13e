"""Drill schedules (docs/drills.md#practice-runs): practice drills the leader runs on
its own, weekly inside allowed windows, never on blocked dates or in blocked windows,
held back by failing blocking checks and stopped by failing outcome checks.

A schedule is an operator's document (`drill-schedules/{name}`); each attempt to run
it is a `PracticeRun` (`drill-runs/{schedule}/{id}`), which links the live drill it
started. Windows are wall-clock times in the schedule's `time_zone` (IANA, zoneinfo),
so "Tuesday 09:00" stays 09:00 across daylight saving changes.
"""

from __future__ import annotations

import re
import secrets
from datetime import date, datetime, time
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
)

from federation.model.names import Labels, Name
from federation.model.secret import REFERENCE_PATTERN

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WINDOW_RE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([0-2][0-9]):([0-5][0-9])-([0-2][0-9]):([0-5][0-9])$"
)
MAX_WINDOWS = 28
MAX_BLOCKED_DATES = 366
MAX_CHECKS = 16
MAX_SCHEDULES = 100  # each costs a next_run per list, and the leader's attention
MAX_HISTORY = 100  # runs kept per schedule; older ones are deleted when a run is stored


class Outcome(StrEnum):
    """How a practice run ended (the names of AWS ARC's practice runs, plus BLOCKED)."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    INTERRUPTED = "INTERRUPTED"
    FAILED = "FAILED"
    CAPACITY_CHECK_FAILED = "CAPACITY_CHECK_FAILED"
    BLOCKED = "BLOCKED"


class WeeklyWindow(BaseModel):
    """`Tue 09:00-12:00`: a day of the week and a wall-clock span in the schedule's zone
    (end after start; `24:00` is the end of the day)."""

    model_config = ConfigDict(frozen=True)

    day: int  # 0 = Monday
    start: int  # minutes after midnight
    end: int

    @classmethod
    def parse(cls, text: str) -> WeeklyWindow:
        """ValueError saying what is wrong with `text`."""
        match = _WINDOW_RE.fullmatch(text)
        if match is None:
            raise ValueError("must look like 'Tue 09:00-12:00' (day Mon..Sun, 24-hour HH:MM)")
        day, h1, m1, h2, m2 = match.groups()
        start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
        if start >= 24 * 60 or end > 24 * 60:
            raise ValueError("times must be 00:00..23:59 (end may be 24:00)")
        if end <= start:
            raise ValueError("the window must end after it starts, on the same day")
        return cls(day=DAYS.index(day), start=start, end=end)

    def holds(self, local: datetime) -> bool:
        """`local` (a wall-clock time) is inside the window."""
        minute = local.hour * 60 + local.minute
        return local.weekday() == self.day and self.start <= minute < self.end

    def start_time(self) -> time:
        return time(self.start // 60, self.start % 60)

    def __str__(self) -> str:
        def hhmm(minutes: int) -> str:
            return f"{minutes // 60:02}:{minutes % 60:02}"

        return f"{DAYS[self.day]} {hhmm(self.start)}-{hhmm(self.end)}"


def _windows(values: list[str]) -> list[str]:
    for value in values:
        WeeklyWindow.parse(value)
    return values


WindowText = Annotated[str, Field(max_length=32)]


# Query parameters that carry credentials (`?api_key=`, `?access_token=`, ...).
_CREDENTIAL_PARAM = re.compile(
    r"(api[-_]?key|token|passw(or)?d|secret|credential|auth|signature|^key$|^sig$)", re.I
)


def _no_credentials(url: AnyHttpUrl) -> AnyHttpUrl:
    # Viewers read schedules: a password in a URL would be shown to them.
    if url.username or url.password:
        raise ValueError("must not carry credentials (user:password@)")
    for name, _ in url.query_params():
        if _CREDENTIAL_PARAM.search(name):
            raise ValueError(
                f"must not carry credentials in its query ({name[:40]!r}): viewers read "
                "schedules; put them behind the URL's server instead"
            )
    return url


PlainUrl = Annotated[AnyHttpUrl, AfterValidator(_no_credentials)]


class HttpCheck(BaseModel):
    """Passes when a GET of `url` answers `expect_status` within `timeout_s`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    kind: Literal["http"] = "http"
    url: PlainUrl
    expect_status: int = Field(default=200, ge=100, le=599)
    timeout_s: float = Field(default=5.0, gt=0, le=30)


class PrometheusCheck(BaseModel):
    """Passes when `query`, evaluated by the Prometheus at `server` (`/api/v1/query`),
    is 0 (every series of a vector, or the scalar). No result counts as 0: an alert
    expression that matches nothing is quiet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    kind: Literal["prometheus"]
    server: PlainUrl
    query: str = Field(min_length=1, max_length=4096)
    timeout_s: float = Field(default=5.0, gt=0, le=30)


def _check_kind(value: Any) -> str:
    # `kind` may be left out for an HTTP check.
    if isinstance(value, dict):
        return str(value.get("kind", "http"))
    return str(getattr(value, "kind", "http"))


Check = Annotated[
    Annotated[HttpCheck, Tag("http")] | Annotated[PrometheusCheck, Tag("prometheus")],
    Discriminator(_check_kind),
]


class Webhook(BaseModel):
    """Where start, end and block events are POSTed. `secret` names a federation
    secret's key (`name#key`) whose value signs the body (`X-Federation-Signature:
    sha256=<hex HMAC>`); the value itself is never in the schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: PlainUrl
    secret: str = Field(pattern=REFERENCE_PATTERN, max_length=320)
    timeout_s: float = Field(default=5.0, gt=0, le=30)


class Notifications(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    webhooks: list[Webhook] = Field(default_factory=list, max_length=8)


class DrillSchedule(BaseModel):
    """A practice drill schedule, as `PUT /v1/drill-schedules/{name}` takes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    labels: Labels = Field(default_factory=dict)
    regions: list[Name] = Field(min_length=1, max_length=100)
    cadence: Literal["weekly"] = "weekly"
    windows: list[WindowText] = Field(min_length=1, max_length=MAX_WINDOWS)
    time_zone: str = Field(default="UTC", max_length=64)
    blocked_dates: list[date] = Field(default_factory=list, max_length=MAX_BLOCKED_DATES)
    blocked_windows: list[WindowText] = Field(default_factory=list, max_length=MAX_WINDOWS)
    duration_s: float = Field(default=1800.0, ge=10, le=86_400)
    fail_back: bool = True
    # Seconds between attempts after a BLOCKED one, inside the same window.
    retry_s: float = Field(default=300.0, ge=1, le=86_400)
    blocking_checks: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS)
    outcome_checks: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS)
    notifications: Notifications = Field(default_factory=Notifications)
    enabled: bool = True

    @field_validator("regions")
    @classmethod
    def _distinct(cls, regions: list[str]) -> list[str]:
        if len(set(regions)) != len(regions):
            raise ValueError("regions must be distinct")
        return regions

    @field_validator("windows", "blocked_windows")
    @classmethod
    def _window_texts(cls, values: list[str]) -> list[str]:
        return _windows(values)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        # zoneinfo reads paths: refuse anything but an IANA name's characters first.
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}", value):
            raise ValueError("must be an IANA time zone such as 'Europe/Berlin'")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("blocking_checks", "outcome_checks")
    @classmethod
    def _check_names(
        cls, checks: list[HttpCheck | PrometheusCheck]
    ) -> list[HttpCheck | PrometheusCheck]:
        names = [c.name for c in checks]
        if len(set(names)) != len(names):
            raise ValueError("check names must be distinct")
        return checks

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def allowed(self) -> list[WeeklyWindow]:
        return [WeeklyWindow.parse(w) for w in self.windows]

    def blocked(self) -> list[WeeklyWindow]:
        return [WeeklyWindow.parse(w) for w in self.blocked_windows]


class CheckResult(BaseModel):
    """One evaluation of a check: whether it passed, the value seen, and why."""

    name: str
    kind: str
    phase: Literal["blocking", "outcome"]
    ok: bool
    value: str  # the status code or the query's value, as text
    message: str
    at: datetime


class PracticeRun(BaseModel):
    """One attempt of a schedule, as stored in etcd (`drill-runs/{schedule}/{id}`)."""

    id: str
    schedule: str
    trigger: Literal["schedule", "on-demand"]
    regions: list[str]
    outcome: Outcome
    message: str = ""
    started_at: datetime
    ended_at: datetime | None = None
    drill_id: str | None = None
    services: list[str] = Field(default_factory=list)  # named by CAPACITY_CHECK_FAILED
    checks_before: list[CheckResult] = Field(default_factory=list)
    checks_during: list[CheckResult] = Field(default_factory=list)
    # Whether the schedule had webhooks when the run began (only then are its events
    # sent: adding a webhook later does not replay the history), and the events sent.
    notify: bool = False
    notified: list[str] = Field(default_factory=list)


def new_run_id(now: datetime) -> str:
    """Sortable by start time, DNS-1123-safe: `run-YYYYMMDDHHMMSS-xxxx`."""
    return f"run-{now.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
