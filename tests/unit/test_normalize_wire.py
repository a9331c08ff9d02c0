"""Normalize's native read of span attributes from the request's bytes (processors/normalize_wire.c):
what scan() gives for each kind of value and each unexpected encoding, and that views read that way
equal views read through protobuf, slot by slot, on the golden cases and on randomized spans."""

from __future__ import annotations

import math
import random
import struct

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from support import golden
from support.otlp_json import trace_request
from support.otlp_proto import make_request, make_span

from agentopz_otel.compiled import compiled_modules
from agentopz_otel.components import Context
from agentopz_otel.metrics import Registry
from agentopz_otel.processors import normalize
from agentopz_otel.processors.normalize import STRUCTURED, Normalizer
from agentopz_otel.receivers.otlp import OtlpReceiver, OtlpReceiverConfig
from agentopz_otel.semconv.dialects import ATTRIBUTE_TABLE
from agentopz_otel.semconv.events import FLAG_EVALUATION_EVENT
from agentopz_otel.semconv.values import (
    INVALID,
    SKIP,
    as_first_text,
    as_integer,
    as_number,
    as_score,
    as_text,
    as_token_count,
    as_usd,
    decoded,
    one_of,
)
from agentopz_otel.spans import Batch, SpanView

needs_native = pytest.mark.skipif(normalize.scan is None, reason="the native module is not built (pure Python)")


def scanned(request: ExportTraceServiceRequest | bytes):
    wire = request if isinstance(request, bytes) else request.SerializeToString()
    return normalize.scan(wire, STRUCTURED)


def one_span(*attributes: KeyValue) -> ExportTraceServiceRequest:
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    span.attributes.extend(attributes)
    return make_request([span])


@needs_native
def test_each_kind_of_value_is_given_as_protobuf_gives_it() -> None:
    request = one_span(
        KeyValue(key="text", value=AnyValue(string_value="héllo")),
        KeyValue(key="empty", value=AnyValue(string_value="")),
        KeyValue(key="yes", value=AnyValue(bool_value=True)),
        KeyValue(key="no", value=AnyValue(bool_value=False)),
        KeyValue(key="small", value=AnyValue(int_value=-1)),
        KeyValue(key="least", value=AnyValue(int_value=-(2**63))),
        KeyValue(key="most", value=AnyValue(int_value=2**63 - 1)),
        KeyValue(key="zero", value=AnyValue(int_value=0)),
        KeyValue(key="half", value=AnyValue(double_value=0.5)),
        KeyValue(key="array", value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a")]))),
        KeyValue(key="list", value=AnyValue(kvlist_value=KeyValueList())),
        KeyValue(key="bytes", value=AnyValue(bytes_value=b"\x00")),
        KeyValue(key="index", value=AnyValue(string_value_strindex=5)),
        KeyValue(key="unset", value=AnyValue()),
        KeyValue(key="no value"),
        KeyValue(value=AnyValue(string_value="no key")),
    )
    [(shape, values, *_)] = scanned(request)
    keys = ["text", "empty", "yes", "no", "small", "least", "most", "zero", "half", "array", "list", "bytes"]
    assert shape == "\x00".join([*keys, "index", "unset", "no value", ""])
    assert values == [
        *("héllo", "", True, False, -1, -(2**63), 2**63 - 1, 0, 0.5),
        *(("a",), STRUCTURED, STRUCTURED, STRUCTURED, None, None, "no key"),
    ]
    assert [type(value) for value in values[:9]] == [str, str, bool, bool, int, int, int, int, float]


def _array(*items: AnyValue) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=items))


