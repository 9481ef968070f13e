"""The agent's share of a deploy's trace: an apply span under the controller's
placement span, whose context the assignment carries."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry.trace import Span

from federation.agent.drivers import Desired
from federation.telemetry import setup


class ApplyTracer:
    """Remembers which assignment epochs were traced, so each is traced once."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._traced: dict[str, int] = {}

    @contextlib.contextmanager
    def applying(self, desired: Mapping[str, Desired]) -> Iterator[None]:
        """Spans, one per newly seen traced assignment, around one driver apply."""
        if not setup.tracing_enabled():
            yield
            return
        spans: list[Span] = []
        for name, d in desired.items():
            if d.assignment.trace and self._traced.get(name) != d.epoch:
                self._traced[name] = d.epoch
                spans.append(
                    setup.tracer().start_span(
                        "agent.apply",
                        context=setup.context_from(d.assignment.trace),
                        attributes={
                            "federation.region": self.region,
                            "federation.service": name,
                            "federation.replicas": d.assignment.replicas,
                            "federation.epoch": d.epoch,
                        },
                    )
                )
        for name in [n for n in self._traced if n not in desired]:
            del self._traced[name]
        try:
            yield
        finally:
            for span in spans:
                span.end()
