"""Forwarding enriched spans to a real OTLP backend: content, outages, queue bound, shutdown flush."""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import time
from collections import Counter

import grpc
import pytest
from genai_prices import Usage, calc_price
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode
from support.otlp_proto import make_request, make_span
from support.otlp_sinks import SINKS, GrpcSink, HttpSink, attribute_value, config_body
from support.processes import free_port
from support.sdk_agent import chat_attributes, exporter
from support.service import post_http


def price(model: str, input_tokens: int = 1200, output_tokens: int = 300, cache_read: int = 200) -> float:
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read)
    return float(calc_price(usage, model_ref=model, provider_id="openai").total_price)


def sha_version(text: str) -> str:
    return "sha-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def assert_added(forwarded: Span, original: Span, expected: dict) -> None:
    """The forwarded span is the original plus exactly the `expected` attributes, appended."""
    count = len(original.attributes)
    added = forwarded.attributes[count:]
    keys = [kv.key for kv in added]
    assert sorted(keys) == sorted(expected), f"{original.name}: added {keys}, expected {sorted(expected)}"
    for kv in added:
        value = attribute_value(kv)
        wanted = expected[kv.key]
        if isinstance(wanted, float):
            assert kv.value.WhichOneof("value") == "double_value"
            assert math.isclose(value, wanted, rel_tol=1e-9), f"{original.name}: {kv.key}={value}, expected {wanted}"
        else:
            assert value == wanted, f"{original.name}: {kv.key}={value!r}, expected {wanted!r}"
    stripped = Span()
    stripped.CopyFrom(forwarded)
    del stripped.attributes[count:]
    assert stripped == original, f"{original.name}: the forwarded span differs from the original beyond the additions"


# -- (a) every span arrives once, enriched, otherwise unchanged ----------------------------------

SYSTEM = "You are a travel agent. Answer in one sentence."
SYSTEM_PARTS = json.dumps([{"type": "text", "content": SYSTEM}])


def emit_mixed_trace(tracer) -> None:
    agent_attributes = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "planner",
        "gen_ai.agent.version": "3",
    }
    with tracer.start_as_current_span("invoke_agent planner", attributes=agent_attributes):
        llm = chat_attributes(
            model="gpt-4o",
            **{
                "gen_ai.system_instructions": SYSTEM_PARTS,
                "gen_ai.response.finish_reasons": ("stop",),
                "app.user_tier": "gold",
                "app.retry": 2,
                "app.temperature": 0.25,
                "app.cached": True,
                "app.tags": ("a", "b"),
                "app.scores": (1.5, 2.5),
            },
        )
        with tracer.start_as_current_span("chat gpt-4o", attributes=llm) as span:
            span.add_event("gen_ai.choice", {"index": 0, "finish_reason": "stop"})
        unknown = chat_attributes(model="acme-llm-9000", provider="acme", cache_read=None)
        with tracer.start_as_current_span("chat acme-llm-9000", attributes=unknown) as span:
            span.set_status(Status(StatusCode.OK))
        versioned = chat_attributes(model="gpt-4o-mini", **{"agentopz.prompt.version": "v7"})
        with tracer.start_as_current_span("chat gpt-4o-mini", attributes=versioned):
            pass
        tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search_flights"}
        with tracer.start_as_current_span("execute_tool search_flights", attributes=tool):
            pass
        with tracer.start_as_current_span("GET /flights", attributes={"http.request.method": "GET"}):
            pass


def expected_additions() -> dict[str, dict]:
    gpt4o = price("gpt-4o")
    assert math.isclose(gpt4o, 0.00575, rel_tol=1e-9)
    return {
        "invoke_agent planner": {"agentopz.prompt.version": "3"},
        "chat gpt-4o": {
            "agentopz.cost.usd": gpt4o,
            "agentopz.cost.source": "catalog",
            "agentopz.prompt.version": sha_version(SYSTEM),
        },
        "chat acme-llm-9000": {"agentopz.cost.source": "unknown", "agentopz.prompt.version": "unknown"},
        "chat gpt-4o-mini": {"agentopz.cost.usd": price("gpt-4o-mini"), "agentopz.cost.source": "catalog"},
        "execute_tool search_flights": {},
        "GET /flights": {},
    }


