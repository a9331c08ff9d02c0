"""Prometheus exporter: per-call LLM and tool metrics; /metrics exposition of every metric family.

Exposition is text or OpenMetrics by content negotiation (OpenMetrics carries the exemplars), built
off the event loop from a snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Exemplar
from pydantic import BaseModel, ConfigDict

from ..components import Context, Factory
from ..metrics import CALL_DURATION_BUCKETS, Counter, FamilySnapshot, Histogram, Registry
from ..model import LLM, TOOL, Batch, Call, call_of

UNKNOWN_LABEL = "unknown"

# The token_type label of each of Call.tokens, in order.
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")


class PrometheusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SnapshotCollector:
    """Adapts a snapshot of our lock-free families to prometheus_client's exposition."""

    def __init__(self, snapshot: list[FamilySnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        for family in self._snapshot:
            if family.kind is Histogram:
                metric = HistogramMetricFamily(family.name, family.documentation, labels=family.labelnames)
                for labels, (counts, total, exemplars) in family.series:
                    metric.add_metric(labels, _buckets(family.buckets, counts, exemplars), total)
            else:
                kind = CounterMetricFamily if family.kind is Counter else GaugeMetricFamily
                metric = kind(family.name, family.documentation, labels=family.labelnames)
                for labels, value in family.series:
                    metric.add_metric(labels, value)
            yield metric


def _buckets(bounds: tuple[float, ...], counts: tuple[int, ...], exemplars: tuple | None) -> list:
    buckets = []
    cumulative = 0
    for index, bound in enumerate((*bounds, float("inf"))):
        cumulative += counts[index]
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        exemplar = exemplars[index] if exemplars else None
        if exemplar is None:
            buckets.append((le, cumulative))
        else:
            trace_id, value = exemplar
            buckets.append((le, cumulative, Exemplar({"trace_id": trace_id}, value)))
    return buckets


class PrometheusExporter:
    # Reads only the views: with no other exporter, processors need not write onto the spans.
    reads_spans = False

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
    """The admin port's /metrics: every family of `registry`, text or OpenMetrics as the scraper asks.

    The values are copied on the event loop, which is quick, and formatted in a worker thread, which
    is not: intake keeps running while a large exposition is built. Scrapes that arrive while one is
    being built share its result, so scraping in a loop costs at most one build at a time per format.
    """
    building: dict[str, asyncio.Future[bytes]] = {}

    async def build(encoder: Callable[[SnapshotCollector], bytes]) -> bytes:
        await registry.refresh()
        collector = SnapshotCollector(registry.snapshot())
        return await asyncio.get_running_loop().run_in_executor(None, encoder, collector)

    async def handle(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        pending = building.get(content_type)
        if pending is None:
            pending = building[content_type] = asyncio.ensure_future(build(encoder))
            pending.add_done_callback(lambda _: building.pop(content_type, None))
        # Shielded: a scraper that hangs up does not cancel the build the others wait for.
        body = await asyncio.shield(pending)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle


def _create(component_id: str, config: PrometheusConfig, context: Context) -> PrometheusExporter:
    return PrometheusExporter(context.metrics)


FACTORY = Factory(type="prometheus", kind="exporter", config_type=PrometheusConfig, create=_create)