@needs_native
@pytest.mark.parametrize(
    "value, expected",
    [
        (_array(), ()),
        (
            _array(AnyValue(string_value="stop"), AnyValue(int_value=-3), AnyValue(bool_value=True), AnyValue()),
            ("stop", -3, True, None),
        ),
        (_array(AnyValue(double_value=0.5), AnyValue(string_value="")), (0.5, "")),
        (_array(*(AnyValue(int_value=item) for item in range(8))), tuple(range(8))),  # at the limit
        (_array(*(AnyValue(int_value=item) for item in range(9))), STRUCTURED),  # one past it
        (_array(AnyValue(string_value="a"), _array(AnyValue(string_value="b"))), STRUCTURED),
        (_array(AnyValue(kvlist_value=KeyValueList())), STRUCTURED),
        (_array(AnyValue(bytes_value=b"x")), STRUCTURED),
        (_array(AnyValue(string_value_strindex=1)), STRUCTURED),
    ],
)
def test_an_array_of_a_few_plain_items_is_a_tuple_of_them_as_decoded_gives_it(value: AnyValue, expected) -> None:
    [(_, [scanned_value], *_)] = scanned(one_span(KeyValue(key="array", value=value)))
    assert scanned_value == expected and type(scanned_value) is type(expected)
    if expected is not STRUCTURED:
        assert decoded(value) == expected


@needs_native
def test_spans_come_in_request_order_across_resources_and_scopes_and_without_attributes() -> None:
    request = ExportTraceServiceRequest()
    for resource in range(2):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.add(key="service.name").value.string_value = f"svc{resource}"
        for scope in range(2):
            spans = resource_spans.scope_spans.add().spans
            spans.add(name="bare")
            spans.add().attributes.add(key=f"k{resource}{scope}").value.int_value = 10 * resource + scope
    assert [entry[:2] for entry in scanned(request)] == [
        ("", []),
        ("k00", [0]),
        ("", []),
        ("k01", [1]),
        ("", []),
        ("k10", [10]),
        ("", []),
        ("k11", [11]),
    ]
    assert scanned(b"") == []


@needs_native
def test_the_ids_times_status_and_event_count_are_the_spans() -> None:
    span = Span(
        trace_id=b"\x01" * 16,
        span_id=b"\x02" * 8,
        parent_span_id=b"\x03" * 8,
        start_time_unix_nano=2**64 - 2,
        end_time_unix_nano=1_700_000_000_123_456_789,
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
    )
    span.events.add(name="a")
    span.events.add(name="b")
    bare = Span()
    assert [entry[2:] for entry in scanned(make_request([span, bare]))] == [
        (b"\x01" * 16, b"\x02" * 8, b"\x03" * 8, 2**64 - 2, 1_700_000_000_123_456_789, 2, 2),
        (b"", b"", b"", 0, 0, 0, 0),
    ]


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        out.append(number & 0x7F | (0x80 if number > 0x7F else 0))
        number >>= 7
        if not number:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    tag = _varint(number << 3 | wire_type)
    return tag + (_varint(len(payload)) + payload if wire_type == 2 else payload)


def _request_with_span(span: bytes) -> bytes:
    return _field(1, 2, _field(2, 2, _field(2, 2, span)))


def _pair(*fields: bytes) -> bytes:
    return _field(9, 2, b"".join(fields))


