"""Regions: a datacenter bound to one country, registered by an admin."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from federation.model.jurisdictions import check_country
from federation.model.names import LabelValue, Name

Country = Annotated[str, AfterValidator(check_country)]


class RegionState(StrEnum):
    READY = "ready"
    UNREACHABLE = "unreachable"
    CORDONED = "cordoned"


class Capacity(BaseModel):
    """What a region can run (reported by its agent) or has allocated."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(default=0.0, ge=0, le=1_000_000)
    memory_mb: int = Field(default=0, ge=0, le=1_000_000_000_000)


class CapacityLimit(Capacity):
    """The ceiling an admin sets on what a region may claim (both fields required: a
    forgotten one would otherwise be a ceiling of 0)."""

    cpu: float = Field(ge=0, le=1_000_000)
    memory_mb: int = Field(ge=0, le=1_000_000_000_000)


def within(claimed: Capacity, limit: Capacity | None) -> Capacity:
    """`claimed`, clamped to `limit` in each dimension (as is, without a limit)."""
    if limit is None:
        return claimed
    return Capacity(
        cpu=min(claimed.cpu, limit.cpu), memory_mb=min(claimed.memory_mb, limit.memory_mb)
    )


def new_incarnation() -> str:
    """An id for one life of a region name: a region deleted and registered again under
    the same name is another incarnation, and its predecessor's tokens are not its own."""
    return secrets.token_hex(8)


class RegionCreate(BaseModel):
    """Body of `POST /v1/regions`."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    country: Country
    labels: dict[Name, LabelValue] = Field(default_factory=dict, max_length=64)
    endpoint: str | None = Field(default=None, max_length=2048)
    capacity_limit: CapacityLimit | None = None


class RegionLabels(BaseModel):
    """Body of `PUT /v1/regions/{r}/labels`, and a `kind: region` document of a plan:
    the region's whole label set. Only labels: a region joins (country, token) by
    registration, never from files."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    labels: dict[Name, LabelValue] = Field(default_factory=dict, max_length=64)


class Cordon(BaseModel):
    """Why a region is cordoned, and by whom (an operator or `drill:<id>`)."""

    model_config = ConfigDict(extra="forbid")

    by: str
    reason: str = ""
    at: datetime


class RegionRecord(BaseModel):
    """A region as stored in etcd: identity plus admin state, never touched by the agent."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    country: Country
    labels: dict[str, str] = Field(default_factory=dict)
    endpoint: str | None = None
    created_at: datetime
    cordon: Cordon | None = None
    # The most the region's heartbeats may claim; None: taken as they come (within
    # Capacity's bounds). Set by an admin only.
    capacity_limit: Capacity | None = None
    # Set at registration (None for regions registered before incarnations existed);
    # every region token carries the incarnation it was made for.
    incarnation: str | None = None


class Heartbeat(BaseModel):
    """Body of `POST /v1/regions/{r}/heartbeat`: what the agent has and uses."""

    model_config = ConfigDict(extra="forbid")

    capacity: Capacity = Field(default_factory=Capacity)
    allocated: Capacity = Field(default_factory=Capacity)
    # The agent's --allow-exec patterns (see model.allowlist); None: not reported (no
    # policy, or an agent older than allowlists), so the scheduler admits any command.
    allow_exec: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=256
    )


class HeartbeatRecord(BaseModel):
    """Last heartbeat as stored; outlives the lease so `last_heartbeat` survives a loss."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    capacity: Capacity  # what the scheduler plans with: the claim, within the ceiling
    allocated: Capacity
    claimed: Capacity | None = None  # what the region claimed, when above its ceiling
    allow_exec: list[str] | None = None  # as reported (Heartbeat.allow_exec)

    @classmethod
    def of(cls, at: datetime, beat: Heartbeat, limit: Capacity | None) -> HeartbeatRecord:
        """A heartbeat as stored, clamped to the region's ceiling `limit`."""
        return cls(
            at=at, capacity=beat.capacity, allocated=beat.allocated, allow_exec=beat.allow_exec
        ).limited(limit)

    def limited(self, limit: Capacity | None) -> HeartbeatRecord:
        """This heartbeat under the ceiling `limit` (its original claim kept when it
        is above it): applied to each beat, and to the last one when the ceiling
        changes, so a new ceiling holds at once."""
        claim = self.claimed or self.capacity
        capacity = within(claim, limit)
        return self.model_copy(
            update={"capacity": capacity, "claimed": claim if capacity != claim else None}
        )


class RegionView(BaseModel):
    """A region as the API shows it: identity, admin state and liveness joined."""

    name: str
    country: str
    labels: dict[str, str]
    endpoint: str | None
    state: RegionState
    cordoned: bool
    cordon: Cordon | None
    last_heartbeat: datetime | None
    capacity: Capacity
    capacity_limit: Capacity | None
    capacity_claimed: Capacity | None
    allocated: Capacity
    free: Capacity
    created_at: datetime
    revision: int


def region_view(
    record: RegionRecord, revision: int, *, alive: bool, heartbeat: HeartbeatRecord | None
) -> RegionView:
    """Join a region's record with its liveness. Unreachable wins over cordoned: a lost
    region is the more urgent fact, and `cordoned` still says whether it is cordoned."""
    if not alive:
        state = RegionState.UNREACHABLE
    elif record.cordon is not None:
        state = RegionState.CORDONED
    else:
        state = RegionState.READY
    capacity = heartbeat.capacity if heartbeat else Capacity()
    allocated = heartbeat.allocated if heartbeat else Capacity()
    return RegionView(
        name=record.name,
        country=record.country,
        labels=record.labels,
        endpoint=record.endpoint,
        state=state,
        cordoned=record.cordon is not None,
        cordon=record.cordon,
        last_heartbeat=heartbeat.at if heartbeat else None,
        capacity=capacity,
        capacity_limit=record.capacity_limit,
        capacity_claimed=heartbeat.claimed if heartbeat else None,
        allocated=allocated,
        free=Capacity(
            cpu=max(0.0, capacity.cpu - allocated.cpu),
            memory_mb=max(0, capacity.memory_mb - allocated.memory_mb),
        ),
        created_at=record.created_at,
        revision=revision,
    )
