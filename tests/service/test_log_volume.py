"""Log volume under hostile names: bounded per kind of warning, values clipped."""

from __future__ import annotations

import logging
import time

import grpc
from support.otlp_proto import make_request, make_span
from support.sdk_agent import chat_attributes

from agentopz_otel.bounded_log import MAX_VALUE_CHARS, WARNING_BURST, BoundedLog, clip

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# A warning line: the log prefix, the message and at most two clipped values (quoted, with the marker).
MAX_LINE_BYTES = 200 + 250 + 2 * (MAX_VALUE_CHARS + 30)


def test_clip_marks_what_it_cut():
    assert clip("a" * MAX_VALUE_CHARS) == "a" * MAX_VALUE_CHARS
    assert clip("a" * (MAX_VALUE_CHARS + 1)) == "a" * MAX_VALUE_CHARS + f"...[{MAX_VALUE_CHARS + 1} chars]"


def test_each_subject_once_and_a_burst_per_period_then_the_count_left_out(caplog):
    caplog.set_level(logging.WARNING)
    warnings = BoundedLog(logging.getLogger("test.bounded"), burst=2, period_seconds=0.2)
    for name in ("a", "b", "a", "c", "d"):
        warnings.warning(name, "unknown %s", name)
    assert [r.getMessage() for r in caplog.records] == ["unknown a", "unknown b"]
    time.sleep(0.25)
    warnings.warning("e", "unknown %s", "e")
    assert [r.getMessage() for r in caplog.records][2:] == [
        "2 more warnings like these were left out in the last 0.2 s",
        "unknown e",
    ]


def log_lines_after(service, offset: int) -> list[str]:
    return service.log()[offset:].splitlines()


def send(service, requests) -> None:
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        for request in requests:
            export(request.SerializeToString(), timeout=30)


def test_ten_thousand_hostile_model_names_write_a_bounded_log(service):
    offset = len(service.log())
    # Long enough to be clipped and past the label's max_value_length, short enough to be looked up.
    names = [f"hostile-model-{index}-" + "x" * 280 for index in range(10_000)]
    send(
        service,
        (
            make_request([make_span("chat", chat_attributes(model=name)) for name in names[i : i + 500]])
            for i in range(0, 10_000, 500)
        ),
    )
    assert service.wait_for("agentopz_llm_unpriced_calls_total", 10_000) == 10_000
    lines = log_lines_after(service, offset)
    # One burst of unknown-model warnings (the rest are left out), one for the model label's value
    # length, one for the catalogue lookups past cost.max_lookups_per_second.
    assert len([line for line in lines if "no price for" in line]) == WARNING_BURST
    assert len([line for line in lines if "label model" in line]) == 1
    assert len([line for line in lines if "max_lookups_per_second" in line]) == 1
    assert len(lines) == WARNING_BURST + 2
    log_bytes = len("\n".join(lines).encode())
    assert log_bytes <= (WARNING_BURST + 2) * MAX_LINE_BYTES, log_bytes
    assert all("chars]" in line for line in lines if "max_lookups" not in line)


def test_the_same_megabyte_model_name_ten_times_is_one_short_warning(service):
    offset = len(service.log())
    huge = "m" * 2**20
    send(service, (make_request([make_span("chat", chat_attributes(model=huge))]) for _ in range(10)))
    assert service.wait_for("agentopz_llm_unpriced_calls_total", 10) == 10
    lines = log_lines_after(service, offset)
    assert len([line for line in lines if "no price for" in line]) == 1
    assert len(lines) == 2  # and one for the model label's value length
    assert all(len(line.encode()) <= MAX_LINE_BYTES and f"...[{2**20} chars]" in line for line in lines)
