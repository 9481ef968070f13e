"""What one controller pass did, told as one sentence.

The pass returns it and the controller logs it, once per pass: at INFO when the pass
wrote or tried to write something, at DEBUG when it had nothing to do (a quiet
federation would otherwise log a line every few seconds). The per-service sentences
(`ServicePlan.sentence`) are logged at DEBUG.

    incremental pass: planned 1 service, wrote 1 in 1 txn: placed 1 (patient-records)
    incremental pass: planned 1 service, wrote 1 in 1 txn: moved 1 (patient-records)
    full pass: planned 120 services, nothing to write

A written service was *placed* (it held no region before), *moved* (its regions or
their replica counts changed), *unplaced* (it holds no region now) or *updated*
(same regions: a rollout step, a drain, a new reason).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from federation.controller.writes import Written
from federation.planning.plan import ServicePlan
from federation.planning.world import World

_SHOWN = 3  # service names shown per kind of change


@dataclass
class PassSummary:
    """Counts and names gathered while a pass runs."""

    kind: str  # "full" or "incremental"
    planned: int = 0
    placed: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # lost a race: planned again
    not_leader: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # plans that broke residency
    removed: list[str] = field(default_factory=list)  # deleted services' leftovers
    txns: set[int] = field(default_factory=set)  # revisions of the txns that landed
    moving: int = 0  # services still in motion after the pass

    @property
    def wrote(self) -> int:
        return len(self.placed) + len(self.moved) + len(self.unplaced) + len(self.updated)

    @property
    def acted(self) -> bool:
        """Did the pass write, or try to?"""
        return bool(self.wrote or self.lost or self.not_leader or self.refused or self.removed)

    def refuse(self, plans: Sequence[ServicePlan]) -> None:
        self.refused += [p.service for p in plans]

    def add(self, world: World, results: Sequence[Written]) -> None:
        """Sort the outcome of each write by what it did to the service's regions."""
        for row in results:
            name = row.plan.service
            if row.outcome == "lost a race":
                self.lost.append(name)
                continue
            if row.outcome == "not leader":
                self.not_leader.append(name)
                continue
            self.txns.add(row.revision)
            before = world.placements.get(name)
            was = before[0].regions if before is not None else {}
            now = row.plan.record.regions
            if was == now:
                self.updated.append(name)
            elif not was:
                self.placed.append(name)
            elif not now:
                self.unplaced.append(name)
            else:
                self.moved.append(name)

    @property
    def sentence(self) -> str:
        text = f"{self.kind} pass: planned {_count(self.planned, 'service')}"
        if not self.acted:
            text += ", nothing to write"
        elif not self.wrote:
            text += ", wrote nothing"
        else:
            text += f", wrote {self.wrote:,} in {_count(len(self.txns), 'txn')}: " + "; ".join(
                f"{verb} {len(names):,} ({_some(names)})"
                for verb, names in (
                    ("placed", self.placed),
                    ("moved", self.moved),
                    ("unplaced", self.unplaced),
                    ("updated", self.updated),
                )
                if names
            )
        for what, names in (
            ("lost a race, planned again", self.lost),
            ("not written, no longer leader", self.not_leader),
            ("refused: the plan breaks residency", self.refused),
            ("deleted, leftovers removed", self.removed),
        ):
            if names:
                text += f"; {len(names):,} {what} ({_some(names)})"
        if self.moving:
            text += f"; {self.moving:,} still moving"
        return text


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _some(names: Sequence[str]) -> str:
    shown = heapq.nsmallest(_SHOWN, names)
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more else "")
