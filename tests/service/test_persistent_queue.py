"""The OTLP exporter's persistent sending queue: what the receiver acknowledged survives SIGKILL and is
delivered after a restart, once and in order, under the same bound."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support.otlp_proto import make_request, make_span
from support.otlp_sinks import GrpcSink, attribute_value, config_body
from support.processes import free_port
from support.sdk_agent import chat_attributes
from support.service import post_http


def persistent_body(sink_port: int, storage: Path, **queue) -> str:
    return config_body(
        {
            "endpoint": f"http://127.0.0.1:{sink_port}",
            "senders": 1,
            "batch": {"timeout_seconds": 0.05},
            "retry": {"initial_interval_seconds": 0.2, "max_interval_seconds": 0.5},
            "sending_queue": {"storage": "storage", **queue},
        },
        shutdown_timeout=2,
        extensions={"storage": {"path": str(storage)}},
    )


def numbered_request(first: int, count: int) -> ExportTraceServiceRequest:
    spans = [make_span("chat gpt-4o", chat_attributes(**{"app.index": first + i})) for i in range(count)]
    return make_request(spans, service="stream")


def indexes(sink: GrpcSink) -> list[int]:
    return [attribute_value(kv) for _, _, span in sink.spans() for kv in span.attributes if kv.key == "app.index"]


def test_acknowledged_spans_survive_sigkill_and_are_delivered_once_in_order_after_restart(start_service, tmp_path):
    sink_port = free_port()
    body = persistent_body(sink_port, tmp_path / "state.sqlite")
    first = start_service(body)
    acknowledged: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        """Requests of 20 spans one after another until the service dies; keeps what was acknowledged."""
        index = 0
        while not stop.is_set():
            try:
                status = post_http(first, numbered_request(index, 20))[0]
            except OSError:
                return
            if status != 200:
                return
            acknowledged.extend(range(index, index + 20))
            index += 20

    sender = threading.Thread(target=stream)
    sender.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    first.process.kill()  # SIGKILL, mid-stream, with the downstream down
    first.process.wait()
    stop.set()
    sender.join()
    assert len(acknowledged) >= 1000

    with GrpcSink(sink_port) as downstream:
        second = start_service(body)
        downstream.wait_for_spans(len(acknowledged), timeout=20)
        time.sleep(0.5)  # anything duplicated would arrive by now
        delivered = indexes(downstream)
        # A request the service stored but was killed before answering may come too, once, after the rest.
        assert delivered[: len(acknowledged)] == acknowledged
        assert len(delivered) - len(acknowledged) in (0, 20)
        assert len(set(delivered)) == len(delivered)
        assert second.value("agentopz_exporter_sent_spans_total", exporter="otlp/downstream") == len(delivered)
        assert second.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 0
        assert second.stop() == 0

    third = start_service(body)  # delivered rows were deleted: nothing is sent twice
    time.sleep(0.5)
    assert third.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 0


def test_persistent_queue_keeps_its_bound_across_a_restart(start_service, tmp_path):
    sink_port = free_port()
    body = persistent_body(sink_port, tmp_path / "state.sqlite", max_spans=50)
    first = start_service(body)
    assert post_http(first, numbered_request(0, 40))[0] == 200
    code, headers, _ = post_http(first, numbered_request(40, 11))
    assert (code, headers["Retry-After"]) == (503, "5")
    assert first.stop() == 0
    assert "40 spans kept in the persistent queue" in first.log()

    second = start_service(body)
    assert second.value("agentopz_exporter_queue_spans", exporter="otlp/downstream") == 40
    assert post_http(second, numbered_request(40, 11))[0] == 503  # the stored 40 count against the bound
    assert post_http(second, numbered_request(40, 10))[0] == 200  # exactly at it
    with GrpcSink(sink_port) as downstream:
        assert downstream.wait_for_spans(50) == 50
        time.sleep(0.3)
        assert indexes(downstream) == list(range(50))
