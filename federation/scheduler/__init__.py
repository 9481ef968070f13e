"""Scheduler: filter -> rank -> assign replicas to regions, with an explanation.

Pure: no I/O, no clock, no etcd. The controller feeds it regions, residency verdicts
and current placements; drills feed it a what-if view. Tested with hypothesis.
"""

from federation.scheduler.decision import (
    COMMAND_NOT_ALLOWED,
    INSUFFICIENT_CAPACITY,
    NO_COMPLIANT_REGION,
    PLACED,
    SCALED_TO_ZERO,
    SPREAD_UNSATISFIED,
    Decision,
    RegionChoice,
    RegionInfo,
    Verdict,
)
from federation.scheduler.place import place, place_all

__all__ = [
    "COMMAND_NOT_ALLOWED",
    "INSUFFICIENT_CAPACITY",
    "NO_COMPLIANT_REGION",
    "PLACED",
    "SCALED_TO_ZERO",
    "SPREAD_UNSATISFIED",
    "Decision",
    "RegionChoice",
    "RegionInfo",
    "Verdict",
    "place",
    "place_all",
]
