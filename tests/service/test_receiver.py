"""Receiver duties from the OTLP spec, and bad input: the right status, and the service keeps serving."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from support.otlp_proto import make_request, make_span
from support.sdk_agent import chat_attributes
from support.service import service_body

OTLP_TOKEN = "otlp-token-0123456789abcdef0123456789"

PROTOBUF = "application/x-protobuf"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

LIMITS = {"max_request_bytes": 1048576, "max_inflight_bytes": 4194304}
LIMITED = service_body(receiver=LIMITS)


def post(service, body: bytes, content_type: str = PROTOBUF, headers: dict | None = None):
    request = urllib.request.Request(
        f"{service.http_url}/v1/traces",
        data=body,
        headers={"Content-Type": content_type, **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def good_request(calls: int = 1):
    return make_request([make_span("chat gpt-4o", chat_attributes()) for _ in range(calls)])


def assert_still_serving(service, calls_before: float) -> None:
    status, _, _ = post(service, good_request().SerializeToString())
    assert status == 200
    assert service.value("agentopz_llm_calls_total") == calls_before + 1


@pytest.fixture
def limited(start_service):
    return start_service(LIMITED)


def test_protobuf_success_has_no_partial_success(limited):
    status, headers, body = post(limited, good_request(3).SerializeToString())
    assert status == 200
    assert headers["Content-Type"] == PROTOBUF
    assert not ExportTraceServiceResponse.FromString(body).HasField("partial_success")
    assert limited.value("agentopz_llm_tokens_total", token_type="input") == 3600


def test_json_with_hex_ids_is_accepted_and_answered_in_json(limited):
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "chat gpt-4o",
                                "kind": 3,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000001000000000",
                                "attributes": [
                                    {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                                    {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                                    {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
                                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}},
                                    {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 300}},
                                ],
                                "someFutureField": True,
                            }
                        ]
                    }
                ],
            }
        ]
    }
    status, headers, body = post(limited, json.dumps(document).encode(), "application/json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {}
    assert limited.value("agentopz_llm_tokens_total", service="js", token_type="input") == 1200
    assert limited.value("agentopz_llm_calls_total", service="js", model="gpt-4o") == 1


def test_gzip_body_is_accepted(limited):
    status, _, _ = post(
        limited, gzip.compress(good_request().SerializeToString()), headers={"Content-Encoding": "gzip"}
    )
    assert status == 200
    assert limited.value("agentopz_llm_calls_total") == 1


def test_truncated_protobuf_is_400_with_status(limited):
    body = good_request().SerializeToString()
    status, _, answer = post(limited, body[: len(body) // 2])
    assert status == 400
    assert status_pb2.Status.FromString(answer).code == 3  # INVALID_ARGUMENT
    assert_still_serving(limited, 0)


def test_wrong_content_type_is_415(limited):
    status, _, _ = post(limited, good_request().SerializeToString(), "text/plain")
    assert status == 415
    assert_still_serving(limited, 0)


def test_gzip_bomb_is_413_after_decompression(limited):
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 1024 * 1024
    status, _, answer = post(limited, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    assert "after gzip" in status_pb2.Status.FromString(answer).message
    assert_still_serving(limited, 0)


def test_oversized_body_is_413(limited):
    status, _, _ = post(limited, b"\x0a" * (2 * 1024 * 1024))
    assert status == 413
    assert_still_serving(limited, 0)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"resourceSpans": "nope"}', b"[" * 100000])
def test_invalid_json_is_400(limited, body):
    status, headers, answer = post(limited, body, "application/json")
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert json.loads(answer)["code"] == 3
    assert_still_serving(limited, 0)


def test_wrong_length_ids_reject_only_those_spans(limited):
    good = [make_span("chat gpt-4o", chat_attributes()) for _ in range(3)]
    short_trace = make_span("chat gpt-4o", chat_attributes(), trace_id=b"\x01" * 8)
    zero_span = make_span("chat gpt-4o", chat_attributes())
    zero_span.span_id = bytes(8)
    bad_parent = make_span("chat gpt-4o", chat_attributes(), parent=b"\x01\x02")
    status, _, body = post(
        limited, make_request([good[0], short_trace, good[1], zero_span, bad_parent, good[2]]).SerializeToString()
    )
    assert status == 200
    partial = ExportTraceServiceResponse.FromString(body).partial_success
    assert partial.rejected_spans == 3
    assert "trace_id must be 16 bytes" in partial.error_message
    assert limited.value("agentopz_llm_calls_total") == 3
    assert limited.value("agentopz_receiver_rejected_spans_total", reason="invalid_id") == 3
    assert limited.value("agentopz_receiver_spans_total", transport="http") == 6


@pytest.mark.parametrize("bad_tokens", [-1200, "lots"])
def test_unusable_token_counts_keep_the_span_and_are_counted(limited, bad_tokens):
    span = make_span("chat gpt-4o", chat_attributes(input_tokens=bad_tokens, cache_read=None))
    neighbour = make_span("chat gpt-4o", chat_attributes())
    status, _, body = post(limited, make_request([span, neighbour]).SerializeToString())
    assert status == 200
    assert not ExportTraceServiceResponse.FromString(body).HasField("partial_success")
    assert limited.value("agentopz_llm_calls_total") == 2
    assert limited.value("agentopz_llm_tokens_total", token_type="input") == 1200  # the neighbour only
    assert limited.value("agentopz_llm_tokens_total", token_type="output") == 600
    assert limited.value("agentopz_invalid_attributes_total", attribute="gen_ai.usage.input_tokens") == 1


def test_huge_attribute_values_do_not_become_labels(limited):
    huge_model = "m" * 200_000
    span = make_span("chat", chat_attributes(model=huge_model, **{"gen_ai.input.messages": "x" * 500_000}))
    status, _, _ = post(limited, make_request([span]).SerializeToString())
    assert status == 200
    assert limited.value("agentopz_llm_calls_total", model="other") == 1
    # Once for each series the call gave 'other': calls, input, output and cache-read tokens, duration, unpriced.
    assert limited.value("agentopz_label_overflow_total", label="model") == 6
    assert huge_model not in limited.metrics_text()
    assert_still_serving(limited, 1)


def test_grpc_truncated_protobuf_is_invalid_argument(limited):
    with grpc.insecure_channel(limited.grpc_endpoint) as channel:
        export = channel.unary_unary(EXPORT)
        body = good_request().SerializeToString()
        with pytest.raises(grpc.RpcError) as raised:
            export(body[:-7], timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        response = ExportTraceServiceResponse.FromString(export(body, timeout=5))
        assert not response.HasField("partial_success")
    assert limited.value("agentopz_llm_calls_total") == 1


def test_grpc_partial_success(limited):
    request = make_request(
        [make_span("chat", chat_attributes()), make_span("chat", chat_attributes(), trace_id=bytes(16))]
    )
    with grpc.insecure_channel(limited.grpc_endpoint) as channel:
        answer = channel.unary_unary(EXPORT)(request.SerializeToString(), timeout=5)
    assert ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans == 1


def test_grpc_oversized_message_is_resource_exhausted(limited):
    with grpc.insecure_channel(limited.grpc_endpoint) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(EXPORT)(b"\x0a" * (2 * 1024 * 1024), timeout=5)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(limited, 0)


AUTH = service_body(receiver={**LIMITS, "auth": {"token": OTLP_TOKEN}})


def test_bearer_token_on_both_transports(start_service):
    service = start_service(AUTH)
    body = good_request().SerializeToString()
    assert post(service, body)[0] == 401
    assert post(service, body, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert post(service, body, headers={"Authorization": f"Bearer {OTLP_TOKEN}"})[0] == 200
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        export = channel.unary_unary(EXPORT)
        with pytest.raises(grpc.RpcError) as raised:
            export(body, timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        export(body, timeout=5, metadata=(("authorization", f"Bearer {OTLP_TOKEN}"),))
    assert service.value("agentopz_llm_calls_total") == 2


BUSY = service_body(
    receiver={"retry_after_seconds": 7},
    exporters={
        "otlp/nowhere": {
            "endpoint": "127.0.0.1:9",
            "queue": {"max_spans": 5},
            "retry": {"initial_interval_seconds": 1},
        }
    },
)


def test_full_queue_answers_503_retry_after_and_unavailable_retry_info(start_service):
    service = start_service(BUSY)
    assert post(service, good_request(5).SerializeToString())[0] == 200
    status, headers, _ = post(service, good_request(1).SerializeToString())
    assert status == 503
    assert headers["Retry-After"] == "7"
    with grpc.insecure_channel(service.grpc_endpoint) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(EXPORT)(good_request(2).SerializeToString(), timeout=5)
    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    details = dict(error.trailing_metadata())["grpc-status-details-bin"]
    retry = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(details).details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 7
    assert service.value("agentopz_receiver_rejected_spans_total", reason="backpressure") == 3


def test_health_and_readiness(service):
    with urllib.request.urlopen(f"{service.admin_url}/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{service.admin_url}/readyz", timeout=5) as response:
        assert response.read() == b"ready\n"


def test_truncated_gzip_is_400(limited):
    body = gzip.compress(good_request().SerializeToString())
    status, _, answer = post(limited, body[:-12], headers={"Content-Encoding": "gzip"})
    assert status == 400
    assert "truncated" in status_pb2.Status.FromString(answer).message
    assert_still_serving(limited, 0)


def test_absurdly_deep_json_content_does_not_fail_the_request(limited):
    deep = make_span("chat gpt-4o", chat_attributes(**{"gen_ai.input.messages": "[" * 100_000}))
    status, _, _ = post(limited, make_request([deep, make_span("chat gpt-4o", chat_attributes())]).SerializeToString())
    assert status == 200
    assert limited.value("agentopz_llm_calls_total") == 2