@pytest.mark.parametrize(
    ("protocol", "compression"),
    [("grpc", "none"), ("grpc", "gzip"), ("http/protobuf", "none"), ("http/protobuf", "gzip")],
)
def test_forwarded_spans_arrive_once_enriched_and_otherwise_unchanged(start_service, protocol, compression):
    with SINKS[protocol]() as downstream, GrpcSink() as direct:
        service = start_service(
            config_body(
                {
                    "endpoint": downstream.endpoint,
                    "protocol": protocol,
                    "compression": compression,
                    "headers": {"X-Tenant": "acme"},
                    "batch": {"timeout_seconds": 0.05},
                }
            )
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "travel", "deployment.environment": "t"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter("grpc", service.grpc_endpoint)))
        provider.add_span_processor(SimpleSpanProcessor(exporter("grpc", f"localhost:{direct.port}")))
        emit_mixed_trace(provider.get_tracer("travel-agent", "1.2.3"))
        provider.shutdown()

        expected = expected_additions()
        assert direct.wait_for_spans(len(expected)) == len(expected)
        assert downstream.wait_for_spans(len(expected), timeout=5) == len(expected)
        assert service.wait_for("agentopz_exporter_sent_spans_total", len(expected), timeout=5) == len(expected)
        time.sleep(0.3)  # anything duplicated would arrive by now

        originals = {span.span_id: (resource, scope, span) for resource, scope, span in direct.spans()}
        assert sorted(span.name for _, _, span in originals.values()) == sorted(expected)
        assert downstream.span_ids() == Counter(dict.fromkeys(originals, 1))
        for resource, scope, forwarded in downstream.spans():
            original_resource, original_scope, original = originals[forwarded.span_id]
            assert resource == original_resource
            assert scope == original_scope
            assert_added(forwarded, original, expected[original.name])

        for metadata in downstream.metadata:
            assert metadata["x-tenant"] == "acme"
            if protocol == "http/protobuf":
                assert metadata.get("content-encoding") == ("gzip" if compression == "gzip" else None)
        assert service.value("agentopz_exporter_sent_spans_total", exporter="otlp/downstream") == len(expected)
        assert service.value("agentopz_exporter_failed_spans_total", exporter="otlp/downstream") == 0
        assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 0
        assert service.value("agentopz_llm_unpriced_calls_total", provider="acme", model="acme-llm-9000") == 1
        cost = service.value("agentopz_llm_cost_usd_total", model="gpt-4o")
        assert math.isclose(cost, expected["chat gpt-4o"]["agentopz.cost.usd"], rel_tol=1e-9)


def test_chained_services_do_not_enrich_twice(start_service):
    """agent -> service A -> service B -> backend: B prices the calls again but adds no second attribute."""
    with HttpSink() as backend, GrpcSink() as direct:
        second = start_service(
            config_body({"endpoint": backend.endpoint, "protocol": "http/protobuf", "batch": {"timeout_seconds": 0.05}})
        )
        first = start_service(
            config_body({"endpoint": f"http://127.0.0.1:{second.grpc_port}", "batch": {"timeout_seconds": 0.05}})
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "travel"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter("http/protobuf", first.http_url)))
        provider.add_span_processor(SimpleSpanProcessor(exporter("grpc", f"localhost:{direct.port}")))
        emit_mixed_trace(provider.get_tracer("travel-agent"))
        provider.shutdown()

        expected = expected_additions()
        assert backend.wait_for_spans(len(expected), timeout=5) == len(expected)
        time.sleep(0.3)
        originals = {span.span_id: span for _, _, span in direct.spans()}
        assert backend.span_ids() == Counter(dict.fromkeys(originals, 1))
        for _, _, forwarded in backend.spans():
            assert_added(forwarded, originals[forwarded.span_id], expected[forwarded.name])
        assert second.value("agentopz_receiver_spans_total", transport="grpc") == len(expected)
        for service in (first, second):
            assert service.value("agentopz_llm_calls_total") == 3
            cost = service.value("agentopz_llm_cost_usd_total", model="gpt-4o")
            assert math.isclose(cost, expected["chat gpt-4o"]["agentopz.cost.usd"], rel_tol=1e-9)
            assert service.value("agentopz_llm_unpriced_calls_total", model="acme-llm-9000") == 1


# -- (b) the backend is down for a while, then comes back ----------------------------------------

OUTAGE_SPANS = 300


