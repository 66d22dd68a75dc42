"""Structured logs: the logfmt and JSON formatters (fields, exceptions, trace context), the
format chosen by config, and a real storage process writing JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from cretoai import logs
from cretoai.logs import JsonFormatter, LogfmtFormatter, make_formatter, setup_logging
from devkit.storage import ServiceProcess


@pytest.fixture(autouse=True)
def context() -> Iterator[None]:
    saved = dict(logs._CONTEXT)
    logs._CONTEXT.clear()
    logs._CONTEXT.update(node="node1", service="consensus")
    yield
    logs._CONTEXT.clear()
    logs._CONTEXT.update(saved)


def record(
    msg: str = "view change", *, fields: dict[str, object] | None = None, exc: bool = False
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("disk on fire\nsecond line")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord(
        "services.consensus.driver", logging.WARNING, __file__, 1, msg, None, exc_info
    )
    if fields is not None:
        rec.fields = fields
    return rec


def test_json_line_has_context_message_and_fields() -> None:
    line = JsonFormatter().format(record(fields={"view": 3, "seq": 17, "peer": "node2"}))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "warning"
    assert obj["node"] == "node1" and obj["service"] == "consensus"
    assert obj["logger"] == "services.consensus.driver"
    assert obj["msg"] == "view change"
    assert obj["ts"].endswith("Z") and "T" in obj["ts"]
    assert (obj["view"], obj["seq"], obj["peer"]) == (3, 17, "node2")
    assert "trace_id" not in obj and "exc" not in obj


def test_json_fields_never_hide_the_context_and_odd_values_become_text() -> None:
    obj = json.loads(JsonFormatter().format(record(fields={"node": "x", "path": Path("/a")})))
    assert obj["node"] == "node1"
    assert obj["path"] == "/a"


def test_exception_is_one_field_on_one_line() -> None:
    line = JsonFormatter().format(record(exc=True))
    assert "\n" not in line
    exc = json.loads(line)["exc"]
    assert exc.startswith("Traceback") and "RuntimeError: disk on fire\nsecond line" in exc
    text = LogfmtFormatter().format(record(exc=True))
    assert "\n" not in text and 'exc="Traceback' in text


def test_inside_a_span_both_formats_carry_its_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("commit") as span:
        ctx = span.get_span_context()
        obj = json.loads(JsonFormatter().format(record(fields={"seq": 5})))
        text = LogfmtFormatter().format(record(fields={"seq": 5}))
    trace_id, span_id = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    assert obj["trace_id"] == trace_id and obj["span_id"] == span_id
    assert f"trace_id={trace_id} span_id={span_id}" in text
    assert "trace_id" not in LogfmtFormatter().format(record())  # outside: none


def test_logfmt_line_is_unchanged_in_shape() -> None:
    text = LogfmtFormatter().format(record(fields={"view": 3, "seq": 17}))
    assert text.split(" ")[1:] == [
        "level=warning",
        "node=node1",
        "service=consensus",
        "logger=services.consensus.driver",
        'msg="view',
        'change"',
        "view=3",
        "seq=17",
    ]


def test_setup_logging_picks_the_formatter() -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        setup_logging(service="storage", node="node1", log_format="json")
        ours = [h for h in root.handlers if getattr(h, "_cretoai", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        setup_logging(service="storage", node="node1")
        ours = [h for h in root.handlers if getattr(h, "_cretoai", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, LogfmtFormatter)
    finally:
        for handler in list(root.handlers):
            if handler not in before[0]:
                root.removeHandler(handler)
        root.setLevel(before[1])
    with pytest.raises(ValueError, match="xml"):
        make_formatter("xml")


async def test_a_storage_process_writes_json_lines(tmp_path: Path) -> None:
    proc = ServiceProcess.create(tmp_path, env={"CRETOAI_TELEMETRY_LOG_FORMAT": "json"})
    proc.spawn()
    try:
        await proc.wait_serving()
    finally:
        assert proc.terminate() == 0
    lines = [line for line in proc.stderr().splitlines() if line.strip()]
    assert lines, "the storage service logged nothing"
    for line in lines:
        obj = json.loads(line)  # every line is one JSON object
        assert obj["node"] == "node1" and obj["service"] == "storage", line
        assert {"ts", "level", "logger", "msg"} <= obj.keys(), line
