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
from ..metrics import CALL_DURATION_BUCKETS, Counter, Family, FamilySnapshot, Histogram, Registry
from ..model import LLM, TOOL, Batch, Call, tokens_of

UNKNOWN_LABEL = "unknown"

# The token_type label of each of Call.tokens, in order.
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")


# After a build of the exposition this long or longer, the next waits BUILD_PAUSE_FACTOR times as long.
SLOW_BUILD_SECONDS = 0.1
BUILD_PAUSE_FACTOR = 4


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
        # The series of each label combination seen, so a call costs one lookup, not one per series.
        self._llm: dict[tuple[str, ...], CallSeries] = {}
        self._tools: dict[tuple[str, ...], CallSeries] = {}

    def retry_after(self, span_count: int) -> float | None:
        return None

    def export(self, batch: Batch) -> None:
        for view in batch.views:
            kind = view.kind
            if kind in (LLM, TOOL) and not view.skip_call_metrics:
                agent = view.agent or view.service
                if kind == LLM:
                    tokens = tokens_of(view)
                    self._record_llm(
                        view.service, agent, view.provider, view.model, view.status, tokens, view.cost, view.duration
                    )
                else:
                    self._record_tool(view.service, agent, view.tool or "", view.status, view.duration)

    def export_calls(self, calls: Iterable[Call], agent: str | None) -> None:
        """Calls whose metrics waited for the agent of their run (None: outside any run, each call's own)."""
        for call in calls:
            if call.kind == LLM:
                self._record_llm(
                    call.service,
                    agent or call.agent or call.service,
                    call.provider,
                    call.name,
                    call.status,
                    call.tokens,
                    call.cost,
                    call.duration,
                )
            else:
                self._record_tool(
                    call.service, agent or call.agent or call.service, call.name, call.status, call.duration
                )

    def _series(self, bundles: dict[tuple[str, ...], CallSeries], labels: tuple[str, ...]) -> CallSeries:
        bundle = bundles.get(labels)
        if bundle is None:
            if len(bundles) >= MAX_CACHED_LABELS:
                bundles.clear()
            bundle = bundles[labels] = CallSeries()
        return bundle

    def _record_llm(
        self,
        service: str,
        agent: str,
        provider: str,
        model: str,
        status: str,
        tokens: tuple[int | None, ...],
        cost: float | None,
        duration: float | None,
    ) -> None:
        labels = (service, agent, provider or UNKNOWN_LABEL, model or UNKNOWN_LABEL)
        bundle = self._series(self._llm, labels)
        calls = bundle.calls.get(status)
        if calls is None:
            calls = bundle.keep_call(self._llm_calls, (*labels, status), status)
        calls.value += 1
        for index, count in enumerate(tokens):
            if count is not None:
                series = bundle.tokens[index]
                if series is None:
                    series = bundle.keep_tokens(self._llm_tokens, (*labels, TOKEN_TYPES[index]), index)
                series.value += count
        if cost is not None:
            series = bundle.cost
            if series is None:
                series = bundle.keep(self._llm_cost, labels, "cost")
            series.value += cost
        if duration is not None:
            histogram = bundle.duration
            if histogram is None:
                histogram = bundle.keep(self._llm_duration, labels, "duration")
            histogram.observe(duration)

    def _record_tool(self, service: str, agent: str, tool: str, status: str, duration: float | None) -> None:
        labels = (service, agent, tool or UNKNOWN_LABEL)
        bundle = self._series(self._tools, labels)
        calls = bundle.calls.get(status)
        if calls is None:
            calls = bundle.keep_call(self._tool_calls, (*labels, status), status)
        calls.value += 1
        if duration is not None:
            histogram = bundle.duration
            if histogram is None:
                histogram = bundle.keep(self._tool_duration, labels, "duration")
            histogram.observe(duration)


# Label combinations whose series an exporter keeps at hand; past it, it starts over.
MAX_CACHED_LABELS = 10_000


class CallSeries:
    """The series one call's labels record into, looked up once per label combination rather than per
    call. A series is kept only when its labels passed every cap unchanged: one that went to `other` is
    looked up (and its overflow counted) every time, as before."""

    __slots__ = ("calls", "cost", "duration", "tokens")

    def __init__(self) -> None:
        self.calls: dict[str, Counter] = {}
        self.tokens: list[Counter | None] = [None] * len(TOKEN_TYPES)
        self.cost: Counter | None = None
        self.duration: Histogram | None = None

    def keep_call(self, family: Family[Counter], labels: tuple[str, ...], status: str) -> Counter:
        series = family.series(labels)
        if family.cached(labels) is series:
            self.calls[status] = series
        return series

    def keep_tokens(self, family: Family[Counter], labels: tuple[str, ...], index: int) -> Counter:
        series = family.series(labels)
        if family.cached(labels) is series:
            self.tokens[index] = series
        return series

    def keep(self, family: Family, labels: tuple[str, ...], slot: str):
        """`family`'s series for `labels`, kept as `slot` (cost or duration) when the caps left them as they are."""
        series = family.series(labels)
        if family.cached(labels) is series:
            setattr(self, slot, series)
        return series


def next_build_at(began: float, ended: float, slow_build_seconds: float, pause_factor: float) -> float:
    """When the next exposition may be built: at once after a quick build; after one that took
    `slow_build_seconds` or more, once `pause_factor` times its duration has passed."""
    took = ended - began
    return ended + pause_factor * took if took >= slow_build_seconds else ended


def metrics_handler(
    registry: Registry, slow_build_seconds: float = SLOW_BUILD_SECONDS, pause_factor: float = BUILD_PAUSE_FACTOR
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The admin port's /metrics: every family of `registry`, text or OpenMetrics as the scraper asks.

    The values are copied on the event loop, which is quick, and formatted in a worker thread, which
    is not: intake keeps running while a large exposition is built. Scrapes that arrive while one is
    being built share its result, so scraping in a loop costs at most one build at a time per format.
    The worker thread and the sending of a large body still take turns with intake for the
    interpreter, so the next build waits (`next_build_at`): a scraper looping back to back gets a fresh
    body at most every (1 + `pause_factor`) build times, and takes at most a fifth of the CPU.
    """
    building: dict[str, asyncio.Future[bytes]] = {}
    # Per format: when the next build may start (loop time).
    ready_at: dict[str, float] = {}

    async def build(encoder: Callable[[SnapshotCollector], bytes], content_type: str) -> bytes:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await registry.refresh()
        collector = SnapshotCollector(registry.snapshot())
        body = await loop.run_in_executor(None, encoder, collector)
        ready_at[content_type] = next_build_at(began, loop.time(), slow_build_seconds, pause_factor)
        return body

    async def handle(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        wait = ready_at.get(content_type, 0.0) - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        pending = building.get(content_type)
        if pending is None:
            pending = building[content_type] = asyncio.ensure_future(build(encoder, content_type))
            pending.add_done_callback(lambda _: building.pop(content_type, None))
        # Shielded: a scraper that hangs up does not cancel the build the others wait for.
        body = await asyncio.shield(pending)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle


def _create(component_id: str, config: PrometheusConfig, context: Context) -> PrometheusExporter:
    return PrometheusExporter(context.metrics)


FACTORY = Factory(type="prometheus", kind="exporter", config_type=PrometheusConfig, create=_create)
