"""The core: builds components from config, wires pipelines, serves the admin port, runs until stopped."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .admin_auth import ADMIN_AUTH, AdminAuth, admin_guard
from .compiled import compiled_modules
from .components import CallsExporter, Context, EmitsLater, Flushing, Lifecycle, LogsExporter, LogsProcessor
from .config import ComponentConfig, Config
from .exposition import metrics_handler
from .garbage import GarbageCollection
from .httpserver import ConnectionGuard, serve
from .loop_lag import EventLoopLag
from .metrics import Registry
from .spans import Batch, Call

log = logging.getLogger("agentopz_otel")


@dataclass
class Pipeline:
    name: str
    processors: list[Any]
    exporters: list[Any]

    def __post_init__(self) -> None:
        self._flushing = [e for e in self.exporters if isinstance(e, Flushing)]
        self._logs_processors = [p for p in self.processors if isinstance(p, LogsProcessor)]
        self._logs_exporters = [e for e in self.exporters if isinstance(e, LogsExporter)]
        self._calls_exporters = [e for e in self.exporters if isinstance(e, CallsExporter)]
        # An exporter that only reads the views (Prometheus) says so with `reads_spans = False`. When no
        # exporter of the pipeline reads the spans themselves, processors that write onto spans
        # (`enrich_spans`) skip that work: nobody would see it. Any other exporter reads them.
        reads_spans = any(getattr(exporter, "reads_spans", True) for exporter in self.exporters)
        takes_logs = bool(self._logs_exporters)
        # Processors that emit data later (finished runs, calls whose agent was not known) send it on
        # through the rest of the pipeline; log records only when an exporter takes them.
        for index, processor in enumerate(self.processors):
            if hasattr(processor, "enrich_spans"):
                processor.enrich_spans = reads_spans
            if isinstance(processor, EmitsLater):
                processor.connect(
                    functools.partial(self.consume, start=index + 1),
                    self.export_logs if takes_logs else None,
                    self.export_calls,
                )

    def retry_after(self, span_count: int) -> float | None:
        delays = [d for e in self.exporters if (d := e.retry_after(span_count)) is not None]
        return max(delays) if delays else None

    def consume(self, batch: Batch, start: int = 0) -> None:
        for processor in self.processors[start:]:
            processor.process(batch)
        for exporter in self.exporters:
            exporter.export(batch)

    async def flushed(self) -> bool:
        for exporter in self._flushing:
            if not await exporter.flushed():
                return False
        return True

    def consume_logs(self, request: ExportLogsServiceRequest) -> None:
        """Received log records feed processors that read them (evaluation results); none are forwarded."""
        for processor in self._logs_processors:
            processor.process_logs(request)

    def export_logs(self, request: ExportLogsServiceRequest, count: int) -> None:
        for exporter in self._logs_exporters:
            exporter.export_logs(request, count)

    def export_calls(self, calls: list[Call], agent: str | None) -> None:
        for exporter in self._calls_exporters:
            exporter.export_calls(calls, agent)


@dataclass
class FanOut:
    """What a receiver feeds: every pipeline that lists it, each with its own copy of the data."""

    pipelines: list[Pipeline] = field(default_factory=list)

    def retry_after(self, span_count: int) -> float | None:
        delays = [d for p in self.pipelines if (d := p.retry_after(span_count)) is not None]
        return max(delays) if delays else None

    def consume(self, batch: Batch) -> None:
        for pipeline in self.pipelines[1:]:
            request = ExportTraceServiceRequest()
            request.CopyFrom(batch.request)
            pipeline.consume(Batch(request, batch.span_count, batch.wire))
        self.pipelines[0].consume(batch)

    def consume_logs(self, request: ExportLogsServiceRequest) -> None:
        for pipeline in self.pipelines:
            pipeline.consume_logs(request)

    async def flushed(self) -> bool:
        for pipeline in self.pipelines:
            if not await pipeline.flushed():
                return False
        return True


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Registry(config.service.cardinality)
        self.context = Context(metrics=self.metrics)
        self.admin_auth = AdminAuth.from_config(config.service.admin.auth, self.metrics)
        # Extensions first: pipeline components may look them up while they are created.
        for extension_id in config.service.extensions:
            self.context.extensions[extension_id] = self._create(config.extensions[extension_id])
        self.receivers = {cid: self._create(c) for cid, c in config.receivers.items()}
        self.exporters = {cid: self._create(c) for cid, c in config.exporters.items()}
        self.fanouts = {cid: FanOut() for cid in self.receivers}
        self.pipelines: list[Pipeline] = []
        for name, spec in config.service.pipelines.items():
            # Processors keep state (open runs), so each pipeline gets its own instances.
            pipeline = Pipeline(
                name,
                [self._create(config.processors[pid]) for pid in spec.processors],
                [self.exporters[eid] for eid in spec.exporters],
            )
            self.pipelines.append(pipeline)
            for rid in spec.receivers:
                self.fanouts[rid].pipelines.append(pipeline)
        self._admin: web.AppRunner | None = None
        self._ready = False
        self._stopped = asyncio.Event()
        self._garbage = GarbageCollection()
        self._loop_lag = EventLoopLag(self.metrics)

    def _create(self, component: ComponentConfig) -> Any:
        return component.factory.create(component.id, component.config, self.context)

    def _stateful(self, kind: str) -> list[Lifecycle]:
        """The processors or exporters that have a start/shutdown lifecycle, each once."""
        seen: list[Lifecycle] = []
        for pipeline in self.pipelines:
            for component in getattr(pipeline, kind):
                if isinstance(component, Lifecycle) and all(component is not s for s in seen):
                    seen.append(component)
        return seen

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready:
            return web.Response(text="ready\n")
        return web.Response(text="not ready\n", status=503)

    async def _start_admin(self) -> None:
        # One guard in front of every route (Host, cross-site, JSON-only state changes): admin_auth.py.
        app = web.Application(middlewares=[admin_guard(self.config.service.admin.allowed_hosts)])
        app[ADMIN_AUTH] = self.admin_auth
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", metrics_handler(self.metrics))
        routes = set()
        for method, path, handler in self.context.admin_routes:
            if (method, path) in routes:
                raise ValueError(f"two components serve {method} {path} on the admin port; configure only one")
            routes.add((method, path))
            app.router.add_route(method, path, handler)
        guard = ConnectionGuard("admin", self.config.service.admin, self.metrics, retry_after_seconds=5)
        self._admin, _ = await serve(app, guard, "admin server: cannot listen")

    async def start(self) -> None:
        for extension in self.context.extensions.values():
            await extension.start()
        await self._start_admin()
        for component in (*self._stateful("processors"), *self._stateful("exporters")):
            await component.start()
        for rid, receiver in self.receivers.items():
            await receiver.start(self.fanouts[rid])
        self._garbage.start()
        self._loop_lag.start()
        self._ready = True
        compiled = compiled_modules()
        log.info(
            "agentopz-otel ready: admin on %s, pipelines %s, %s",
            self.config.service.admin.endpoint,
            ", ".join(p.name for p in self.pipelines),
            f"{len(compiled)} hot modules compiled" if compiled else "pure Python",
        )

    async def shutdown(self) -> None:
        """Stop taking data, then let every stateful component flush within the shutdown timeout."""
        self._ready = False
        deadline = time.monotonic() + self.config.service.shutdown_timeout_seconds
        for receiver in self.receivers.values():
            await receiver.shutdown()
        # Processors flush into exporters, so they stop first; exporters then share what is left of
        # the budget, delivering at the same time.
        for processor in self._stateful("processors"):
            await processor.shutdown(max(0.0, deadline - time.monotonic()))
        remaining = max(0.0, deadline - time.monotonic())
        await asyncio.gather(*(exporter.shutdown(remaining) for exporter in self._stateful("exporters")))
        timeout = self.config.service.shutdown_timeout_seconds
        if self._admin is not None:
            await self._admin.cleanup()
        for extension in reversed(self.context.extensions.values()):
            await extension.shutdown(timeout)
        await self._garbage.stop()
        await self._loop_lag.stop()
        self._stopped.set()

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, then shut down cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.shutdown()