@needs_native
@pytest.mark.parametrize(
    "span, why",
    [
        (_pair(_field(1, 2, b"a"), _field(1, 2, b"b")), "a key given twice"),
        (_pair(_field(1, 2, b"a"), _field(2, 2, b""), _field(2, 2, b"")), "a value given twice (protobuf merges)"),
        (_pair(_field(1, 2, b"a"), _field(2, 2, _field(1, 2, b"x") + _field(3, 0, b"\x01"))), "two oneof members"),
        (_pair(_field(1, 0, b"\x01")), "a key that is not a string"),
        (_pair(_field(1, 2, b"a"), _field(2, 2, _field(3, 2, b"\x01"))), "an int with a string's wire type"),
        (_field(9, 0, b"\x01"), "attributes with a varint's wire type"),
        (_pair(_field(1, 2, b"\xff")), "a key that is not UTF-8"),
        (_pair(_field(1, 2, b"a"), _field(2, 2, _field(1, 2, b"\xc3"))), "a value that is not UTF-8"),
        (b"\x4a\x05\x0a", "a length past the end"),
        (b"\x4b", "a group"),
        (_field(1, 2, b"\x01" * 16) * 2, "a trace id given twice"),
        (_field(4, 0, b"\x01"), "a parent id with a varint's wire type"),
        (_field(7, 0, b"\x01"), "a start time with a varint's wire type"),
        (_field(8, 1, b"\x00" * 8) * 2, "an end time given twice"),
        (_field(15, 2, b"") * 2, "a status given twice (protobuf merges)"),
        (_field(15, 2, _field(3, 0, b"\x02") * 2), "a status code given twice"),
        (_field(15, 2, _field(3, 2, b"")), "a status code with a string's wire type"),
        (_field(15, 2, _field(3, 0, b"\xff" * 9 + b"\x01")), "a negative status code"),
        (_field(11, 0, b"\x01"), "events with a varint's wire type"),
        (
            _pair(_field(1, 2, b"a"), _field(2, 2, _field(1, 2, b"x") + _field(8, 0, b"\x05"))),
            "a string, then an index",
        ),
        (_pair(_field(1, 2, b"a"), _field(2, 2, _field(8, 2, b"\x05"))), "an index with a string's wire type"),
        (
            _pair(
                _field(1, 2, b"a"), _field(2, 2, _field(5, 2, _field(1, 2, _field(1, 2, b"x") + _field(2, 0, b"\x01"))))
            ),
            "an array item of two oneof members",
        ),
        (
            _pair(_field(1, 2, b"a"), _field(2, 2, _field(5, 2, _field(1, 0, b"\x01")))),
            "array items with a varint's wire type",
        ),
        (_pair(_field(1, 2, b"a"), _field(2, 2, _field(5, 2, b"") * 2)), "an array given twice (protobuf merges)"),
    ],
)
def test_what_it_does_not_expect_is_left_to_protobuf(span: bytes, why: str) -> None:
    assert scanned(_request_with_span(span)) is None, why


@needs_native
def test_fields_the_schema_does_not_know_are_passed_over() -> None:
    unknown = _field(20, 0, b"\x07") + _field(21, 5, b"\x00" * 4) + _field(22, 1, b"\x00" * 8) + _field(23, 2, b"x")
    value = _field(2, 2, unknown + _field(1, 2, b"v"))
    others = _field(5, 2, b"name") + _field(6, 0, b"\x03") + _field(16, 5, b"\x00\x03\x00\x00") + _field(3, 2, b"ts")
    span = unknown + _pair(unknown, _field(1, 2, b"k"), value) + others
    wire = _request_with_span(span)
    assert [entry[:2] for entry in scanned(wire)] == [("k", ["v"])]
    [attribute] = ExportTraceServiceRequest.FromString(wire).resource_spans[0].scope_spans[0].spans[0].attributes
    assert (attribute.key, attribute.value.string_value) == ("k", "v")


def test_the_receiver_hands_normalize_the_bytes_only_while_they_describe_the_request() -> None:
    class Keep:
        def __init__(self) -> None:
            self.batches: list[Batch] = []

        def retry_after(self, span_count: int) -> None:
            return None

        def consume(self, batch: Batch) -> None:
            self.batches.append(batch)

    receiver = OtlpReceiver("otlp", OtlpReceiverConfig(), Context(metrics=Registry()))
    consumer = Keep()
    receiver._consumer = consumer
    good = make_request([make_span("a"), make_span("b")])
    wire = good.SerializeToString()
    receiver.accept(good, "grpc", wire)
    bad = make_request([make_span("a"), Span(trace_id=b"\x00" * 16, span_id=b"\x01" * 8)])
    receiver.accept(bad, "grpc", bad.SerializeToString())
    assert [(batch.span_count, batch.wire) for batch in consumer.batches] == [(2, wire), (1, None)]


