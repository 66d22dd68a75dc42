"""Structured logs: one logfmt line per event, tagged with node and service.

    ts=2026-11-25T09:30:00.123Z level=info node=node1 service=storage msg="serving" port=7003

Add context with ``log.info("...", extra={"fields": {"view": 3, "seq": 17}})``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_CONTEXT: dict[str, str] = {}


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}"]
        parts += [f"{k}={_quote(v)}" for k, v in _CONTEXT.items()]
        parts.append(f"logger={record.name}")
        parts.append(f"msg={_quote(record.getMessage())}")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(*, service: str, node: str = "", level: str | None = None) -> None:
    """Configure the root logger for one service process (idempotent)."""
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
    handler.setFormatter(LogfmtFormatter())
    handler._cretoai = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(chosen)
