"""Provider setup for metrics and traces.

Metrics are always collected (the instruments cost a few microseconds per record)
unless `OTEL_SDK_DISABLED=true`; they are read only when `/metrics` is scraped, from a
private Prometheus registry. Tracing is off unless `OTEL_TRACES_EXPORTER` (other than
`none`) or an OTLP endpoint variable is set, or a test installs a provider; off, no
span is made and no trace context is copied anywhere (`tracing_enabled()` is a flag).

The trace context travels as a W3C `traceparent` carrier (`dict[str, str]`): from
the API request into the service record, from the controller's placement span into
each assignment, and from there into the agent's apply span.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Mapping

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_NAME = "federation"

_registry = CollectorRegistry(auto_describe=True)
_meter_provider: metrics.MeterProvider | None = None
_tracer_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_tracing = False


def _sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


# -- metrics ---------------------------------------------------------------------------


def meter_provider() -> metrics.MeterProvider:
    """The process's MeterProvider (made on first use; also the global one, so the
    aiohttp server instrumentation's HTTP metrics are served on /metrics too)."""
    global _meter_provider
    if _meter_provider is None:
        if _sdk_disabled():
            _meter_provider = metrics.NoOpMeterProvider()
        else:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            reader = PrometheusMetricReader(
                disable_target_info=True, scope_info_enabled=False, registry=_registry
            )
            _meter_provider = MeterProvider(metric_readers=[reader], resource=_resource())
            metrics.set_meter_provider(_meter_provider)
    return _meter_provider


def meter() -> metrics.Meter:
    return meter_provider().get_meter(_NAME)


def render_metrics() -> tuple[bytes, str]:
    """Every metric in Prometheus text format, and its content type."""
    meter_provider()
    return generate_latest(_registry), CONTENT_TYPE_LATEST


# -- traces ----------------------------------------------------------------------------


def _resource(default_name: str = "federation") -> Resource:
    return Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or default_name})


def tracing_enabled() -> bool:
    """Whether spans are being made at all (checked before making any)."""
    return _tracing


def tracer() -> trace.Tracer:
    """The federation tracer (a no-op tracer when tracing is off)."""
    return _tracer


def install_tracer_provider(provider: TracerProvider | None) -> None:
    """Turn tracing on with `provider` (or off with None), and instrument the aiohttp
    server with it. Must happen before the `web.Application` is built: the
    instrumentation adds its middleware when an Application is constructed."""
    global _tracer_provider, _tracer, _tracing
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    instrumentor = AioHttpServerInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    _tracer_provider = provider
    if provider is None:
        _tracer, _tracing = trace.NoOpTracer(), False
        return
    instrumentor.instrument(tracer_provider=provider)
    _tracer, _tracing = provider.get_tracer(_NAME), True


def export_configured(env: Mapping[str, str] = os.environ) -> bool:
    """Do the OTEL_* variables ask for trace export?"""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_from_env(service_name: str) -> bool:
    """Set up trace export as the OTEL_* variables say (OTLP over HTTP, or `console`);
    returns whether tracing is on. Call before building the aiohttp application."""
    if not export_configured():
        return False
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    provider = TracerProvider(resource=_resource(service_name))
    exporters: list[SpanExporter] = []
    for name in (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = name.strip().lower()
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name in ("otlp", "otlp_proto_http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    install_tracer_provider(provider)
    atexit.register(provider.shutdown)
    return True


def current_carrier() -> dict[str, str] | None:
    """The active span's context as a W3C carrier, or None (tracing off, or no span)."""
    if not _tracing or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def context_from(carrier: Mapping[str, str] | None) -> Context | None:
    """The context a carrier holds (None for no carrier)."""
    if not carrier:
        return None
    return propagate.extract(dict(carrier))


@contextlib.contextmanager
def child_span(name: str, **attributes: str | int | float | bool) -> Iterator[None]:
    """A span under the current one, made only when tracing is on and a span is active
    (background loops do not start traces of their own for every store call)."""
    if not _tracing or not trace.get_current_span().get_span_context().is_valid:
        yield
        return
    with _tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes):
        yield
