"""OTLP receiver: TraceService and LogsService over gRPC, POST /v1/traces and /v1/logs over HTTP
(protobuf or JSON, gzip). Log records carry evaluation results (gen_ai.evaluation.result).

Duties from the OTLP specification: a request-size limit applied after decompression (413),
415 for an unsupported content type, 400 with a google.rpc.Status body for undecodable data,
partial success when some spans are invalid (the rest are kept), and 503 + Retry-After
(gRPC UNAVAILABLE + RetryInfo) when the pipeline cannot take more. Every gRPC refusal a sender may
retry carries RetryInfo, the calls at once past `max_concurrent_requests` (RESOURCE_EXHAUSTED)
included: OTLP senders retry RESOURCE_EXHAUSTED only with it.

gRPC calls are served as client-streaming calls (the wire format of a unary call is the same), so the
handler runs as the call starts: it counts the call and waits for the request message under its own
deadline, where a unary handler would run only once a slow sender had finished sending.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import math
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..bearer import TokenConfig, bearer_credentials, token_matches
from ..components import Consumer, Context, Factory
from ..httpserver import ConnectionGuard, HttpServerConfig, serve
from ..metrics import Counter, Family
from ..netaddr import Endpoint, parse_endpoint
from ..spans import Batch

log = logging.getLogger("agentopz_otel.receiver")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


@dataclass(frozen=True)
class Signal:
    """What differs between receiving spans and receiving log records."""

    name: str
    grpc_service: str
    http_path: str
    request_type: type[Message]
    response_type: type[Message]
    json_path: tuple[tuple[str, ...], ...]  # JSON keys from the request down to the items
    rejected_field: str


TRACES = Signal(
    "traces",
    "opentelemetry.proto.collector.trace.v1.TraceService",
    "/v1/traces",
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
    (("resourceSpans", "resource_spans"), ("scopeSpans", "scope_spans"), ("spans",)),
    "rejected_spans",
)
LOGS = Signal(
    "logs",
    "opentelemetry.proto.collector.logs.v1.LogsService",
    "/v1/logs",
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
    (("resourceLogs", "resource_logs"), ("scopeLogs", "scope_logs"), ("logRecords", "log_records")),
    "rejected_log_records",
)


class GrpcProtocol(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: Endpoint = "127.0.0.1:4317"
    max_concurrent_requests: int = Field(
        default=64, ge=1, description="calls at once; past it: RESOURCE_EXHAUSTED with RetryInfo"
    )
    read_message_timeout_seconds: float = Field(
        default=30.0, gt=0, description="from a call's start to its request message; slower: DEADLINE_EXCEEDED"
    )
    max_connections: int = Field(default=1000, ge=1, description="past it, new connections are refused")
    handshake_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a connection that has not completed the HTTP/2 handshake by then is closed"
    )
    idle_timeout_seconds: float = Field(
        default=60.0, gt=0, description="a connection with no call for this long is sent GOAWAY and closed"
    )


class HttpProtocol(HttpServerConfig):
    endpoint: Endpoint = "127.0.0.1:4318"


class Protocols(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grpc: GrpcProtocol | None = None
    http: HttpProtocol | None = None


class OtlpReceiverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    protocols: Protocols = Field(default_factory=lambda: Protocols(grpc=GrpcProtocol(), http=HttpProtocol()))
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="after decompression")
    max_inflight_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="request bytes being read or handled at once, both transports"
    )
    retry_after_seconds: float = Field(default=5.0, gt=0)
    auth: TokenConfig | None = None

    @model_validator(mode="after")
    def _some_protocol(self) -> OtlpReceiverConfig:
        if self.protocols.grpc is None and self.protocols.http is None:
            raise ValueError("enable at least one of protocols.grpc or protocols.http")
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ValueError("max_inflight_bytes must be at least max_request_bytes")
        return self


class Backpressure(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the pipeline is full, retry after {retry_after:g}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Accepted:
    rejected: int
    error_message: str


class RequestError(Exception):
    """A request rejected as a whole: HTTP status plus the google.rpc code for the Status body."""

    def __init__(self, http_status: int, grpc_code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code


def _is_valid_span(span) -> bool:
    # Each read of a bytes field makes a new object: read each once.
    trace_id = span.trace_id
    span_id = span.span_id
    return (
        len(trace_id) == 16
        and trace_id != _ZERO_TRACE_ID
        and len(span_id) == 8
        and span_id != _ZERO_SPAN_ID
        and len(span.parent_span_id) in (0, 8)
    )


def _is_valid_log_record(record) -> bool:
    return len(record.trace_id) in (0, 16) and len(record.span_id) in (0, 8)


def remove_invalid(groups, items: str, is_valid) -> tuple[int, int]:
    """Drop the items failing `is_valid` from every `groups[...].<scope>.<items>` list in place.

    Returns (items seen, items removed); `groups` are ResourceSpans or ResourceLogs.
    """
    total = removed = 0
    for group in groups:
        for scope in getattr(group, "scope_spans" if items == "spans" else "scope_logs"):
            entries = getattr(scope, items)
            total += len(entries)
            bad = [index for index, entry in enumerate(entries) if not is_valid(entry)]
            for index in reversed(bad):
                del entries[index]
            removed += len(bad)
    return total, removed


def remove_invalid_spans(request: ExportTraceServiceRequest) -> tuple[int, int]:
    return remove_invalid(request.resource_spans, "spans", _is_valid_span)


def remove_invalid_log_records(request: ExportLogsServiceRequest) -> tuple[int, int]:
    return remove_invalid(request.resource_logs, "log_records", _is_valid_log_record)


def _hex_ids_to_base64(node: dict) -> None:
    for key in _ID_KEYS:
        value = node.get(key)
        if isinstance(value, str):
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b"\x00"  # not hex: becomes an invalid id, so only this span is rejected
            node[key] = base64.b64encode(raw).decode()


def _children(nodes: list, keys: tuple[str, ...]) -> list:
    found = []
    for node in nodes:
        if isinstance(node, dict):
            value = next((node[key] for key in keys if isinstance(node.get(key), list)), [])
            found.extend(item for item in value if isinstance(item, dict))
    return found


def parse_json_request(body: bytes, signal: Signal = TRACES) -> Message:
    """OTLP/JSON: ids are hex (protobuf's JSON mapping would expect base64), unknown fields ignored."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise RequestError(400, grpc.StatusCode.INVALID_ARGUMENT, f"invalid JSON: {error}") from None
    if not isinstance(document, dict):
        raise RequestError(400, grpc.StatusCode.INVALID_ARGUMENT, "the JSON body must be an object")
    items = [document]
    for keys in signal.json_path:
        items = _children(items, keys)
    for item in (*items, *_children(items, ("links",))):
        _hex_ids_to_base64(item)
    request = signal.request_type()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, TypeError, ValueError) as error:
        raise RequestError(
            400, grpc.StatusCode.INVALID_ARGUMENT, f"not an OTLP {signal.name} request: {error}"
        ) from None
    return request