# -- views: the same either way --------------------------------------------------------------------

_SLOTS = [slot for slot in SpanView.__slots__ if slot != "span"]


def both_ways(request: ExportTraceServiceRequest) -> tuple[list[dict], list[dict], dict, dict]:
    """The views and invalid-attribute counts read through protobuf and read from the bytes."""
    results = []
    for wire in (None, request.SerializeToString()):
        registry = Registry()
        invalid = registry.metric("agentopz_invalid_attributes_total")
        views = Normalizer(invalid).views(request, wire)
        results.append(
            (
                [{slot: getattr(view, slot) for slot in _SLOTS} for view in views],
                {labels: series.value for labels, series in invalid.items()},
            )
        )
    (protobuf_views, protobuf_invalid), (wire_views, wire_invalid) = results
    return protobuf_views, wire_views, protobuf_invalid, wire_invalid


@needs_native
@pytest.mark.parametrize("case", golden.cases("normalize"), ids=golden.name)
def test_golden_cases_give_the_same_views_from_the_bytes(case) -> None:
    protobuf_views, wire_views, protobuf_invalid, wire_invalid = both_ways(trace_request(golden.load(case)["request"]))
    assert wire_views == protobuf_views
    assert wire_invalid == protobuf_invalid


_TEXTS = ["", "chat", "LLM", "TOOL", "AGENT", "openai", "anthropic/claude-3", "12", "1e3", "nan", "-4", "user"]
_TEXTS += ["system", "gpt-4o", "error", '{"langgraph_node": "x"}', "stop", "0.25", "inf", "x" * 300]


def _random_value(rng: random.Random) -> AnyValue:
    kind = rng.randrange(9)
    if kind == 0:
        return AnyValue(string_value=rng.choice(_TEXTS))
    if kind == 1:
        return AnyValue(int_value=rng.choice([0, 1, -1, 7, 1200, 10**10, 10**10 + 1, 2**63 - 1, -(2**63)]))
    if kind == 2:
        return AnyValue(double_value=rng.choice([0.0, 0.5, 3.0, -2.0, math.inf, math.nan, 1e300]))
    if kind == 3:
        return AnyValue(bool_value=rng.random() < 0.5)
    if kind == 4:  # mostly a few strings (finish reasons); sometimes past the scan's limit, or nested
        items = [
            _random_value(rng) if rng.random() < 0.2 else AnyValue(string_value=rng.choice(_TEXTS))
            for _ in range(rng.choice([0, 1, 1, 2, 3, 8, 9]))
        ]
        return AnyValue(array_value=ArrayValue(values=items))
    if kind == 5:
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="a", value=AnyValue(int_value=1))]))
    if kind == 6:
        return AnyValue(bytes_value=b"\x01\x02")
    if kind == 7:
        return AnyValue()
    return AnyValue(string_value=rng.choice(_TEXTS))


def _random_span(rng: random.Random, keys: list[str]) -> Span:
    span = Span(
        trace_id=rng.randbytes(16),
        span_id=rng.randbytes(8),
        name=rng.choice(["chat gpt-4o", "invoke_agent triage", "execute_tool lookup", "", "step"]),
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_000_000_000 + rng.randrange(-5, 10**9),
        status=Status(code=rng.choice([Status.STATUS_CODE_UNSET, Status.STATUS_CODE_ERROR])),
    )
    for _ in range(rng.randrange(12)):
        key = rng.choice(keys) if rng.random() < 0.9 else f"custom.{rng.randrange(5)}"
        span.attributes.add(key=key).value.CopyFrom(_random_value(rng))
    if rng.random() < 0.1:
        event = span.events.add(name=rng.choice([FLAG_EVALUATION_EVENT, "gen_ai.choice", "exception"]))
        event.attributes.add(key="feature_flag.key").value.string_value = "prompt"
        event.attributes.add(key="feature_flag.result.variant").value.string_value = "v2"
        event.attributes.add(key="message").value.CopyFrom(_random_value(rng))
    return span


