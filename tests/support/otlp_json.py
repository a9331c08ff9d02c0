"""OTLP JSON (the OTLP/HTTP JSON encoding) as protobuf requests and back to plain data, for golden test data.

OTLP JSON differs from protobuf's canonical JSON mapping in one way that matters here: trace and span
ids are hex strings, not base64. They are converted before protobuf's own parser reads the rest.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_to_base64(span: dict[str, Any], where: str) -> None:
    for name in _ID_FIELDS:
        if name in span:
            try:
                span[name] = base64.b64encode(bytes.fromhex(span[name])).decode()
            except ValueError:
                raise ValueError(f"{where}: {name} {span[name]!r} is not hex") from None


def trace_request(document: dict[str, Any]) -> ExportTraceServiceRequest:
    """An ExportTraceServiceRequest from its OTLP JSON form (`{"resourceSpans": [...]}`)."""
    document = copy.deepcopy(document)
    for resource_spans in document.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                where = f"span {span.get('name', '?')!r}"
                _hex_to_base64(span, where)
                for link in span.get("links", ()):
                    _hex_to_base64(link, f"{where} link")
    return json_format.ParseDict(document, ExportTraceServiceRequest())


def plain(value: AnyValue) -> Any:
    """An attribute value as plain JSON data (arrays as lists, key-value lists as objects)."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [plain(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which) if which is not None else None