def parse_protobuf_request(body: bytes, signal: Signal = TRACES) -> Message:
    try:
        return signal.request_type.FromString(body)
    except (DecodeError, RecursionError) as error:
        name = signal.request_type.DESCRIPTOR.name
        raise RequestError(400, grpc.StatusCode.INVALID_ARGUMENT, f"not a valid {name}: {error}") from None


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress with the size limit applied to the output, so a gzip bomb stops at `limit`."""
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as error:
        raise RequestError(400, grpc.StatusCode.INVALID_ARGUMENT, f"invalid gzip body: {error}") from None
    if len(data) > limit:
        raise RequestError(413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"body exceeds {limit} bytes after gzip")
    if not decompressor.eof:
        raise RequestError(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid gzip body: truncated")
    return data


class OtlpReceiver:
    def __init__(self, component_id: str, config: OtlpReceiverConfig, context: Context) -> None:
        self.id = component_id
        self._config = config
        self._consumer: Consumer | None = None
        self._secret = config.auth.secret(f"receivers.{component_id}.auth") if config.auth else None
        self._inflight_bytes = 0
        self._grpc_calls = 0
        self._grpc_server: grpc.aio.Server | None = None
        self._http_runner: web.AppRunner | None = None
        self._http_guard: ConnectionGuard | None = None
        self._metrics = metrics = context.metrics
        self._received: Family[Counter] = metrics.metric("agentopz_receiver_spans_total")
        self._rejected: Family[Counter] = metrics.metric("agentopz_receiver_rejected_spans_total")
        self._received_logs: Family[Counter] = metrics.metric("agentopz_receiver_log_records_total")
        self._rejected_requests: Family[Counter] = metrics.metric("agentopz_receiver_rejected_requests_total")

    # -- shared by both transports -------------------------------------------------------------

    def accept_logs(self, request: ExportLogsServiceRequest, transport: str) -> Accepted:
        assert self._consumer is not None
        total, removed = remove_invalid_log_records(request)
        self._received_logs.series((transport,)).value += total
        if total - removed:
            self._consumer.consume_logs(request)
        message = f"{removed} log record(s) rejected: trace_id must be 16 bytes and span_id 8" if removed else ""
        return Accepted(removed, message)

    def accept(self, request: ExportTraceServiceRequest, transport: str, wire: bytes | None = None) -> Accepted:
        assert self._consumer is not None
        total, removed = remove_invalid_spans(request)
        self._received.series((transport,)).value += total
        if removed:
            self._rejected.series(("invalid_id",)).value += removed
        kept = total - removed
        if kept:
            retry_after = self._consumer.retry_after(kept)
            if retry_after is not None:
                self._rejected.series(("backpressure",)).value += kept
                raise Backpressure(max(retry_after, self._config.retry_after_seconds))
            self._consumer.consume(Batch(request, kept, None if removed else wire))
        message = (
            f"{removed} span(s) rejected: trace_id must be 16 bytes and span_id 8, not all zero" if removed else ""
        )
        return Accepted(removed, message)

    def _authorized(self, header: str | None) -> bool:
        return self._secret is None or token_matches(bearer_credentials(header), self._secret)

    def _accept(self, signal: Signal, request: Message, transport: str, wire: bytes | None) -> Message:
        """`wire`: the protobuf bytes the request was parsed from (None for JSON)."""
        accepted = self.accept(request, transport, wire) if signal is TRACES else self.accept_logs(request, transport)
        response = signal.response_type()
        if accepted.rejected:
            setattr(response.partial_success, signal.rejected_field, accepted.rejected)
            response.partial_success.error_message = accepted.error_message
        return response

    async def _stored(self) -> None:
        """Acknowledge only what persistent queues have stored; if storing failed, the sender retries."""
        assert self._consumer is not None
        if not await self._consumer.flushed():
            raise Backpressure(self._config.retry_after_seconds)

    # -- gRPC ----------------------------------------------------------------------------------

    async def _grpc_export(
        self, signal: Signal, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        if not self._authorized(metadata.get("authorization")):
            self._rejected_requests.series(("grpc", "unauthenticated")).value += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        protocol = self._config.protocols.grpc
        assert protocol is not None
        if self._grpc_calls >= protocol.max_concurrent_requests:
            self._rejected_requests.series(("grpc", "concurrency")).value += 1
            message = f"more than {protocol.max_concurrent_requests} calls at once"
            await _abort_retryable(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, message, self._config.retry_after_seconds
            )
        self._grpc_calls += 1
        try:
            body = await self._grpc_request_message(requests, context, protocol.read_message_timeout_seconds)
            return await self._grpc_message(signal, body, context)
        finally:
            self._grpc_calls -= 1

    async def _grpc_request_message(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, timeout: float
    ) -> bytes:
        """The call's one message, read to the end of the stream within `timeout` seconds of the call's
        start. Reading on to the end also lets grpc drop the message: a stream left suspended on it
        keeps it alive until a full garbage collection (three times the memory under load)."""
        messages = aiter(requests)
        try:
            async with asyncio.timeout(timeout):
                body = await anext(messages, None)
                extra = None if body is None else await anext(messages, None)
        except TimeoutError:
            self._rejected_requests.series(("grpc", "read_timeout")).value += 1
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"the request message did not arrive within {timeout:g} s"
            )
        if body is None or extra is not None:
            self._rejected_requests.series(("grpc", "decode")).value += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a call carries exactly one request message")
        return body

    async def _grpc_message(self, signal: Signal, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # The message is in memory from here on: it counts against the budget HTTP bodies share.
        self._inflight_bytes += len(body)
        try:
            if self._inflight_bytes > self._config.max_inflight_bytes:
                raise Backpressure(self._config.retry_after_seconds)
            response = self._accept(signal, parse_protobuf_request(body, signal), "grpc", body)
            await self._stored()
        except RequestError as error:
            self._rejected_requests.series(("grpc", "decode")).value += 1
            await context.abort(error.grpc_code, str(error))
        except Backpressure as busy:
            self._rejected_requests.series(("grpc", "busy")).value += 1
            await _abort_retryable(context, grpc.StatusCode.UNAVAILABLE, str(busy), busy.retry_after)
        finally:
            self._inflight_bytes -= len(body)
        return response.SerializeToString()

    async def _start_grpc(self, protocol: GrpcProtocol) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._config.max_request_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.max_allowed_incoming_connections", protocol.max_connections),
                ("grpc.server_handshake_timeout_ms", int(protocol.handshake_timeout_seconds * 1000)),
                ("grpc.max_connection_idle_ms", int(protocol.idle_timeout_seconds * 1000)),
            ],
        )
        server.add_generic_rpc_handlers(
            tuple(
                grpc.method_handlers_generic_handler(
                    signal.grpc_service,
                    {"Export": grpc.stream_unary_rpc_method_handler(functools.partial(self._grpc_export, signal))},
                )
                for signal in (TRACES, LOGS)
            )
        )
        host, port = parse_endpoint(protocol.endpoint)
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            bound = 0
        if not bound:
            raise OSError(f"receiver {self.id}: cannot listen for OTLP/gRPC on {protocol.endpoint} (port in use?)")
        await server.start()
        self._grpc_server = server

    # -- HTTP ----------------------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._config.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"body exceeds {limit} bytes")
        chunks = []
        size = 0
        try:
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                self._inflight_bytes += len(chunk)
                chunks.append(chunk)
                if size > limit:
                    raise RequestError(413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"body exceeds {limit} bytes")
                if self._inflight_bytes > self._config.max_inflight_bytes:
                    raise Backpressure(self._config.retry_after_seconds)
            assert self._http_guard is not None
            self._http_guard.body_read(request)
            return b"".join(chunks)
        finally:
            self._inflight_bytes -= size

    def _status_response(self, status: int, code: int, message: str, json_body: bool, headers=None) -> web.Response:
        return _message_response(status_pb2.Status(code=code, message=message), json_body, status, headers)

    async def _http_export(self, signal: Signal, request: web.Request) -> web.Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        json_body = content_type == JSON
        if not self._authorized(request.headers.get("Authorization")):
            self._rejected_requests.series(("http", "unauthenticated")).value += 1
            return self._status_response(401, code_pb2.UNAUTHENTICATED, "missing or wrong bearer token", json_body)
        if content_type not in (PROTOBUF, JSON):
            self._rejected_requests.series(("http", "media_type")).value += 1
            return self._status_response(
                415,
                code_pb2.INVALID_ARGUMENT,
                f"unsupported Content-Type {content_type!r}; use {PROTOBUF} or {JSON}",
                False,
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("gzip", "identity", ""):
            self._rejected_requests.series(("http", "media_type")).value += 1
            return self._status_response(
                415, code_pb2.INVALID_ARGUMENT, f"unsupported Content-Encoding {encoding!r}", json_body
            )
        try:
            body = await self._read_body(request)
            if encoding == "gzip":
                body = gunzip(body, self._config.max_request_bytes)
            parsed = parse_json_request(body, signal) if json_body else parse_protobuf_request(body, signal)
            response = self._accept(signal, parsed, "http", None if json_body else body)
            await self._stored()
        except RequestError as error:
            reason = "too_large" if error.http_status == 413 else "decode"
            self._rejected_requests.series(("http", reason)).value += 1
            return self._status_response(error.http_status, error.grpc_code.value[0], str(error), json_body)
        except Backpressure as busy:
            self._rejected_requests.series(("http", "busy")).value += 1
            headers = {"Retry-After": str(math.ceil(busy.retry_after))}
            return self._status_response(503, code_pb2.UNAVAILABLE, str(busy), json_body, headers)
        return _message_response(response, json_body)

    async def _start_http(self, protocol: HttpProtocol) -> None:
        # aiohttp's own limit is a backstop; _read_body enforces the configured one with a clear error.
        app = web.Application(client_max_size=self._config.max_request_bytes + 1)
        for signal in (TRACES, LOGS):
            app.router.add_post(signal.http_path, functools.partial(self._http_export, signal))
        self._http_guard = ConnectionGuard(self.id, protocol, self._metrics, self._config.retry_after_seconds)
        # Decompression is ours (gunzip) so the size limit applies to the decompressed body.
        self._http_runner, _ = await serve(
            app, self._http_guard, f"receiver {self.id}: cannot listen for OTLP/HTTP", auto_decompress=False
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, consumer: Consumer) -> None:
        self._consumer = consumer
        protocols = self._config.protocols
        if protocols.grpc is not None:
            await self._start_grpc(protocols.grpc)
        if protocols.http is not None:
            await self._start_http(protocols.http)

    async def shutdown(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=2.0)
        if self._http_runner is not None:
            await self._http_runner.cleanup()


async def _abort_retryable(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, retry_after: float
) -> None:
    """End the call with `code` and a google.rpc.Status carrying RetryInfo (the delay OTLP senders wait)."""
    status = status_pb2.Status(code=code.value[0], message=message)
    retry = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=math.ceil(retry_after)))
    status.details.add().Pack(retry)
    await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))


def _message_response(
    message: Message, json_body: bool, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    body = json_format.MessageToJson(message, indent=None).encode() if json_body else message.SerializeToString()
    response = web.Response(body=body, status=status, headers=headers)
    response.content_type = JSON if json_body else PROTOBUF
    return response


def _create(component_id: str, config: OtlpReceiverConfig, context: Context) -> OtlpReceiver:
    return OtlpReceiver(component_id, config, context)


FACTORY = Factory(type="otlp", kind="receiver", config_type=OtlpReceiverConfig, create=_create)