@needs_native
@pytest.mark.parametrize("seed", range(8))
def test_randomized_spans_of_every_dialect_give_the_same_views_from_the_bytes(seed: int) -> None:
    """Keys of the dialect table with values of every type (right, wrong, empty, out of range), repeated
    keys, unknown keys, events and error statuses: 250 spans per seed, every slot of every view equal."""
    rng = random.Random(seed)
    keys = sorted(ATTRIBUTE_TABLE)
    request = make_request([_random_span(rng, keys) for _ in range(250)])
    assert len(scanned(request)) == 250  # read from the bytes, not left to protobuf
    protobuf_views, wire_views, protobuf_invalid, wire_invalid = both_ways(request)
    assert len(wire_views) == 250
    assert differing(protobuf_views, wire_views) == []
    assert wire_invalid == protobuf_invalid
    assert sum(wire_invalid.values()) > 0  # the randomized values do reach the invalid counts


def differing(protobuf_views: list[dict], wire_views: list[dict]) -> list[tuple]:
    """(span index, slot, protobuf's value, the bytes' value) wherever the two differ."""
    return [
        (index, slot, one[slot], other[slot])
        for index, (one, other) in enumerate(zip(protobuf_views, wire_views, strict=True))
        for slot in _SLOTS
        if not _same(one[slot], other[slot])
    ]


def _same(one, other) -> bool:
    """Equal, NaN included (a NaN never reaches a view, but the comparison should not hide one)."""
    if isinstance(one, float) and isinstance(other, float):
        return struct.pack("d", one) == struct.pack("d", other)
    return one == other and type(one) is type(other)


@needs_native
def test_a_request_the_scan_leaves_alone_is_read_through_protobuf() -> None:
    """A key given twice in one KeyValue (protobuf keeps the last): scan() declines, and the view is
    protobuf's."""
    model = _field(2, 2, _field(1, 2, b"gpt-4o"))
    span = _pair(_field(1, 2, b"other"), _field(1, 2, b"gen_ai.request.model"), model)
    span += _pair(_field(1, 2, b"gen_ai.usage.input_tokens"), _field(2, 2, _field(3, 0, b"\x05")))
    wire = _request_with_span(span)
    request = ExportTraceServiceRequest.FromString(wire)
    assert scanned(wire) is None
    [view] = Normalizer(Registry().metric("agentopz_invalid_attributes_total")).views(request, wire)
    assert (view.kind, view.model, view.input_tokens) == ("llm", "gpt-4o", 5)


def test_bytes_of_another_request_are_not_read() -> None:
    """Bytes that are not the request's (another span first): every view is read through protobuf."""
    rng = random.Random(5)
    spans = [_random_span(rng, sorted(ATTRIBUTE_TABLE)) for _ in range(3)]
    request, other = make_request(spans[:2]), make_request(spans[::-1])
    normalizer = Normalizer(Registry().metric("agentopz_invalid_attributes_total"))
    protobuf_views = [{slot: getattr(view, slot) for slot in _SLOTS} for view in normalizer.views(request)]
    mismatched = normalizer.views(request, other.SerializeToString())
    assert differing(protobuf_views, [{slot: getattr(view, slot) for slot in _SLOTS} for view in mismatched]) == []


