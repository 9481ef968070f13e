"""JSON log lines: one object per record with time, level, logger, message, and the
trace and span ids when a span is active. Bearer tokens and federation secrets are
redacted from every message, whatever logged them."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_SECRET = re.compile(r"(?i)(bearer\s+)\S+|fed_[A-Za-z0-9_\-]{8,}")


def redact(text: str) -> str:
    """`text` with bearer tokens and federation secrets replaced by `[redacted]`."""
    return _SECRET.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


class JsonFormatter(logging.Formatter):
    """Structured lines for log shippers (`federation --log-format json`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, separators=(",", ":"), default=str)


class RedactingFormatter(logging.Formatter):
    """The text format, with the same redaction."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
