"""The component model: typed config plus a factory per component type, as in the OTel Collector.

A component id in the YAML is `type` or `type/name` (`otlp`, `otlp/tempo`). Built-in factories are
listed here; third parties add their own through the entry point groups below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from pydantic import BaseModel

from .metrics import Registry
from .model import Batch

if TYPE_CHECKING:
    from aiohttp import web

ComponentKind = Literal["receiver", "processor", "exporter"]
ENTRY_POINT_GROUPS: dict[ComponentKind, str] = {
    "receiver": "agentopz_otel.receivers",
    "processor": "agentopz_otel.processors",
    "exporter": "agentopz_otel.exporters",
}


class Consumer(Protocol):
    """What a receiver hands accepted data to (the service's fan-out over its pipelines)."""

    def retry_after(self, span_count: int) -> float | None: ...

    def consume(self, batch: Batch) -> None: ...

    def consume_logs(self, request: ExportLogsServiceRequest) -> None: ...


class Processor(Protocol):
    def process(self, batch: Batch) -> None: ...


class Exporter(Protocol):
    def retry_after(self, span_count: int) -> float | None:
        """Seconds the sender should wait if this exporter cannot take `span_count` more spans now."""
        ...

    def export(self, batch: Batch) -> None: ...


@dataclass
class Context:
    """Shared services a component may use."""

    metrics: Registry
    admin_routes: list[tuple[str, str, Callable[[web.Request], Any]]] = field(default_factory=list)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("agentopz_otel"))


@dataclass(frozen=True)
class Factory:
    type: str
    kind: ComponentKind
    config_type: type[BaseModel]
    create: Callable[[str, Any, Context], Any]
    # Processor types that must come earlier in the same pipeline.
    requires: tuple[str, ...] = ()


def _builtin_factories() -> list[Factory]:
    from .cost import FACTORY as cost
    from .exporters.otlp import FACTORY as otlp_exporter
    from .exporters.prometheus import FACTORY as prometheus
    from .normalize import FACTORY as normalize
    from .prompt_version import FACTORY as prompt_version
    from .receiver import FACTORY as otlp_receiver
    from .runs import FACTORY as runs

    return [otlp_receiver, normalize, cost, prompt_version, runs, prometheus, otlp_exporter]


def factories() -> dict[tuple[ComponentKind, str], Factory]:
    """Every known factory, built-ins first; an entry point cannot replace a built-in type."""
    found = {(f.kind, f.type): f for f in _builtin_factories()}
    for kind, group in ENTRY_POINT_GROUPS.items():
        for entry in entry_points(group=group):
            factory = entry.load()
            if not isinstance(factory, Factory) or factory.kind != kind:
                raise TypeError(f"entry point {entry.name!r} in {group} is not a {kind} Factory")
            found.setdefault((kind, factory.type), factory)
    return found


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]
