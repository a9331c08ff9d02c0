"""Real OTLP backends for tests (gRPC TraceService/LogsService, HTTP /v1/traces and /v1/logs) that keep
every request, and a service config that forwards to one."""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from support.processes import free_port
from support.service import service_body


class Sink:
    """Stores every ExportTraceServiceRequest it receives, with the request metadata / headers.

    `refuse` maps a span name to the answer (a gRPC status code or an HTTP status) given instead of
    accepting any request holding such a span; `refused` counts those answers by span name.

    Without `port`, a sink started before its port is asked for binds port 0 and reports the port it got
    (no other process can take it in between); one whose endpoint goes into a config before it starts
    (an outage test) reserves a free port when first asked."""

    def __init__(self, port: int | None = None, refuse: dict[str, grpc.StatusCode | int] | None = None) -> None:
        self._port = port
        self.requests: list[ExportTraceServiceRequest] = []
        self.log_requests: list[ExportLogsServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.refuse = refuse or {}
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()

    def refusal(self, request: ExportTraceServiceRequest) -> grpc.StatusCode | int | None:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if span.name in self.refuse:
                        with self._lock:
                            self.refused[span.name] += 1
                        return self.refuse[span.name]
        return None

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, request: ExportTraceServiceRequest, metadata: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(request)
            self.metadata.append(metadata)

    def record_logs(self, request: ExportLogsServiceRequest) -> None:
        with self._lock:
            self.log_requests.append(request)

    def log_records(self) -> list:
        with self._lock:
            requests = list(self.log_requests)
        return [
            record
            for request in requests
            for resource_logs in request.resource_logs
            for scope_logs in resource_logs.scope_logs
            for record in scope_logs.log_records
        ]

    def spans(self) -> list[tuple]:
        """(resource, scope, span) for every span received, duplicates included."""
        with self._lock:
            requests = list(self.requests)
        return [
            (resource_spans.resource, scope_spans.scope, span)
            for request in requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def span_ids(self) -> Counter:
        return Counter(span.span_id for _, _, span in self.spans())

    def wait_for_spans(self, count: int, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            received = len(self.spans())
            if received >= count or time.monotonic() > deadline:
                return received
            time.sleep(0.05)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class GrpcSink(Sink):
    def export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        code = self.refusal(request)
        if code is not None:
            context.abort(code, "refused by the test backend")
        self.record(request, dict(context.invocation_metadata()))
        return ExportTraceServiceResponse()

    def start(self) -> None:
        sink = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                return sink.export(request, context)

        class LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request, context):
                sink.record_logs(request)
                return ExportLogsServiceResponse()

        self._server = grpc.server(ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(LogsServicer(), self._server)
        bound = self._server.add_insecure_port(f"127.0.0.1:{self._port or 0}")
        if bound == 0 or self._port not in (None, bound):
            raise RuntimeError(f"gRPC sink cannot listen on 127.0.0.1:{self._port or 0}")
        self._port = bound
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait()


class HttpSink(Sink):
    def start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                if (
                    self.path not in ("/v1/traces", "/v1/logs")
                    or headers.get("content-type") != "application/x-protobuf"
                ):
                    self._reply(404, b"")
                    return
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/logs":
                    sink.record_logs(ExportLogsServiceRequest.FromString(body))
                    self._reply(200, ExportLogsServiceResponse().SerializeToString())
                    return
                request = ExportTraceServiceRequest.FromString(body)
                status = sink.refusal(request)
                if status is not None:
                    self._reply(status, b"")
                    return
                sink.record(request, headers)
                self._reply(200, ExportTraceServiceResponse().SerializeToString())

            def _reply(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port or 0), Handler)
        self._port = self._server.server_address[1]
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


SINKS = {"grpc": GrpcSink, "http/protobuf": HttpSink}


# -- config -------------------------------------------------------------------------------------


def config_body(downstream: dict, shutdown_timeout: float = 10.0, **more) -> str:
    """A start_service body: the usual pipeline plus an `otlp/downstream` exporter configured by
    `downstream`; `more` goes to service_body (runs, extensions)."""
    return service_body(
        exporters={"otlp/downstream": downstream}, service={"shutdown_timeout_seconds": shutdown_timeout}, **more
    )


def attribute_value(kv):
    which = kv.value.WhichOneof("value")
    if which == "array_value":
        return tuple(getattr(v, v.WhichOneof("value")) for v in kv.value.array_value.values)
    return getattr(kv.value, which)
