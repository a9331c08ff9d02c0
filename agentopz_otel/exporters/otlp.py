"""OTLP exporter: forwards the enriched spans to any OTLP backend over gRPC or HTTP.

Requests are queued as serialized bytes. Concatenated ExportTraceServiceRequest encodings are
themselves a valid request holding all their spans (repeated fields append on the wire), so a
batch is a join of queued items, with no re-encoding. Delivery retries only the codes OTLP calls
retryable, honours Retry-After / RetryInfo, and counts every span it gives up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import BaseModel, ConfigDict, Field

from ..components import Context, Factory
from ..model import Batch

log = logging.getLogger("agentopz_otel.exporter.otlp")

TRACE_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


class QueueConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_spans: int = Field(default=200_000, ge=1, description="spans held while the backend is slow or down")
    when_full: Literal["reject", "drop"] = Field(
        default="reject",
        description="reject: refuse new data with 503/UNAVAILABLE so senders retry; drop: accept, count, drop",
    )


class RetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    initial_interval_seconds: float = Field(default=1.0, gt=0)
    max_interval_seconds: float = Field(default=30.0, gt=0)
    max_elapsed_seconds: float = Field(default=300.0, ge=0, description="0: retry until shutdown")


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    send_batch_size: int = Field(default=8192, ge=1)
    send_batch_max_size: int = Field(default=16384, ge=1)
    timeout_seconds: float = Field(default=0.2, gt=0)


class OtlpExporterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(description="http(s)://host:port; for HTTP a bare host:port gets /v1/traces appended")
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    headers: dict[str, str] = Field(default_factory=dict)
    compression: Literal["none", "gzip"] = "none"
    timeout_seconds: float = Field(default=10.0, gt=0)
    senders: int = Field(default=2, ge=1, le=32)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)


@dataclass(frozen=True)
class SendResult:
    ok: bool
    retryable: bool = False
    retry_after: float | None = None
    rejected_spans: int = 0
    message: str = ""


def _grpc_retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _partial(body: bytes) -> SendResult:
    try:
        response = ExportTraceServiceResponse.FromString(body)
    except DecodeError:
        return SendResult(ok=True)
    partial = response.partial_success
    return SendResult(ok=True, rejected_spans=partial.rejected_spans, message=partial.error_message)


class GrpcSender:
    def __init__(self, config: OtlpExporterConfig) -> None:
        parts = urlsplit(config.endpoint if "://" in config.endpoint else f"http://{config.endpoint}")
        target = parts.netloc
        options = [("grpc.max_send_message_length", 256 * 1024 * 1024)]
        compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression
        if parts.scheme == "https":
            self._channel = grpc.aio.secure_channel(
                target, grpc.ssl_channel_credentials(), options=options, compression=compression
            )
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options, compression=compression)
        self._export = self._channel.unary_unary(TRACE_EXPORT_METHOD)
        self._metadata = tuple((key.lower(), value) for key, value in config.headers.items())
        self._timeout = config.timeout_seconds

    async def send(self, body: bytes) -> SendResult:
        try:
            response = await self._export(body, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            delay = _grpc_retry_delay(error)
            code = error.code()
            retryable = code in _RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None)
            return SendResult(False, retryable, delay, message=f"{code.name}: {error.details()}")
        return _partial(response)

    async def close(self) -> None:
        await self._channel.close()


class HttpSender:
    def __init__(self, config: OtlpExporterConfig) -> None:
        url = config.endpoint if "://" in config.endpoint else f"http://{config.endpoint}"
        parts = urlsplit(url)
        self._url = url if parts.path not in ("", "/") else url.rstrip("/") + "/v1/traces"
        self._headers = {"Content-Type": "application/x-protobuf", **config.headers}
        self._gzip = config.compression == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, body: bytes) -> SendResult:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        payload = gzip.compress(body, compresslevel=5) if self._gzip else body
        try:
            async with self._session.post(self._url, data=payload, headers=self._headers) as response:
                content = await response.read()
                if response.status == 200:
                    return _partial(content)
                retry_after = response.headers.get("Retry-After", "")
                delay = float(retry_after) if retry_after.isdigit() else None
                return SendResult(False, response.status in _RETRYABLE_HTTP, delay, message=f"HTTP {response.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            return SendResult(False, True, message=f"{type(error).__name__}: {error}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class OtlpExporter:
    def __init__(self, component_id: str, config: OtlpExporterConfig, context: Context) -> None:
        self.id = component_id
        self._config = config
        self._sender = GrpcSender(config) if config.protocol == "grpc" else HttpSender(config)
        self._queue: deque[tuple[bytes, int]] = deque()
        self._held_spans = 0  # queued plus in delivery: what the queue bound applies to
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._stopping = False
        self._failing = False
        metrics = context.metrics
        label = (component_id,)
        self._sent = metrics.counter(
            "agentopz_exporter_sent_spans_total", "Spans the backend accepted.", ("exporter",), bounded=False
        ).series(label)
        self._failed = metrics.counter(
            "agentopz_exporter_failed_spans_total",
            "Spans given up on: rejected by the backend, retries exhausted, queue full in drop mode, or shutdown.",
            ("exporter",),
            bounded=False,
        ).series(label)
        self._queued = metrics.gauge(
            "agentopz_exporter_queue_spans", "Spans waiting in the exporter queue.", ("exporter",), bounded=False
        ).series(label)

    # -- pipeline side -------------------------------------------------------------------------

    def retry_after(self, span_count: int) -> float | None:
        if self._config.queue.when_full == "drop" or self._held_spans + span_count <= self._config.queue.max_spans:
            return None
        return self._config.retry.initial_interval_seconds

    def export(self, batch: Batch) -> None:
        if self._stopping or self._held_spans + batch.span_count > self._config.queue.max_spans:
            self._failed.value += batch.span_count
            return
        self._queue.append((batch.request.SerializeToString(), batch.span_count))
        self._held_spans += batch.span_count
        self._queued.value = self._held_spans
        if self._held_spans >= self._config.batch.send_batch_size:
            self._wake.set()

    # -- delivery ------------------------------------------------------------------------------

    def _take(self) -> tuple[bytes, int]:
        bodies = []
        spans = 0
        limit = self._config.batch.send_batch_max_size
        while self._queue and (not bodies or spans + self._queue[0][1] <= limit):
            body, count = self._queue.popleft()
            bodies.append(body)
            spans += count
        return b"".join(bodies), spans

    async def _worker(self) -> None:
        timeout = self._config.batch.timeout_seconds
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            if self._held_spans < self._config.batch.send_batch_size and not self._stopping:
                # Give a partial batch a short time to fill.
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            body, spans = self._take()
            if spans:
                try:
                    await self._deliver(body, spans)
                finally:
                    self._held_spans -= spans
                    self._queued.value = self._held_spans

    async def _deliver(self, body: bytes, spans: int) -> None:
        retry = self._config.retry
        started = time.monotonic()
        backoff = retry.initial_interval_seconds
        while True:
            result = await self._sender.send(body)
            if result.ok:
                self._sent.value += spans - result.rejected_spans
                self._failed.value += result.rejected_spans
                if result.rejected_spans:
                    log.warning("%s: backend rejected %d span(s): %s", self.id, result.rejected_spans, result.message)
                if self._failing:
                    log.info("%s: backend reachable again", self.id)
                    self._failing = False
                return
            if not self._failing:
                log.warning(
                    "%s: export failed (%s); %s",
                    self.id,
                    result.message,
                    "retrying" if result.retryable and retry.enabled else "dropping",
                )
                self._failing = True
            delay = result.retry_after if result.retry_after is not None else backoff * random.uniform(0.8, 1.2)
            backoff = min(backoff * 1.5, retry.max_interval_seconds)
            out_of_time = retry.max_elapsed_seconds and time.monotonic() - started + delay > retry.max_elapsed_seconds
            if not (result.retryable and retry.enabled) or out_of_time or self._stopping:
                self._failed.value += spans
                log.warning("%s: dropped %d span(s) after %s", self.id, spans, result.message)
                return
            await asyncio.sleep(delay)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self._config.senders)]

    async def shutdown(self, timeout: float) -> None:
        """Flush what is held; whatever cannot be delivered within `timeout` is counted as failed."""
        self._stopping = True
        self._wake.set()
        _, pending = await asyncio.wait(self._workers, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Cancelled deliveries released their spans from _held_spans; what is left is queued.
        if self._held_spans:
            self._failed.value += self._held_spans
            log.warning("%s: %d span(s) not delivered before shutdown", self.id, self._held_spans)
            self._queue.clear()
            self._held_spans = 0
            self._queued.value = 0
        await self._sender.close()


def _create(component_id: str, config: OtlpExporterConfig, context: Context) -> OtlpExporter:
    return OtlpExporter(component_id, config, context)


FACTORY = Factory(type="otlp", kind="exporter", config_type=OtlpExporterConfig, create=_create)
