"""Structured logs: one line per event, tagged with node and service, as logfmt or JSON.

    ts=2026-11-25T09:30:00.123Z level=info node=node1 service=storage logger=… msg=serving port=7003
    {"ts": "2026-11-25T09:30:00.123Z", "level": "info", "node": "node1", "service": "storage", …}

The format is ``[telemetry] log_format`` (``logfmt``, the default, or ``json``).
Add context with ``log.info("...", extra={"fields": {"view": 3, "seq": 17}})``. A line
logged inside an active OpenTelemetry span carries its ``trace_id`` and ``span_id``
(hex); an exception (``exc_info``) is one ``exc`` field, never lines of its own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from opentelemetry import trace

_CONTEXT: dict[str, str] = {}

#: The values of ``[telemetry] log_format``.
LOG_FORMATS = ("logfmt", "json")


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def _timestamp(record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{ts}.{int(record.msecs):03d}Z"


def _trace_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` (hex) of the active span, when there is one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"ts={_timestamp(record)}", f"level={record.levelname.lower()}"]
        parts += [f"{k}={_quote(v)}" for k, v in _CONTEXT.items()]
        parts.append(f"logger={record.name}")
        parts.append(f"msg={_quote(record.getMessage())}")
        parts += [f"{k}={v}" for k, v in _trace_ids().items()]
        parts += [f"{k}={_quote(v)}" for k, v in _fields(record).items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; field values that JSON cannot hold are written as text."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower()}
        line.update(_CONTEXT)
        line["logger"] = record.name
        line["msg"] = record.getMessage()
        line.update(_trace_ids())
        for key, value in _fields(record).items():
            line.setdefault(str(key), value)  # a field never hides ts, level, node, ...
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # json.dumps escapes newlines inside strings: one event is always one line
        return json.dumps(line, default=str, ensure_ascii=False)


def make_formatter(log_format: str = "logfmt") -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "logfmt":
        return LogfmtFormatter()
    raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")


def setup_logging(
    *, service: str, node: str = "", level: str | None = None, log_format: str = "logfmt"
) -> None:
    """Configure the root logger for one service process (idempotent)."""
    formatter = make_formatter(log_format)
    _CONTEXT.clear()
    if node:
        _CONTEXT["node"] = node
    _CONTEXT["service"] = service
    chosen = (level or os.environ.get("CRETOAI_LOG_LEVEL") or "info").upper()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cretoai", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler._cretoai = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(chosen)
