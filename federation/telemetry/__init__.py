"""Telemetry: OpenTelemetry metrics (served as Prometheus text on `/metrics`), traces
(exported over OTLP only when the standard OTEL_* variables ask for it) and JSON logs.

- `setup`: the providers. One MeterProvider per process; a TracerProvider only when
  export is configured (or a test installs one). Tracing off costs a flag check.
- `metrics`: the instruments, and the last controller pass that the gauges report.
- `logs`: the JSON log formatter (trace ids, secrets redacted).

This package imports nothing else of `federation`: every layer may use it.
"""
