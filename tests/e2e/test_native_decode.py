"""The native decode prototype (bench/native_decode.py): its views equal the service's path, span by span,
on the edge cases of the wire format and the dialect table; what it does not cover falls back to Python."""

from __future__ import annotations

import importlib.util
import random
import shutil
import sys

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from support import ROOT

from agentopz_otel.fleet import chat_attributes, otlp_attributes, tool_attributes, usage_attributes

BENCH = ROOT / "bench"
pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("native_decode", BENCH / "native_decode.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module, module.Decoder(module.compile_decoder(tmp_path_factory.mktemp("native")))


def request_of(*spans: dict, service: str | None = "checkout") -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    if service is not None:
        resource_spans.resource.attributes.extend(otlp_attributes({"service.name": service}))
    scope = resource_spans.scope_spans.add()
    for index, fields in enumerate(spans):
        span = scope.spans.add()
        span.trace_id = fields.get("trace_id", b"\x07" * 16)
        span.span_id = fields.get("span_id", (index + 1).to_bytes(8, "big"))
        span.name = fields.get("name", "chat gpt-4o")
        span.start_time_unix_nano = 1_000
        span.end_time_unix_nano = fields.get("end", 3_000_001_000)
        span.attributes.extend(otlp_attributes(fields.get("attributes", {})))
        if fields.get("error"):
            span.status.code = Status.STATUS_CODE_ERROR
    return request.SerializeToString()


CHAT = {**chat_attributes("gpt-4o", "openai"), **usage_attributes(1200, 80, 1024)}


def test_bench_traffic_decodes_to_the_same_views(native):
    module, decoder = native
    payloads = module.build_payloads(2, 1500, 7, b"\x01" * 8)  # more spans than the first output buffer holds
    decoded, fallback, mismatches = module.compare(payloads, decoder)
    assert mismatches == []
    assert decoded + fallback == 3000
    assert 0 < fallback < 300  # the failed calls, with their events and error status


@pytest.mark.parametrize(
    ("span", "natively"),
    [
        ({"attributes": CHAT}, True),
        # An empty response model says nothing: the request model is the model.
        ({"attributes": {**CHAT, "gen_ai.response.model": ""}}, True),
        ({"attributes": {**CHAT, "gen_ai.response.model": "gpt-4o-2024-08-06"}}, True),
        ({"attributes": {**CHAT, "gen_ai.response.finish_reasons": ["", "length"]}}, True),
        ({"attributes": {**CHAT, "gen_ai.provider.name": "openai.chat", "gen_ai.system": "x"}}, True),
        ({"attributes": {**CHAT, "gen_ai.request.model": "openai/gpt-4o", "gen_ai.provider.name": ""}}, True),
        ({"attributes": {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.output_tokens": 0}}, True),  # inferred
        ({"attributes": {"gen_ai.operation.name": "invoke_agent"}, "name": "invoke_agent planner"}, True),
        ({"attributes": tool_attributes("lookup")}, True),
        ({"attributes": {"gen_ai.operation.name": "execute_tool"}, "name": "execute_tool "}, True),
        ({"attributes": {"openinference.span.kind": "AGENT"}, "name": "support"}, True),
        ({"attributes": {"gen_ai.operation.name": "plan", "openinference.span.kind": "TOOL"}}, False),
        ({"attributes": {**CHAT, "gen_ai.usage.input_tokens": "1200"}}, False),  # a string count
        ({"attributes": {**CHAT, "gen_ai.usage.input_tokens": -1}}, False),
        ({"attributes": {**CHAT, "gen_ai.response.finish_reasons": True}}, False),
        ({"attributes": {**CHAT, "llm.token_count.total": 9, "traceloop.span.kind": "tool"}}, False),
        ({"attributes": {**CHAT, "error.type": "rate_limit"}, "error": True}, False),
        ({"attributes": CHAT, "error": True}, False),
        ({"attributes": {"openinference.span.kind": "EVALUATOR"}}, False),
        ({"attributes": CHAT, "end": 2**63 - 1}, True),
        ({"attributes": CHAT, "end": 2**64 - 1}, False),  # past the decoder's signed numbers
    ],
)
def test_one_span_decodes_natively_or_falls_back(native, span, natively):
    module, decoder = native
    decoded, fallback, mismatches = module.compare([(request_of(span), 1)], decoder)
    assert mismatches == []
    assert (decoded, fallback) == ((1, 0) if natively else (0, 1))


def test_invalid_ids_are_dropped_as_the_receiver_drops_them(native):
    module, decoder = native
    body = request_of({"span_id": b"\x00" * 8}, {"trace_id": b"\x01" * 15}, {"attributes": CHAT}, service=None)
    views = module.native_views(body, decoder, module.new_normalizer())
    assert [(view.service, view.model, view.input_tokens) for view in views] == [("unknown_service", "gpt-4o", 1200)]


def test_malformed_bytes_are_left_to_the_python_path(native):
    _, decoder = native
    body = request_of({"attributes": CHAT})
    assert decoder.decode(body[:-3]) is None
    assert decoder.decode(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01") is None


def test_a_wrong_conversion_is_caught_by_the_comparison(native):
    module, decoder = native
    position = next(i for i, (field, _) in enumerate(decoder.names) if field == "system_source")
    field, convert = decoder.names[position]
    decoder.names[position] = (field, lambda text: ("messages", text))
    try:
        body = request_of({"attributes": {**CHAT, "gen_ai.system_instructions": "Be brief."}})
        _, _, mismatches = module.compare([(body, 1)], decoder)
    finally:
        decoder.names[position] = (field, convert)
    assert mismatches == [
        "input: None != ('messages', 'Be brief.')",  # messages carry the user's request too
        "system_source: ('parts', 'Be brief.') != ('messages', 'Be brief.')",
    ]


def test_mutated_requests_never_crash_and_never_disagree(native):
    """Random byte changes and truncations: the decoder rejects or reads them; where protobuf reads them
    too, the views agree. (Bytes protobuf rejects and the decoder reads are a gap the prototype leaves:
    see README, The way to 0.8x rotel.)"""
    module, decoder = native
    body, _ = module.build_payloads(1, 40, 7, b"\x01" * 8)[0]
    rng = random.Random(1)
    outcomes = {"rejected": 0, "agreed": 0}
    for _ in range(400):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        mutated = mutated[: rng.randrange(len(mutated) // 2, len(mutated) + 1)] if rng.random() < 0.3 else mutated
        if decoder.decode(bytes(mutated)) is None:
            outcomes["rejected"] += 1
            continue
        try:
            ExportTraceServiceRequest.FromString(bytes(mutated))
        except DecodeError:
            continue
        _, _, mismatches = module.compare([(bytes(mutated), 0)], decoder)
        assert mismatches == []
        outcomes["agreed"] += 1
    assert outcomes == {"rejected": 193, "agreed": 55}  # the seed fixes the mutations
