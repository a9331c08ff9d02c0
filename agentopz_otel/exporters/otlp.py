"""OTLP exporter: forwards the enriched spans (and run-log records) to any OTLP backend over gRPC or HTTP.

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
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from ..components import Context, Factory, Storage
from ..metrics import Registry
from ..spans import Batch
from .stored_queue import StoredQueue

log = logging.getLogger("agentopz_otel.exporter.otlp")

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
_MAX_RECONNECT_BACKOFF_MS = 2000
_SHUTDOWN_RETRY_SECONDS = 0.5
_SHUTDOWN_MARGIN_SECONDS = 0.5


class QueueConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_spans: int = Field(default=200_000, ge=1, description="spans held while the backend is slow or down")
    when_full: Literal["reject", "drop"] = Field(
        default="reject",
        description="reject: refuse new data with 503/UNAVAILABLE so senders retry; drop: accept, count, drop",
    )
    storage: str | None = Field(
        default=None,
        description="id of a storage extension: the queue survives restarts and crashes; unset: in memory",
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
    send_batch_max_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="gRPC backends refuse messages over 4 MiB by default"
    )
    timeout_seconds: float = Field(default=0.2, gt=0)


class OtlpExporterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(
        description="http(s)://host:port[/prefix]; HTTP requests go to /v1/traces and /v1/logs under it"
    )
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    headers: dict[str, str] = Field(default_factory=dict)
    compression: Literal["none", "gzip"] = "none"
    timeout_seconds: float = Field(default=10.0, gt=0)
    senders: int = Field(default=2, ge=1, le=32)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    # `queue` is the key's earlier name, still accepted.
    sending_queue: QueueConfig = Field(
        default_factory=QueueConfig, validation_alias=AliasChoices("sending_queue", "queue")
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)


@dataclass(frozen=True)
class SendResult:
    ok: bool
    retryable: bool = False
    retry_after: float | None = None
    rejected: int = 0
    message: str = ""


def _grpc_retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return None
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


@dataclass(frozen=True)
class Signal:
    """What differs between forwarding spans and forwarding log records."""

    name: str
    grpc_method: str
    http_path: str
    response_type: type[Message]
    rejected_field: str
    unit: str
    # The metrics of this signal's deliveries (sent, failed, queued), as declared in the catalogue.
    sent_metric: str
    failed_metric: str
    queue_metric: str


TRACES = Signal(
    "traces",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "/v1/traces",
    ExportTraceServiceResponse,
    "rejected_spans",
    "spans",
    "agentopz_exporter_sent_spans_total",
    "agentopz_exporter_failed_spans_total",
    "agentopz_exporter_queue_spans",
)
LOGS = Signal(
    "logs",
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "/v1/logs",
    ExportLogsServiceResponse,
    "rejected_log_records",
    "log_records",
    "agentopz_exporter_sent_log_records_total",
    "agentopz_exporter_failed_log_records_total",
    "agentopz_exporter_queue_log_records",
)


def _partial(signal: Signal, body: bytes) -> SendResult:
    try:
        response = signal.response_type.FromString(body)
    except DecodeError:
        return SendResult(ok=True)
    partial = response.partial_success
    return SendResult(ok=True, rejected=getattr(partial, signal.rejected_field), message=partial.error_message)


class GrpcSender:
    def __init__(self, config: OtlpExporterConfig) -> None:
        parts = urlsplit(config.endpoint if "://" in config.endpoint else f"http://{config.endpoint}")
        target = parts.netloc
        options = [
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            # gRPC's own reconnect backoff grows to 2 minutes; capped so a backend that is back is
            # found within seconds, and within the shutdown budget.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
        ]
        compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression
        if parts.scheme == "https":
            self._channel = grpc.aio.secure_channel(
                target, grpc.ssl_channel_credentials(), options=options, compression=compression
            )
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options, compression=compression)
        self._methods = {signal.name: self._channel.unary_unary(signal.grpc_method) for signal in (TRACES, LOGS)}
        self._metadata = tuple((key.lower(), value) for key, value in config.headers.items())

    async def send(self, signal: Signal, body: bytes, timeout: float) -> SendResult:
        try:
            # wait_for_ready: a channel that is reconnecting is waited for (up to the timeout), not failed at once.
            response = await self._methods[signal.name](
                body, timeout=timeout, metadata=self._metadata, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as error:
            delay = _grpc_retry_delay(error)
            code = error.code()
            retryable = code in _RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None)
            return SendResult(False, retryable, delay, message=f"{code.name}: {error.details()}")
        return _partial(signal, response)

    async def close(self) -> None:
        await self._channel.close()


class HttpSender:
    def __init__(self, config: OtlpExporterConfig) -> None:
        self._base = (config.endpoint if "://" in config.endpoint else f"http://{config.endpoint}").rstrip("/")
        self._headers = {"Content-Type": "application/x-protobuf", **config.headers}
        self._gzip = config.compression == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._session: aiohttp.ClientSession | None = None

    async def send(self, signal: Signal, body: bytes, timeout: float) -> SendResult:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        payload = gzip.compress(body, compresslevel=5) if self._gzip else body
        try:
            async with self._session.post(
                self._base + signal.http_path,
                data=payload,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as reply:
                content = await reply.read()
                if reply.status == 200:
                    return _partial(signal, content)
                retry_after = reply.headers.get("Retry-After", "")
                delay = float(retry_after) if retry_after.isdigit() else None
                return SendResult(False, reply.status in _RETRYABLE_HTTP, delay, message=f"HTTP {reply.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            return SendResult(False, True, message=f"{type(error).__name__}: {error}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


Sender = GrpcSender | HttpSender


class DeliveryQueue:
    """A bounded queue of serialized requests of one signal, drained by sender tasks."""

    def __init__(self, exporter_id: str, signal: Signal, config: OtlpExporterConfig, metrics: Registry) -> None:
        self.id = exporter_id
        self.signal = signal
        self._config = config
        self._sender: Sender | None = None
        self._store: StoredQueue | None = None
        self._queue: deque[tuple[bytes, int, int]] = deque()  # body, items, row in the store (0: none)
        self._held = 0  # queued plus in delivery: what the queue bound applies to
        self._waiting = 0  # queued, not yet taken by a sender
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._stopping = False
        self._deadline = math.inf  # set at shutdown: deliveries retry until then
        self._undelivered = 0  # left at the shutdown deadline, reported once
        self._failing = False
        label = (exporter_id,)
        self._sent = metrics.metric(signal.sent_metric).series(label)
        self._failed = metrics.metric(signal.failed_metric).series(label)
        self._queued = metrics.metric(signal.queue_metric).series(label)

    def retry_after(self, count: int) -> float | None:
        # A request larger than the whole queue would never fit: put() counts it as failed instead.
        max_spans = self._config.sending_queue.max_spans
        if self._config.sending_queue.when_full == "drop" or count > max_spans or self._held + count <= max_spans:
            return None
        return self._config.retry.initial_interval_seconds

    def put(self, body: bytes, count: int) -> None:
        if self._stopping or self._held + count > self._config.sending_queue.max_spans:
            self._failed.value += count
            return
        # Stored before the receiver answers, so what it acknowledged survives a crash.
        row = self._store.append(body, count) if self._store is not None else 0
        self._enqueue(body, count, row)

    async def flushed(self) -> bool:
        """True once what `put` took is stored (at once without a persistent queue); False if storing failed."""
        return self._store is None or await self._store.flushed()

    def _enqueue(self, body: bytes, count: int, row: int) -> None:
        self._queue.append((body, count, row))
        self._waiting += count
        self._held += count
        self._queued.value = self._held
        self._wake.set()

    def _take(self) -> tuple[bytes, int, list[int]]:
        bodies = []
        rows = []
        count = 0
        limit = self._config.batch.send_batch_max_size
        byte_limit = self._config.batch.send_batch_max_bytes
        size = 0
        while self._queue and (
            not bodies or (count + self._queue[0][1] <= limit and size + len(self._queue[0][0]) <= byte_limit)
        ):
            body, items, row = self._queue.popleft()
            bodies.append(body)
            if row:
                rows.append(row)
            count += items
            size += len(body)
        self._waiting -= count
        return b"".join(bodies), count, rows

    async def _worker(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # Give a partial batch up to batch.timeout_seconds to fill.
            deadline = time.monotonic() + self._config.batch.timeout_seconds
            while not self._stopping and self._waiting < self._config.batch.send_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            body, count, rows = self._take()
            if count:
                finished = False
                try:
                    finished = await self._deliver(body, count)
                except Exception:
                    finished = True
                    self._failed.value += count
                    log.exception("%s: delivery failed unexpectedly; dropped %d %s", self.id, count, self.signal.unit)
                finally:
                    if finished and rows:
                        assert self._store is not None
                        self._store.remove(rows)
                    elif not finished:
                        self._undelivered += count
                    self._held -= count
                    self._queued.value = self._held

    async def _deliver(self, body: bytes, count: int) -> bool:
        """Send one batch, retrying what OTLP calls retryable; at shutdown, retry until the deadline.

        True when the batch is done with (delivered or given up on and counted); False when the
        shutdown deadline came first."""
        retry = self._config.retry
        started = time.monotonic()
        backoff = retry.initial_interval_seconds
        while True:
            timeout = min(self._config.timeout_seconds, self._deadline - time.monotonic())
            if timeout <= 0:
                return False
            assert self._sender is not None
            result = await self._sender.send(self.signal, body, timeout)
            if result.ok:
                self._sent.value += count - result.rejected
                self._failed.value += result.rejected
                if result.rejected:
                    log.warning(
                        "%s: backend rejected %d %s: %s", self.id, result.rejected, self.signal.unit, result.message
                    )
                if self._failing:
                    log.info("%s: backend reachable again", self.id)
                    self._failing = False
                return True
            retrying = result.retryable and retry.enabled
            if not self._failing:
                log.warning(
                    "%s: export failed (%s); %s",
                    self.id,
                    result.message,
                    "retrying" if retrying else "not retryable, dropping (later failures are counted, not logged)",
                )
                self._failing = True
            if not retrying:
                self._failed.value += count
                return True
            delay = result.retry_after if result.retry_after is not None else backoff * random.uniform(0.8, 1.2)
            backoff = min(backoff * 1.5, retry.max_interval_seconds)
            if retry.max_elapsed_seconds and time.monotonic() - started + delay > retry.max_elapsed_seconds:
                self._failed.value += count
                log.warning("%s: dropped %d %s after retrying: %s", self.id, count, self.signal.unit, result.message)
                return True
            if self._stopping:
                # Inside the shutdown budget our own backoff shrinks to fit; a backend's retry advice must fit.
                if result.retry_after is None:
                    delay = min(delay, _SHUTDOWN_RETRY_SECONDS)
                if delay >= self._deadline - time.monotonic():
                    return False
            # A stop request ends the wait early, so held data is retried at once when shutdown starts.
            self._stop_requested.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)

    def start(self, sender: Sender, storage: Storage | None) -> None:
        self._sender = sender
        if storage is not None:
            self._store = StoredQueue(storage.connect(self.id), self.id, self.signal.name)
            stored = self._store.load()
            for body, count, row in stored:
                self._enqueue(body, count, row)
            if stored:
                log.info("%s: %d %s from the persistent queue to deliver", self.id, self._held, self.signal.unit)
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self._config.senders)]

    async def shutdown(self, timeout: float) -> None:
        """Deliver what is held, retrying within `timeout`; what is left at the deadline is counted and logged once."""
        self._deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self._stop_requested.set()
        if self._workers:
            # Workers give up by themselves at the deadline; the margin covers a send that overruns it.
            _, pending = await asyncio.wait(self._workers, timeout=timeout + _SHUTDOWN_MARGIN_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Cancelled deliveries released their items from _held; what is left is still queued.
        undelivered = self._undelivered + self._held
        if undelivered and self._store is not None:
            log.info(
                "%s: %d %s kept in the persistent queue for the next start", self.id, undelivered, self.signal.unit
            )
        elif undelivered:
            self._failed.value += undelivered
            log.warning(
                "%s: %d %s not delivered within the shutdown timeout (%.1f s left of it)",
                self.id,
                undelivered,
                self.signal.unit,
                timeout,
            )
        self._queue.clear()
        self._held = self._waiting = self._undelivered = 0
        self._queued.value = 0
        if self._store is not None:
            await self._store.close()


class OtlpExporter:
    def __init__(self, component_id: str, config: OtlpExporterConfig, context: Context) -> None:
        self.id = component_id
        self._config = config
        self._sender: Sender | None = None
        self._spans = DeliveryQueue(component_id, TRACES, config, context.metrics)
        self._logs = DeliveryQueue(component_id, LOGS, config, context.metrics)
        storage_id = config.sending_queue.storage
        self._storage: Storage | None = (
            context.extension(storage_id, Storage, f"exporter {component_id}: sending_queue.storage")
            if storage_id is not None
            else None
        )

    def retry_after(self, span_count: int) -> float | None:
        return self._spans.retry_after(span_count)

    def export(self, batch: Batch) -> None:
        if batch.span_count:
            self._spans.put(batch.request.SerializeToString(), batch.span_count)

    def export_logs(self, request: ExportLogsServiceRequest, count: int) -> None:
        self._logs.put(request.SerializeToString(), count)

    async def flushed(self) -> bool:
        return self._storage is None or (await self._spans.flushed() and await self._logs.flushed())

    async def start(self) -> None:
        # Created here, inside the running event loop, which grpc.aio channels bind to.
        self._sender = GrpcSender(self._config) if self._config.protocol == "grpc" else HttpSender(self._config)
        self._spans.start(self._sender, self._storage)
        self._logs.start(self._sender, self._storage)

    async def shutdown(self, timeout: float) -> None:
        await asyncio.gather(self._spans.shutdown(timeout), self._logs.shutdown(timeout))
        if self._sender is not None:
            await self._sender.close()


def _create(component_id: str, config: OtlpExporterConfig, context: Context) -> OtlpExporter:
    return OtlpExporter(component_id, config, context)


FACTORY = Factory(type="otlp", kind="exporter", config_type=OtlpExporterConfig, create=_create)
