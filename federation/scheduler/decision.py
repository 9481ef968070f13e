"""What the scheduler decides, and the regions and verdicts it decides from.

A `Decision` holds replicas per region, a reason and a message for the service's
conditions, and one `RegionChoice` per region saying why it was chosen, kept, left
eligible or rejected. The explanation is O(regions), so it may be handed over as a
function (see `scheduler.explain`) and is built on first read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["chosen", "kept", "eligible", "rejected"]

# Reasons, as they appear in service conditions.
PLACED = "Placed"
NO_COMPLIANT_REGION = "NoCompliantRegion"
INSUFFICIENT_CAPACITY = "InsufficientCapacity"
SPREAD_UNSATISFIED = "SpreadUnsatisfied"
SCALED_TO_ZERO = "ScaledToZero"
COMMAND_NOT_ALLOWED = "CommandNotAllowed"


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """A region as the scheduler sees it. `cpu_free`/`memory_free` exclude every
    service's placed replicas; `unreachable_for` is seconds since the lease was lost."""

    name: str
    country: str | None
    labels: Mapping[str, str]
    state: Literal["ready", "unreachable", "cordoned"]
    cpu_free: float
    memory_free: int
    unreachable_for: float | None = None
    # The agent's --allow-exec patterns from its heartbeat; None: no policy reported.
    allow_exec: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The residency verdict for one region (from `residency.evaluate`)."""

    allowed: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RegionChoice:
    """One line of the explanation: what happened to one region, and why."""

    region: str
    country: str | None
    outcome: Outcome
    replicas: int
    reasons: tuple[str, ...]
    compliant: bool = True


@dataclass(frozen=True, eq=False)
class Decision:
    """Replicas per region for one service, with the explanation of every region.

    `explanation` is the list of lines or a function that builds it; `regions` builds
    it on first use and keeps it. The inputs of `place` must not be changed while an
    unread explanation may still need them."""

    service: str
    placement: dict[str, int]
    desired: int
    reason: str
    message: str
    explanation: list[RegionChoice] | Callable[[], list[RegionChoice]] = field(
        default_factory=list, repr=False
    )
    # Known without building the explanation (None: derive them from it).
    allowed: frozenset[str] | None = field(default=None, repr=False)
    held: Mapping[str, int] | None = field(default=None, repr=False)

    @property
    def regions(self) -> list[RegionChoice]:
        """One line per region, sorted by region name."""
        lines = self.explanation
        if callable(lines):
            lines = lines()
            object.__setattr__(self, "explanation", lines)
        return lines

    @property
    def placed(self) -> int:
        return sum(self.placement.values())

    @property
    def allowed_regions(self) -> list[str]:
        """Regions residency allows, whatever their state or capacity (sorted)."""
        if self.allowed is not None:
            return sorted(self.allowed)
        return [c.region for c in self.regions if c.compliant]

    @property
    def kept(self) -> dict[str, int]:
        """Replicas left assigned in lost regions during their failover grace."""
        if self.held is not None:
            return dict(self.held)
        return {c.region: c.replicas for c in self.regions if c.outcome == "kept"}

    def _key(self) -> tuple[Any, ...]:
        return (self.service, self.placement, self.desired, self.reason, self.message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self._key() == other._key() and self.regions == other.regions

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Decision(service={self.service!r}, placement={self.placement!r}, "
            f"desired={self.desired!r}, reason={self.reason!r}, message={self.message!r})"
        )
