"""What a controller pass tells telemetry, and the one check it must pass to write.

- Before writing: the residency invariant. A plan that puts a replica in a region
  whose verdict is not `allowed` is a bug; it is counted
  (`federation_residency_violations_total`), logged, and not written.
- Traces: a service whose new generation was written by a traced request gets a
  placement span in that trace; the span's context goes into the assignments written
  for it, so the agent's apply joins the same trace.
- Gauges from the pass (regions by state, services by phase, residency rejections,
  services changed) and the failover clock: from the pass that first sees a region
  unreachable to the pass after which none of its services is placed there.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Link, Span

from federation.controller.ledger import Ledger
from federation.model.service import Phase
from federation.planning.plan import ServicePlan
from federation.planning.world import World
from federation.telemetry import metrics, setup

log = logging.getLogger(__name__)

REGION_STATES = ("ready", "unreachable", "cordoned")


def region_states(world: World) -> dict[str, str]:
    """Each region's state as the planner sees it (lease, then cordon)."""
    return {
        name: "unreachable"
        if name not in world.alive
        else ("cordoned" if record.cordon is not None else "ready")
        for name, record in world.regions.items()
    }


@dataclass
class _Lost:
    since: float  # wall clock: when the mirror saw the lease go, else first seen
    services: set[str] = field(default_factory=set)


class PassObserver:
    """Telemetry for the passes of one controller (kept across passes: the failover
    clocks)."""

    def __init__(self, *, region_ttl: float) -> None:
        self.region_ttl = region_ttl
        self._lost: dict[str, _Lost] = {}
        self._spans: dict[str, Span] = {}

    # -- the invariant ------------------------------------------------------------------

    def violations(self, plans: Sequence[ServicePlan]) -> list[ServicePlan]:
        """Plans that place a replica where residency says no (there must be none)."""
        bad = []
        for p in plans:
            if p.evaluation is None:
                continue
            allowed = set(p.evaluation.allowed_regions)
            wrong = sorted(r for r in p.record.regions if r not in allowed)
            if wrong:
                bad.append(p)
                metrics.residency_violations.add(1)
                log.error(
                    "controller: BUG: plan for %s places replicas in %s, which residency "
                    "rejects; not written (please report it)",
                    p.service,
                    ", ".join(wrong),
                )
        return bad

    # -- traces -------------------------------------------------------------------------

    def continue_traces(self, world: World, changed: Sequence[ServicePlan]) -> None:
        """Open a placement span in the deploy's trace for each service whose new
        generation came from a traced request, and stamp its assignments with it."""
        if not setup.tracing_enabled():
            return
        here = trace.get_current_span().get_span_context()
        links = [Link(here)] if here.is_valid else []
        for p in changed:
            service = world.services.get(p.service)
            if service is None or not service[0].trace or not p.put:
                continue
            prev = world.placements.get(p.service)
            if prev is not None and prev[0].generation >= p.record.generation:
                continue  # this generation was placed before: a move, not its deploy
            span = setup.tracer().start_span(
                "controller.place",
                context=setup.context_from(service[0].trace),
                links=links,
                attributes={
                    "federation.service": p.service,
                    "federation.generation": p.record.generation,
                    "federation.reason": p.record.reason,
                    "federation.regions": ",".join(sorted(p.record.regions)),
                },
            )
            self._spans[p.service] = span
            with trace.use_span(span, end_on_exit=False):
                carrier = setup.current_carrier()
            p.put = {r: a.model_copy(update={"trace": carrier}) for r, a in p.put.items()}

    @contextlib.contextmanager
    def writing(self, batch: Sequence[ServicePlan]) -> Iterator[None]:
        """The batch's etcd write runs inside the first traced service's placement span."""
        span = next((self._spans[p.service] for p in batch if p.service in self._spans), None)
        if span is None:
            yield
            return
        with trace.use_span(span, end_on_exit=False):
            yield

    def end_spans(self) -> None:
        for span in self._spans.values():
            span.end()
        self._spans = {}

    # -- gauges and clocks --------------------------------------------------------------

    def starting(self, world: World, ledger: Ledger) -> None:
        """Before a pass plans anything: start the clock of each region newly seen
        unreachable, with the services the ledger still holds there."""
        states = region_states(world)
        now = time.time()
        for region, state in states.items():
            if state != "unreachable":
                self._lost.pop(region, None)
            elif region not in self._lost:
                lost_at = world.lost_at.get(region)
                since = lost_at.timestamp() if lost_at is not None else now
                self._lost[region] = _Lost(since=min(since, now), services=ledger.placed_in(region))
        for region in [r for r in self._lost if r not in states]:
            del self._lost[region]

    def planned(self, world: World, ledger: Ledger, changed: int) -> None:
        """The gauges after a pass, counted over every service (from the ledger)."""
        by_state = dict.fromkeys(REGION_STATES, 0)
        for state in region_states(world).values():
            by_state[state] = by_state.get(state, 0) + 1
        by_phase = {phase.value: 0 for phase in Phase}
        for phase, count in ledger.phases.items():
            if count:
                by_phase[phase] = count
        metrics.observe_pass(
            metrics.PassSnapshot(
                regions_by_state=by_state,
                services_by_phase=by_phase,
                rejections_by_reason={k: n for k, n in ledger.rejections.items() if n},
                queue_depth=changed,
            )
        )

    def written(self, ledger: Ledger) -> None:
        """After the pass's writes: a lost region none of whose services is placed
        there any more has failed over; record how long that took."""
        self.end_spans()
        now = time.time()
        for region, lost in self._lost.items():
            if not lost.services:
                continue
            if any(ledger.held[n].count_in(region) for n in lost.services if n in ledger.held):
                continue
            metrics.failover_duration.record(now - lost.since)
            log.info(
                "controller: %s failed over: %d services re-placed %.2f s after its lease expired",
                region,
                len(lost.services),
                now - lost.since,
            )
            lost.services = set()

    def stopped_leading(self) -> None:
        metrics.clear_pass()
        self._lost = {}
        self.end_spans()
