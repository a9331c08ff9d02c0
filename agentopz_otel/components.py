"""The component model: typed config plus a factory per component type, as in the OTel Collector.

A component id in the YAML is `type` or `type/name` (`otlp`, `otlp/tempo`). The built-in factories
are listed in `registry` and handed to `factories()` by whoever loads a config; third parties add
their own through the entry point groups below. This module imports no component.

Receivers, processors and exporters form the span pipelines. Extensions are the control plane
(storage, rollouts, the console): they are started before the pipelines and stopped after them, and
reach pipeline data only through the narrow interfaces on `Context` (the finished-runs feed).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from pydantic import BaseModel

from .metrics import Registry
from .records import InFlightRuns, RunFeed
from .spans import Batch, Call

if TYPE_CHECKING:
    from aiohttp import web

ComponentKind = Literal["receiver", "processor", "exporter", "extension"]
ENTRY_POINT_GROUPS: dict[ComponentKind, str] = {
    "receiver": "agentopz_otel.receivers",
    "processor": "agentopz_otel.processors",
    "exporter": "agentopz_otel.exporters",
    "extension": "agentopz_otel.extensions",
}


class Consumer(Protocol):
    """What a receiver hands accepted data to (the service's fan-out over its pipelines)."""

    def retry_after(self, span_count: int) -> float | None: ...

    def consume(self, batch: Batch) -> None: ...

    def consume_logs(self, request: ExportLogsServiceRequest) -> None: ...

    async def flushed(self) -> bool:
        """Wait until what was consumed is stored where it must survive a crash (persistent queues);
        False if storing failed. The receiver acknowledges a request only after this."""
        ...


class Processor(Protocol):
    def process(self, batch: Batch) -> None: ...


class Exporter(Protocol):
    def retry_after(self, span_count: int) -> float | None:
        """Seconds the sender should wait if this exporter cannot take `span_count` more spans now."""
        ...

    def export(self, batch: Batch) -> None: ...


@runtime_checkable
class Lifecycle(Protocol):
    """Started before data flows and shut down within a time budget: extensions always; processors
    and exporters that keep state or connections optionally."""

    async def start(self) -> None: ...

    async def shutdown(self, timeout: float) -> None: ...


class Extension(Lifecycle, Protocol):
    pass


# Optional methods of pipeline components. The service resolves them once, when it builds a
# pipeline, so the data path never asks a component what it can do.


@runtime_checkable
class EmitsLater(Protocol):
    """A processor that sends data on after `process` returned (finished runs, calls whose run's agent
    was not known yet): it is handed the rest of its pipeline."""

    def connect(
        self,
        emit_spans: Callable[[Batch], None],
        emit_logs: Callable[[ExportLogsServiceRequest, int], None] | None,
        emit_calls: Callable[[list[Call], str | None], None],
    ) -> None: ...


@runtime_checkable
class LogsProcessor(Protocol):
    """A processor that reads received log records (evaluation results, content events)."""

    def process_logs(self, request: ExportLogsServiceRequest) -> None: ...


@runtime_checkable
class LogsExporter(Protocol):
    """An exporter that forwards log records (the run log)."""

    def export_logs(self, request: ExportLogsServiceRequest, count: int) -> None: ...


@runtime_checkable
class CallsExporter(Protocol):
    """An exporter that counts calls whose metrics waited for the agent of their run (None: each call's own)."""

    def export_calls(self, calls: list[Call], agent: str | None) -> None: ...


@runtime_checkable
class Flushing(Protocol):
    """An exporter whose accepted data must be stored before the receiver acknowledges it."""

    async def flushed(self) -> bool: ...


@runtime_checkable
class Storage(Protocol):
    """What a storage extension offers pipeline components, which never import extensions."""

    def connect(self, client: str) -> sqlite3.Connection: ...


@dataclass
class Context:
    """Shared services a component may use."""

    metrics: Registry
    admin_routes: list[tuple[str, str, Callable[[web.Request], Any]]] = field(default_factory=list)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("agentopz_otel"))
    # Extensions by id, created before any pipeline component, so a component can look one up
    # (an exporter's persistent queue asks for its storage extension).
    extensions: dict[str, Any] = field(default_factory=dict)
    finished_runs: RunFeed = field(default_factory=RunFeed)
    # Read-only views of the runs in progress, one per runs processor, keyed (service, agent);
    # call on the event loop.
    in_flight: list[Callable[[], dict[tuple[str, str], InFlightRuns]]] = field(default_factory=list)
    # Characters of each run's input kept in RunRecord.input_start: 0 keeps none. Raised by an
    # extension that displays content (the console with show_content), before pipelines are built.
    run_input_chars: int = 0

    def extension(self, extension_id: str, kind: type[Any], asked_by: str) -> Any:
        """The extension `extension_id`, checked to be a `kind`; a clear error otherwise."""
        found = self.extensions.get(extension_id)
        if found is None:
            known = ", ".join(sorted(self.extensions)) or "none"
            raise ValueError(
                f"{asked_by}: extension {extension_id!r} is not configured in service.extensions (configured: {known})"
            )
        if not isinstance(found, kind):
            raise ValueError(f"{asked_by}: extension {extension_id!r} is not a {kind.__name__}")
        return found


@dataclass(frozen=True)
class Factory:
    type: str
    kind: ComponentKind
    config_type: type[BaseModel]
    create: Callable[[str, Any, Context], Any]
    # Processor types that must come earlier in the same pipeline.
    requires: tuple[str, ...] = ()


def factories(builtins: Sequence[Factory]) -> dict[tuple[ComponentKind, str], Factory]:
    """Every known factory: `builtins` first, then entry points, which cannot replace a built-in type."""
    found = {(f.kind, f.type): f for f in builtins}
    for kind, group in ENTRY_POINT_GROUPS.items():
        for entry in entry_points(group=group):
            factory = entry.load()
            if not isinstance(factory, Factory) or factory.kind != kind:
                raise TypeError(f"entry point {entry.name!r} in {group} is not a {kind} Factory")
            found.setdefault((kind, factory.type), factory)
    return found


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]
