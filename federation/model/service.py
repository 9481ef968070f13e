"""Services: what operators deploy, and the placement the controller decides for them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from federation.model.names import Labels, Name
from federation.model.secret import REFERENCE_PATTERN, WEBHOOK_SIGNING, parse_reference

Text = Annotated[str, Field(max_length=4096)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]
SecretReference = Annotated[str, Field(pattern=REFERENCE_PATTERN, max_length=320)]
# Set by the driver for every instance: a secret must not hide one.
RESERVED_ENV = ("PORT", "PATH", "HOME")


class Resources(BaseModel):
    """What one replica needs."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(default=0.1, gt=0, le=1024)
    memory_mb: int = Field(default=64, gt=0, le=4 * 1024 * 1024)


class PlacementSpec(BaseModel):
    """Where replicas may go and how they spread."""

    model_config = ConfigDict(extra="forbid")

    min_regions: int = Field(default=1, ge=1, le=100)
    max_per_region: int | None = Field(default=None, ge=1, le=10_000)
    prefer: list[Name] = Field(default_factory=list, max_length=100)
    prefer_labels: dict[Name, Annotated[str, Field(max_length=253)]] = Field(
        default_factory=dict, max_length=32
    )
    regions: list[Name] = Field(default_factory=list, max_length=1000)
    failback: Literal["manual", "auto"] = "manual"


class HealthSpec(BaseModel):
    """How an instance proves it is ready; no `http` means: the process is alive."""

    model_config = ConfigDict(extra="forbid")

    http: Annotated[str, Field(max_length=1024, pattern=r"^/")] | None = None
    interval_s: float = Field(default=2.0, gt=0, le=3600)
    timeout_s: float = Field(default=1.0, gt=0, le=600)


class RolloutSpec(BaseModel):
    """How a new version reaches the regions."""

    model_config = ConfigDict(extra="forbid")

    max_parallel_regions: int = Field(default=1, ge=1, le=1000)
    progress_deadline_s: float = Field(default=120.0, gt=0, le=86_400)
    on_failure: Literal["rollback", "pause"] = "rollback"


