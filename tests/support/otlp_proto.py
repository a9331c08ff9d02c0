"""Build OTLP protobuf spans and requests directly, for tests that need exact wire content."""

from __future__ import annotations

import itertools
import os

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

# The fleet's encoding of attribute values, as the demo and the benchmark send them.
from agentopz_otel.fleet import otlp_attributes as attributes

_span_ids = itertools.count(1)


def make_span(
    name: str = "span",
    attrs: dict | None = None,
    trace_id: bytes | None = None,
    parent: bytes = b"",
    error: bool = False,
    start: int = 1_700_000_000_000_000_000,
    duration_ns: int = 250_000_000,
) -> Span:
    return Span(
        trace_id=trace_id or os.urandom(16),
        span_id=next(_span_ids).to_bytes(8, "big"),
        parent_span_id=parent,
        name=name,
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration_ns,
        attributes=attributes(attrs or {}),
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def make_request(spans: list[Span], service: str = "svc") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans: ResourceSpans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(attributes({"service.name": service}))
    resource_spans.scope_spans.add().spans.extend(spans)
    return request


def span_attributes(span: Span) -> dict:
    """Attributes of a span as plain Python values (first of repeated keys wins)."""
    result = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        value = (
            getattr(kv.value, which)
            if which != "array_value"
            else [getattr(v, v.WhichOneof("value")) for v in kv.value.array_value.values]
        )
        result.setdefault(kv.key, value)
    return result