def send_llm_spans(endpoint: str, count: int, transport: str = "grpc", batch_size: int = 50) -> None:
    """`count` chat spans through the SDK's batching processor, in requests of `batch_size`."""
    provider = TracerProvider(resource=Resource.create({"service.name": "bulk"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter(transport, endpoint),
            max_queue_size=count + 1,
            max_export_batch_size=batch_size,
            schedule_delay_millis=50,
        )
    )
    tracer = provider.get_tracer("bulk")
    for index in range(count):
        with tracer.start_as_current_span("chat gpt-4o", attributes=chat_attributes(**{"app.index": index})):
            pass
    assert provider.force_flush(10_000)
    provider.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_backend_outage_then_recovery_delivers_every_span_once(start_service, protocol):
    downstream = SINKS[protocol]()  # its port is reserved but nothing listens yet
    service = start_service(
        config_body(
            {
                "endpoint": downstream.endpoint,
                "protocol": protocol,
                "batch": {"timeout_seconds": 0.05},
                "retry": {"initial_interval_seconds": 0.2, "max_interval_seconds": 1},
            }
        )
    )
    send_llm_spans(service.grpc_endpoint, OUTAGE_SPANS)
    assert service.wait_for("agentopz_receiver_spans_total", OUTAGE_SPANS) == OUTAGE_SPANS
    time.sleep(2.5)
    assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == OUTAGE_SPANS
    assert service.value("agentopz_exporter_sent_spans_total", exporter="otlp/downstream") == 0
    assert service.value("agentopz_exporter_failed_spans_total", exporter="otlp/downstream") == 0

    with downstream:
        assert downstream.wait_for_spans(OUTAGE_SPANS, timeout=20) == OUTAGE_SPANS
        sent = service.wait_for("agentopz_exporter_sent_spans_total", OUTAGE_SPANS, exporter="otlp/downstream")
        time.sleep(0.5)
        ids = downstream.span_ids()
    assert len(ids) == OUTAGE_SPANS
    assert set(ids.values()) == {1}
    assert sent == OUTAGE_SPANS
    assert service.value("agentopz_exporter_sent_spans_total", exporter="otlp/downstream") == OUTAGE_SPANS
    assert service.value("agentopz_exporter_failed_spans_total", exporter="otlp/downstream") == 0
    assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 0
    indexes = sorted(
        attribute_value(kv) for _, _, span in downstream.spans() for kv in span.attributes if kv.key == "app.index"
    )
    assert indexes == list(range(OUTAGE_SPANS))
    sources = Counter(
        attribute_value(kv)
        for _, _, span in downstream.spans()
        for kv in span.attributes
        if kv.key == "agentopz.cost.source"
    )
    assert sources == {"catalog": OUTAGE_SPANS}


class FlakyGrpcSink(GrpcSink):
    """Fails its first call with UNAVAILABLE whose grpc-status-details-bin is not a google.rpc.Status."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_calls = 0

    def export(self, request, context):
        if self.failed_calls == 0:
            self.failed_calls += 1
            context.set_trailing_metadata((("grpc-status-details-bin", b"\x0a\xff\xff"),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded, try again")
        return super().export(request, context)


def test_malformed_grpc_error_details_from_the_backend_do_not_lose_spans(start_service):
    with FlakyGrpcSink() as downstream:
        service = start_service(
            config_body(
                {
                    "endpoint": downstream.endpoint,
                    "senders": 1,
                    "batch": {"timeout_seconds": 0.05},
                    "retry": {"initial_interval_seconds": 0.2, "max_interval_seconds": 0.5},
                }
            )
        )
        send_llm_spans(service.grpc_endpoint, 10, batch_size=10)
        assert service.wait_for("agentopz_receiver_spans_total", 10) == 10
        assert downstream.wait_for_spans(10, timeout=4) == 10
        assert downstream.failed_calls == 1
        assert service.wait_for("agentopz_exporter_sent_spans_total", 10, timeout=2) == 10
        assert service.value("agentopz_exporter_failed_spans_total", exporter="otlp/downstream") == 0
        # The only sender must still be alive: later spans are delivered too.
        send_llm_spans(service.grpc_endpoint, 5, batch_size=5)
        assert downstream.wait_for_spans(15, timeout=4) == 15


# -- (c) the queue bound pushes back on senders --------------------------------------------------

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def llm_request(count: int) -> ExportTraceServiceRequest:
    return make_request([make_span("chat gpt-4o", chat_attributes()) for _ in range(count)], service="pushy")


def export_grpc(channel: grpc.Channel, request: ExportTraceServiceRequest):
    """(status code, RetryInfo delay in seconds or None) of one gRPC Export call."""
    call = channel.unary_unary(
        EXPORT,
        request_serializer=ExportTraceServiceRequest.SerializeToString,
        response_deserializer=ExportTraceServiceResponse.FromString,
    )
    try:
        call(request, timeout=10)
    except grpc.RpcError as error:
        delay = None
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                details = status_pb2.Status.FromString(value)
                assert details.code == code_pb2.UNAVAILABLE
                info = error_details_pb2.RetryInfo()
                assert details.details[0].Unpack(info)
                delay = info.retry_delay.seconds
        return error.code(), delay
    return grpc.StatusCode.OK, None


def test_full_queue_rejects_with_503_and_unavailable_then_delivers_what_it_took(start_service):
    downstream = HttpSink()
    service = start_service(
        config_body(
            {
                "endpoint": downstream.endpoint,
                "protocol": "http/protobuf",
                "batch": {"timeout_seconds": 0.05},
                "queue": {"max_spans": 50, "when_full": "reject"},
                "retry": {"initial_interval_seconds": 0.2, "max_interval_seconds": 0.5},
            }
        )
    )
    accepted = [llm_request(40), llm_request(10)]
    code, _, body = post_http(service, accepted[0])
    assert code == 200
    assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()

    code, headers, body = post_http(service, llm_request(11))
    assert code == 503
    assert headers["Retry-After"] == "5"
    assert status_pb2.Status.FromString(body).code == code_pb2.UNAVAILABLE

    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        assert export_grpc(channel, llm_request(11)) == (grpc.StatusCode.UNAVAILABLE, 5)
        assert export_grpc(channel, accepted[1]) == (grpc.StatusCode.OK, None)  # exactly at the bound
        assert export_grpc(channel, llm_request(1)) == (grpc.StatusCode.UNAVAILABLE, 5)
    code, headers, _ = post_http(service, llm_request(1))
    assert (code, headers["Retry-After"]) == (503, "5")

    assert service.value("agentopz_receiver_spans_total", transport="http") == 52
    assert service.value("agentopz_receiver_spans_total", transport="grpc") == 22
    assert service.value("agentopz_receiver_rejected_spans_total", reason="backpressure") == 24
    assert service.value("agentopz_receiver_rejected_requests_total", transport="http", reason="busy") == 2
    assert service.value("agentopz_receiver_rejected_requests_total", transport="grpc", reason="busy") == 2
    assert service.value("agentopz_llm_calls_total") == 50
    assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 50

    with downstream:
        assert downstream.wait_for_spans(50, timeout=15) == 50
        assert service.wait_for("agentopz_exporter_sent_spans_total", 50) == 50
        time.sleep(0.3)
        received = downstream.span_ids()
    sent_ids = {span.span_id for request in accepted for span in request.resource_spans[0].scope_spans[0].spans}
    assert received == Counter(dict.fromkeys(sent_ids, 1))
    assert service.value("agentopz_exporter_failed_spans_total", exporter="otlp/downstream") == 0
    assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 0

    # With room in the queue again, the same sender is accepted.
    assert post_http(service, llm_request(11))[0] == 200


def test_full_queue_in_drop_mode_accepts_and_counts_the_dropped_spans(start_service):
    service = start_service(
        config_body(
            {
                "endpoint": f"http://127.0.0.1:{free_port()}",
                "protocol": "http/protobuf",
                "batch": {"timeout_seconds": 0.05},
                "queue": {"max_spans": 50, "when_full": "drop"},
                "retry": {"initial_interval_seconds": 0.2, "max_interval_seconds": 0.5},
            }
        )
    )
    assert post_http(service, llm_request(45))[0] == 200
    code, _, body = post_http(service, llm_request(6))
    assert code == 200
    assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
    assert service.value("agentopz_exporter_failed_spans_total", exporter="otlp/downstream") == 6
    assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 45
    assert service.value("agentopz_receiver_rejected_spans_total") == 0
    assert service.value("agentopz_llm_calls_total") == 51  # metrics still count what the backend missed


# -- (d) shutdown flushes what is held -----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sigterm_flushes_held_spans_to_the_backend(start_service, protocol):
    with SINKS[protocol]() as downstream:
        service = start_service(
            config_body({"endpoint": downstream.endpoint, "protocol": protocol, "batch": {"timeout_seconds": 60}})
        )
        send_llm_spans(service.grpc_endpoint, 120, batch_size=40)
        assert service.wait_for("agentopz_receiver_spans_total", 120) == 120
        time.sleep(0.3)
        assert downstream.spans() == []
        assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 120

        started = time.monotonic()
        assert service.stop() == 0
        assert time.monotonic() - started < 5
        ids = downstream.span_ids()
    assert len(ids) == 120
    assert set(ids.values()) == {1}
    assert "not delivered" not in service.log()


def test_sigterm_with_backend_down_gives_up_within_the_shutdown_timeout(start_service):
    service = start_service(
        config_body(
            {
                "endpoint": f"http://127.0.0.1:{free_port()}",
                "protocol": "http/protobuf",
                "batch": {"timeout_seconds": 0.05},
                "retry": {"initial_interval_seconds": 0.2, "max_interval_seconds": 0.5},
            },
            shutdown_timeout=2,
        )
    )
    send_llm_spans(service.grpc_endpoint, 30, batch_size=30)
    assert service.wait_for("agentopz_receiver_spans_total", 30) == 30
    assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 30
    started = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - started < 2 + 1.5
    log = service.log()
    assert re.findall(r"\d+ spans? not delivered within the shutdown timeout", log) == [
        "30 spans not delivered within the shutdown timeout"
    ], log


def test_sigterm_with_a_hanging_backend_reports_the_spans_in_flight(start_service):
    listener = socket.socket()  # accepts connections (backlog) and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    with listener:
        service = start_service(
            config_body(
                {
                    "endpoint": f"http://127.0.0.1:{listener.getsockname()[1]}",
                    "protocol": "http/protobuf",
                    "timeout_seconds": 30,
                    "batch": {"timeout_seconds": 0.05},
                },
                shutdown_timeout=1,
            )
        )
        send_llm_spans(service.grpc_endpoint, 30, batch_size=30)
        assert service.wait_for("agentopz_receiver_spans_total", 30) == 30
        time.sleep(0.3)
        assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 30
        started = time.monotonic()
        assert service.stop() == 0
        assert time.monotonic() - started < 1 + 2.5
    assert re.search(r"\b30 spans?\b", service.log()), service.log()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_backend_down_then_back_then_sigterm_delivers_every_queued_span(start_service, protocol):
    """The backend returns just before SIGTERM: shutdown waits for the reconnecting channel and retries
    within its budget instead of failing once on it and dropping the queue."""
    downstream = SINKS[protocol]()
    service = start_service(
        config_body(
            {
                "endpoint": downstream.endpoint,
                "protocol": protocol,
                "batch": {"timeout_seconds": 0.05},
                "retry": {"initial_interval_seconds": 5, "max_interval_seconds": 5},
            },
            shutdown_timeout=10,
        )
    )
    send_llm_spans(service.grpc_endpoint, 3030, batch_size=500)
    assert service.wait_for("agentopz_receiver_spans_total", 3030) == 3030
    time.sleep(1)
    assert service.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 3030
    assert service.value("agentopz_exporter_sent_spans_total", exporter="otlp/downstream") == 0
    with downstream:
        started = time.monotonic()
        assert service.stop() == 0
        elapsed = time.monotonic() - started
        ids = downstream.span_ids()
    assert len(ids) == 3030
    assert set(ids.values()) == {1}
    assert elapsed < 10
    assert "not delivered" not in service.log()


HTTP_REFUSALS = {f"refused {status}": status for status in (400, 401, 403, 404, 413)}
GRPC_REFUSALS = {
    f"refused {code.name}": code
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # retryable only with RetryInfo, which this one lacks
    )
}
RETRYABLE = {"http/protobuf": 503, "grpc": grpc.StatusCode.UNAVAILABLE}


@pytest.mark.parametrize(("protocol", "refusals"), [("http/protobuf", HTTP_REFUSALS), ("grpc", GRPC_REFUSALS)])
def test_non_retryable_answers_are_tried_once_and_their_spans_counted_as_failed(start_service, protocol, refusals):
    with SINKS[protocol](refuse={**refusals, "retry me": RETRYABLE[protocol]}) as downstream:
        service = start_service(
            config_body(
                {
                    "endpoint": downstream.endpoint,
                    "protocol": protocol,
                    "senders": 1,
                    "batch": {"timeout_seconds": 0.05},
                    "retry": {"initial_interval_seconds": 0.1, "max_interval_seconds": 0.1},
                }
            )
        )
        for index, name in enumerate(refusals, start=1):
            assert post_http(service, make_request([make_span(name) for _ in range(3)]))[0] == 200
            failed = service.wait_for("agentopz_exporter_failed_spans_total", 3 * index, exporter="otlp/downstream")
            assert failed == 3 * index, name
        time.sleep(0.5)  # a retry would come within 0.1 s
        assert downstream.refused == Counter(dict.fromkeys(refusals, 1))
        assert service.value("agentopz_exporter_failed_spans_total", exporter="otlp/downstream") == 3 * len(refusals)
        assert service.value("agentopz_exporter_sent_spans_total", exporter="otlp/downstream") == 0
        assert service.log().count("not retryable") == 1  # the first rejection is logged, later ones counted

        # The same backend answering a retryable status is retried: the count above would see a retry.
        assert post_http(service, make_request([make_span("retry me")]))[0] == 200
        deadline = time.monotonic() + 5
        while downstream.refused["retry me"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert downstream.refused["retry me"] >= 3
