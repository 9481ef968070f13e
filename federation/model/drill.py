"""Failover drills (docs/drills.md): the request, the what-if plan, the live record.

A live drill is one etcd value (`drills/{id}`): its request, the plan it started
from, and everything measured so far, so any leader can pick it up and the report
can always be rebuilt from it.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from federation.model.names import Name
from federation.model.schedule import CheckResult

Outcome = Literal["recoverable", "degraded", "unrecoverable"]
Settled = Literal["recovered", "degraded", "unrecoverable", "deleted"]
Phase = Literal["cordoning", "evacuating", "failback", "done"]


class DrillState(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (DrillState.COMPLETED, DrillState.ABORTED, DrillState.FAILED)


def new_drill_id() -> str:
    """A DNS-1123-safe drill id: `drill-` and 8 hex digits."""
    return f"drill-{secrets.token_hex(4)}"


def drill_tag(drill_id: str) -> str:
    """What a drill writes as `Cordon.by`, so it only ever lifts its own cordons."""
    return f"drill:{drill_id}"


class AbortOn(BaseModel):
    """When a live drill stops and restores on its own."""

    model_config = ConfigDict(extra="forbid")

    # More unrecoverable services than this (not counting those `force` accepted).
    unrecoverable: int = Field(default=0, ge=0, le=1_000_000)


class DrillRequest(BaseModel):
    """Body of `POST /v1/drills`."""

    model_config = ConfigDict(extra="forbid")

    regions: list[Name] = Field(min_length=1, max_length=100)
    mode: Literal["plan", "live"] = "plan"
    max_duration_s: float = Field(default=300.0, gt=0, le=86_400)
    abort_on: AbortOn = Field(default_factory=AbortOn)
    failback: bool = True
    force: bool = False

    @field_validator("regions")
    @classmethod
    def _distinct(cls, regions: list[str]) -> list[str]:
        if len(set(regions)) != len(regions):
            raise ValueError("regions must be distinct")
        return regions


class ServiceOutcome(BaseModel):
    """One service the drill would touch, as the what-if plan sees it."""

    service: str
    outcome: Outcome
    replicas: int  # desired
    in_targets: dict[str, int]  # replicas the drill takes away, per target region
    to: dict[str, int]  # where its replicas would run during the drill
    placed: int
    reason: str  # the scheduler's reason code (Placed, NoCompliantRegion, ...)
    message: str
    allowed_regions: list[str]
    # Per region: the scheduler's outcome and reasons (degraded and unrecoverable only).
    why: dict[str, list[str]] = Field(default_factory=dict)


class DrillPlan(BaseModel):
    """The what-if of cordoning `regions`, with capacity counted across all services."""

    regions: list[str]
    at: datetime
    services: list[ServiceOutcome]
    unaffected: int

    def names(self, outcome: Outcome) -> list[str]:
        return [s.service for s in self.services if s.outcome == outcome]


class TimelineEvent(BaseModel):
    at: datetime
    event: str


class Violation(BaseModel):
    """A replica assigned to a region that residency rejects for its service."""

    service: str
    region: str
    country: str | None
    at: datetime
    reasons: list[str]


class ServiceProgress(BaseModel):
    """What a live drill measured for one affected service."""

    replicas: int
    expected: Outcome | None = None  # from the plan
    ready_elsewhere: int = 0
    settled: Settled | None = None
    recovery_s: float | None = None  # cordon -> all replicas ready outside the targets
    reason: str = ""
    message: str = ""


class DrillRecord(BaseModel):
    """A live drill as stored in etcd."""

    id: str
    mode: Literal["live"] = "live"
    regions: list[str]
    state: DrillState
    phase: Phase
    request: DrillRequest
    created_at: datetime
    created_by: str
    plan: DrillPlan
    accepted_unrecoverable: list[str] = Field(default_factory=list)
    cordoned_at: datetime | None = None
    uncordoned_at: datetime | None = None
    restored_at: datetime | None = None
    ended_at: datetime | None = None
    services: dict[str, ServiceProgress] = Field(default_factory=dict)
    violations: list[Violation] = Field(default_factory=list)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    outcome_message: str = ""
    leader: str = ""
    # Set when a drill schedule started the drill (a practice run): its name and what
    # its checks said before the start and, on each change, during the run.
    schedule: str | None = None
    checks_before: list[CheckResult] = Field(default_factory=list)
    checks_during: list[CheckResult] = Field(default_factory=list)

    def note(self, at: datetime, event: str) -> None:
        self.timeline.append(TimelineEvent(at=at, event=event))