@needs_native
def test_randomly_damaged_requests_never_crash_the_scan_and_never_change_a_view() -> None:
    """Bytes changed at random and truncations: where protobuf still reads the request, the views read
    from the bytes equal protobuf's (or the scan declined); where protobuf rejects it (the receiver
    answers 400 before normalize), the scan still returns without a crash."""
    rng = random.Random(3)
    wire = make_request([_random_span(rng, sorted(ATTRIBUTE_TABLE)) for _ in range(30)]).SerializeToString()
    outcomes = {"protobuf rejects": 0, "scan declines": 0, "same views": 0}
    for _ in range(600):
        damaged = bytearray(wire)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if rng.random() < 0.3:
            damaged = damaged[: rng.randrange(len(damaged) // 2, len(damaged) + 1)]
        result = scanned(bytes(damaged))
        try:
            request = ExportTraceServiceRequest.FromString(bytes(damaged))
        except DecodeError:
            outcomes["protobuf rejects"] += 1
            continue
        if result is None:
            outcomes["scan declines"] += 1
            continue
        protobuf_views, wire_views, protobuf_invalid, wire_invalid = both_ways(request)
        assert differing(protobuf_views, wire_views) == []
        assert wire_invalid == protobuf_invalid
        outcomes["same views"] += 1
    assert outcomes == {"protobuf rejects": 511, "scan declines": 0, "same views": 89}  # the seed fixes the damage


def test_the_scan_is_not_used_with_an_any_value_member_it_does_not_know(monkeypatch) -> None:
    """An opentelemetry-proto whose AnyValue has a member more than the C knows: read through protobuf."""
    if normalize.scan is None:
        pytest.skip("the native module is not built (pure Python)")
    from agentopz_otel.processors import normalize_wire

    assert normalize._native_scan() is normalize_wire.scan
    monkeypatch.setattr(normalize_wire, "ANY_VALUE_FIELDS", tuple(range(1, 8)))
    assert normalize._native_scan() is None


def test_wherever_the_module_is_built_normalize_uses_it() -> None:
    """So the tests above never skip for a scan turned off by mistake (under CI the module must be built:
    tests/unit/test_compiled.py)."""
    if "agentopz_otel.processors.normalize_wire" in compiled_modules():
        assert normalize.scan is not None


@pytest.mark.parametrize(
    "value, converted",
    [
        (AnyValue(string_value_strindex=5), (INVALID, None, INVALID, INVALID, INVALID, INVALID, INVALID, SKIP)),
        (AnyValue(int_value=5), (INVALID, 5, 5, 5, 5.0, 5.0, INVALID, SKIP)),
        (AnyValue(bool_value=True), (INVALID, None, INVALID, INVALID, INVALID, INVALID, INVALID, SKIP)),
        (AnyValue(string_value="7"), ("7", 7.0, 7, 7, 7.0, 7.0, "7", "x")),
        (AnyValue(), (SKIP, None, INVALID, INVALID, INVALID, INVALID, INVALID, SKIP)),
    ],
)
def test_a_string_table_index_is_not_a_number(value: AnyValue, converted: tuple) -> None:
    """(as_text, as_number, as_token_count, as_integer, as_usd, as_score, as_first_text, one_of) of a value
    as both ways decode it: an index into a string table is no text and no number."""
    converters = (as_text, as_number, as_token_count, as_integer, as_usd, as_score, as_first_text, one_of({"7": "x"}))
    assert tuple(convert(decoded(value)) for convert in converters) == converted


@pytest.mark.parametrize(
    "value, first_text",
    [
        (_array(AnyValue(string_value="stop"), AnyValue(string_value="length")), "stop"),
        (_array(AnyValue(), AnyValue(int_value=1), AnyValue(string_value=""), AnyValue(string_value="stop")), "stop"),
        (_array(_array(AnyValue(string_value="inner")), AnyValue(string_value="outer")), "outer"),
        (_array(AnyValue(int_value=1)), SKIP),
        (_array(), SKIP),
        (AnyValue(kvlist_value=KeyValueList()), INVALID),
    ],
)
def test_the_first_finish_reason_is_the_first_string_of_an_array(value: AnyValue, first_text) -> None:
    assert as_first_text(decoded(value)) == first_text  # SKIP and INVALID compare by identity