class FailoverSpec(BaseModel):
    """Whether and when replicas leave a lost region."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    grace_s: float = Field(default=0.0, ge=0, le=86_400)


class ServiceSpec(BaseModel):
    """Body of `PUT /v1/services/{s}`: the desired state of one service."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    command: list[Text] | None = Field(default=None, min_length=1, max_length=256)
    image: Text | None = None
    version: Annotated[str, Field(min_length=1, max_length=128)] = "1"
    replicas: int = Field(default=1, ge=0, le=10_000)
    resources: Resources = Field(default_factory=Resources)
    data_classes: list[Name] = Field(default_factory=list, max_length=32)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    health: HealthSpec = Field(default_factory=HealthSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    failover: FailoverSpec = Field(default_factory=FailoverSpec)
    singleton: bool = False
    labels: Labels = Field(default_factory=dict)
    env: dict[EnvName, Text] = Field(default_factory=dict, max_length=256)
    # ENV_NAME -> `secret#key`: the value reaches the instance's environment, and only
    # where residency allows every data class of the secret (federation.model.secret).
    secrets: dict[EnvName, SecretReference] = Field(default_factory=dict, max_length=64)
    # Also give each secret as a file, /run/secrets/ENV_NAME (FEDERATION_SECRETS_DIR):
    # a tmpfs inside the exec driver's sandbox, on no disk. The raw driver refuses it.
    secret_files: bool = False

    @field_validator("data_classes")
    @classmethod
    def _no_signing_keys(cls, classes: list[str]) -> list[str]:
        if WEBHOOK_SIGNING in classes:
            raise ValueError(f"{WEBHOOK_SIGNING!r} is for webhook signing keys, not services")
        return classes

    @model_validator(mode="after")
    def _runnable(self) -> ServiceSpec:
        if self.command is None and self.image is None:
            raise ValueError("one of command (process driver) or image (containers) is required")
        if self.singleton and self.replicas > 1:
            raise ValueError("a singleton service runs at most 1 replica")
        both = sorted(set(self.env) & set(self.secrets))
        if both:
            raise ValueError(f"secrets: {', '.join(both)} also set in env; give each name once")
        reserved = sorted(
            n for n in self.secrets if n in RESERVED_ENV or n.startswith("FEDERATION_")
        )
        if reserved:
            raise ValueError(f"secrets: {', '.join(reserved)} is set by the agent; use another")
        return self

    def secret_names(self) -> set[str]:
        """The secrets this service references."""
        return {parse_reference(ref)[0] for ref in self.secrets.values()}


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    RUNNING = "Running"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class Condition(BaseModel):
    """One fact about a service's status, with a machine reason and a human message."""

    type: str
    reason: str
    message: str


class Evidence(BaseModel):
    """What a placement was decided under, kept for audits."""

    countries: dict[str, str | None]
    policies: dict[str, int]
    groups: dict[str, int] = Field(default_factory=dict)
    allowed_regions: list[str]


class PlacementRecord(BaseModel):
    """The controller's decision for one service: replicas per region and why."""

    service: str
    generation: int
    regions: dict[str, int]
    desired: int
    reason: str
    message: str
    evidence: Evidence
    decided_at: datetime
    # Regions residency no longer allows, kept running until replacements are ready
    # or the rollout deadline passes: region -> (replicas, since).
    draining: dict[str, Draining] = Field(default_factory=dict)
    rollout: RolloutState | None = None


class Draining(BaseModel):
    """Replicas left in a region that residency no longer allows, until replaced."""

    replicas: int
    since: datetime


class RolloutState(BaseModel):
    """A rollout in progress (or finished): which regions run which generation.

    `from_runtime` is what ran before, so a failed rollout can return every region to
    it even though the stored spec has moved on.
    """

    from_version: str
    to_version: str
    from_generation: int
    to_generation: int
    from_runtime: Runtime
    started_at: datetime
    region_started: dict[str, datetime] = Field(default_factory=dict)
    done: list[str] = Field(default_factory=list)
    state: Literal["progressing", "complete", "failed", "rolled_back"] = "progressing"
    message: str = ""


class ServiceRecord(BaseModel):
    """A service as stored: the spec and its generation (bumped on every spec change)."""

    spec: ServiceSpec
    generation: int
    created_at: datetime
    updated_at: datetime
    # The W3C trace context of the request that wrote this generation (when tracing
    # is on), so the controller's placement joins the deploy's trace.
    trace: dict[str, str] | None = None
    # The version of each referenced secret this generation delivers; a rotation makes
    # a new generation, rolled out region by region (federation.store.secrets.roll).
    secret_versions: dict[str, int] = Field(default_factory=dict)


class Runtime(BaseModel):
    """What instances run: a change of version, command or image is a rollout."""

    generation: int
    version: str
    command: list[str] | None
    image: str | None
    resources: Resources
    health: HealthSpec
    env: dict[str, str]
    singleton: bool
    # References only (ENV -> `secret#key`) and the versions to deliver: the values are
    # added to the assignment stream of the region's own token, never stored here.
    secrets: dict[str, str] = Field(default_factory=dict)
    secret_versions: dict[str, int] = Field(default_factory=dict)
    secret_files: bool = False

    @staticmethod
    def of(
        spec: ServiceSpec, generation: int, secret_versions: dict[str, int] | None = None
    ) -> Runtime:
        return Runtime(
            generation=generation,
            version=spec.version,
            command=spec.command,
            image=spec.image,
            resources=spec.resources,
            health=spec.health,
            env=spec.env,
            singleton=spec.singleton,
            secrets=spec.secrets,
            secret_files=spec.secret_files,
            secret_versions={
                n: v for n, v in (secret_versions or {}).items() if n in spec.secret_names()
            },
        )

    def rollout_key(
        self,
    ) -> tuple[str, tuple[str, ...] | None, str | None, tuple[tuple[str, int], ...]]:
        """What, when it changes, rolls out region by region: the version, the command,
        the image, and the versions of the secrets delivered (a rotation)."""
        versions = tuple(sorted(self.secret_versions.items()))
        return (self.version, tuple(self.command) if self.command else None, self.image, versions)


class Assignment(BaseModel):
    """What one region must run for one service: the record its agent watches.

    Carries everything the driver needs, so an agent never reads the service itself.
    The etcd revision of this record is the assignment's epoch, given to instances
    for fencing.
    """

    service: str
    region: str
    replicas: int
    runtime: Runtime
    draining: bool = False
    # The W3C trace context of the placement that wrote it (when tracing is on): the
    # agent's apply continues the deploy's trace. Not part of what the region must run.
    trace: dict[str, str] | None = None

    def same_work(self, other: Assignment) -> bool:
        """Whether both ask the region for the same thing (the trace aside)."""
        if self.trace is None and other.trace is None:
            return self == other
        return self.model_copy(update={"trace": None}) == other.model_copy(update={"trace": None})


# A region's status report comes in whole (`PUT /v1/regions/{r}/status`), at most
# MAX_REPORT_INSTANCES instances (413 above; the route's body may be up to
# MAX_REPORT_BYTES). It is stored per service, as counts (`ServiceReport`), and only
# the services whose counts changed are written: a key's size does not grow with the
# region's size or a service's replicas, and a report with nothing new writes nothing.
# Each key is bounded by construction: at most MAX_REPORT_GENERATIONS generations, one
# message cut to MAX_STORED_MESSAGE. The model reads what was stored, so it stays
# lenient on the request's count.
MAX_REPORT_INSTANCES = 20_000
MAX_REPORT_BYTES = 16 * 1024 * 1024
MAX_REPORT_GENERATIONS = 16
MAX_STORED_MESSAGE = 256


def _cut(message: str) -> str:
    return message[:MAX_STORED_MESSAGE]


class InstanceReport(BaseModel):
    """One instance as its region's agent sees it."""

    model_config = ConfigDict(extra="forbid")

    service: Name
    instance: Annotated[str, Field(min_length=1, max_length=128)]
    generation: int = Field(ge=0, le=2**63 - 1)
    version: Annotated[str, Field(max_length=128)]
    state: Literal["starting", "running", "failed", "stopped"]
    ready: bool
    message: Annotated[str, Field(max_length=1024), AfterValidator(_cut)] = ""
    # Optional, so reports of older agents and of drivers that measure nothing stay valid.
    # Why the instance is not running, when the agent knows (`OOMKilled`,
    # `CommandNotAllowed`).
    reason: Annotated[str, Field(max_length=64)] | None = None
    cpu_seconds: float | None = Field(default=None, ge=0)  # CPU used since it started
    memory_bytes: int | None = Field(default=None, ge=0)  # memory in use now


class RegionReport(BaseModel):
    """Body of `PUT /v1/regions/{r}/status`: every instance the region runs."""

    model_config = ConfigDict(extra="forbid")

    instances: list[InstanceReport] = Field(default_factory=list, max_length=MAX_REPORT_INSTANCES)
    at: datetime | None = None


class ServiceReport(BaseModel):
    """What a region reports of one service, as stored at `reports/{region}/{service}`:
    counts, not instances, so it changes only when something a reader uses changes
    (not with every instance's measured CPU), and its size is bounded. It carries no
    time: the same counts serialize to the same bytes, which is how "unchanged" is
    told (the key's mod_revision says when it last changed)."""

    model_config = ConfigDict(extra="forbid")

    ready: dict[int, int] = Field(default_factory=dict)  # generation -> ready instances
    states: dict[str, int] = Field(default_factory=dict)  # state -> instances
    # The message of an instance refused because the region's allowlist does not admit
    # its command (reason `CommandNotAllowed`), if any.
    refused: str | None = None
    # The message of an instance the agent did not start because the server withheld
    # its secrets (reason `SecretWithheld`), if any.
    withheld: str | None = None
    # The last failed instance's reason and message, for an operator reading why.
    reason: str | None = None
    message: str = ""

    def ready_count(self, generation: int) -> int:
        """Ready instances at `generation`."""
        return self.ready.get(generation, 0)

    @classmethod
    def of(cls, instances: Sequence[InstanceReport]) -> ServiceReport:
        """The counts of one service's instances (the newest generations only)."""
        ready: dict[int, int] = {}
        states: dict[str, int] = {}
        report = cls()
        for i in instances:
            states[i.state] = states.get(i.state, 0) + 1
            if i.ready:
                ready[i.generation] = ready.get(i.generation, 0) + 1
            if i.reason == "CommandNotAllowed":
                report.refused = i.message
            if i.reason == "SecretWithheld":
                report.withheld = i.message
            if i.state == "failed":
                report.reason, report.message = i.reason, i.message
        newest = sorted(ready, reverse=True)[:MAX_REPORT_GENERATIONS]
        report.ready = {g: ready[g] for g in sorted(newest)}
        report.states = dict(sorted(states.items()))
        return report


def by_service(report: RegionReport) -> dict[str, ServiceReport]:
    """A region's report as stored: one `ServiceReport` per service it names."""
    grouped: dict[str, list[InstanceReport]] = {}
    for i in report.instances:
        grouped.setdefault(i.service, []).append(i)
    return {name: ServiceReport.of(found) for name, found in grouped.items()}


PlacementRecord.model_rebuild()
RolloutState.model_rebuild()
