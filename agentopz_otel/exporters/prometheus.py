"""Prometheus exporter: per-call LLM and tool metrics; /metrics exposition of every metric family.

Exposition is text or OpenMetrics by content negotiation (OpenMetrics carries the exemplars).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Exemplar
from pydantic import BaseModel, ConfigDict

from ..components import Context, Factory
from ..metrics import CALL_DURATION_BUCKETS, Counter, Gauge, Histogram, Registry
from ..model import LLM, TOOL, Batch, Call, call_of

UNKNOWN_LABEL = "unknown"

# The token_type label of each of Call.tokens, in order.
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")


class PrometheusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegistryCollector:
    """Adapts our lock-free families to prometheus_client's exposition."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for refresh in self._registry.before_collect:
            refresh()
        for family in self._registry.families:
            if family.kind is Counter:
                metric = CounterMetricFamily(family.name, family.documentation, labels=family.labelnames)
                for labels, series in family.items():
                    metric.add_metric(labels, series.value)
            elif family.kind is Gauge:
                metric = GaugeMetricFamily(family.name, family.documentation, labels=family.labelnames)
                for labels, series in family.items():
                    metric.add_metric(labels, series.value)
            else:
                metric = HistogramMetricFamily(family.name, family.documentation, labels=family.labelnames)
                for labels, series in family.items():
                    metric.add_metric(labels, _buckets(series), series.sum)
            yield metric


def _buckets(histogram: Histogram) -> list:
    buckets = []
    cumulative = 0
    bounds = (*histogram.bounds, float("inf"))
    for index, bound in enumerate(bounds):
        cumulative += histogram.counts[index]
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        exemplar = histogram.exemplars[index] if histogram.exemplars else None
        if exemplar is None:
            buckets.append((le, cumulative))
        else:
            trace_id, value = exemplar
            buckets.append((le, cumulative, Exemplar({"trace_id": trace_id}, value)))
    return buckets


class PrometheusExporter:
    def __init__(self, registry: Registry) -> None:
        labels = ("service", "agent", "provider", "model")
        self._llm_calls = registry.counter(
            "agentopz_llm_calls_total", "LLM calls by outcome status.", (*labels, "status")
        )
        self._llm_tokens = registry.counter(
            "agentopz_llm_tokens_total",
            "LLM tokens by type; input includes cache_read and cache_write, output includes reasoning.",
            (*labels, "token_type"),
        )
        self._llm_cost = registry.counter(
            "agentopz_llm_cost_usd_total", "Cost of priced LLM calls in USD (unpriced calls excluded).", labels
        )
        self._llm_duration = registry.histogram(
            "agentopz_llm_call_duration_seconds", "LLM call duration.", labels, CALL_DURATION_BUCKETS
        )
        tool_labels = ("service", "agent", "tool")
        self._tool_calls = registry.counter(
            "agentopz_tool_calls_total", "Tool calls by status.", (*tool_labels, "status")
        )
        self._tool_duration = registry.histogram(
            "agentopz_tool_call_duration_seconds", "Tool call duration.", tool_labels, CALL_DURATION_BUCKETS
        )

    def retry_after(self, span_count: int) -> float | None:
        return None

    def export(self, batch: Batch) -> None:
        for view in batch.views:
            if (view.kind == LLM or view.kind == TOOL) and not view.skip_call_metrics:
                self._record(call_of(view), view.agent or view.service)

    def export_calls(self, calls: Iterable[Call], agent: str | None) -> None:
        """Calls whose metrics waited for the agent of their run (None: outside any run, each call's own)."""
        for call in calls:
            self._record(call, agent or call.agent or call.service)

    def _record(self, call: Call, agent: str) -> None:
        if call.kind == LLM:
            labels = (call.service, agent, call.provider or UNKNOWN_LABEL, call.name or UNKNOWN_LABEL)
            self._llm_calls.series((*labels, call.status)).value += 1
            for token_type, count in zip(TOKEN_TYPES, call.tokens, strict=True):
                if count is not None:
                    self._llm_tokens.series((*labels, token_type)).value += count
            if call.cost is not None:
                self._llm_cost.series(labels).value += call.cost
            if call.duration is not None:
                self._llm_duration.series(labels).observe(call.duration)
        else:
            labels = (call.service, agent, call.name or UNKNOWN_LABEL)
            self._tool_calls.series((*labels, call.status)).value += 1
            if call.duration is not None:
                self._tool_duration.series(labels).observe(call.duration)


def metrics_handler(registry: Registry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The admin port's /metrics: every family of `registry`, text or OpenMetrics as the scraper asks."""
    exposition = CollectorRegistry(auto_describe=False)
    exposition.register(RegistryCollector(registry))

    async def handle(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(exposition), headers={"Content-Type": content_type})

    return handle


def _create(component_id: str, config: PrometheusConfig, context: Context) -> PrometheusExporter:
    return PrometheusExporter(context.metrics)


FACTORY = Factory(type="prometheus", kind="exporter", config_type=PrometheusConfig, create=_create)
