"""Prometheus exporter: per-call LLM and tool metrics. The admin port's /metrics serves them with every
other family (see `exposition`)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from .. import catalogue
from ..components import Context, Factory
from ..metrics import CALL_DURATION_BUCKETS, Counter, Family, Histogram, Registry
from ..spans import LLM, TOOL, Batch, Call, tokens_of

UNKNOWN_LABEL = "unknown"

# The token_type label of each of Call.tokens, in order.
TOKEN_TYPES = catalogue.enum("token_type")


class PrometheusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrometheusExporter:
    # Reads only the views: with no other exporter, processors need not write onto the spans.
    reads_spans = False

    def __init__(self, registry: Registry) -> None:
        self._llm_calls = registry.metric("agentopz_llm_calls_total")
        self._llm_tokens = registry.metric("agentopz_llm_tokens_total")
        self._llm_cost = registry.metric("agentopz_llm_cost_usd_total")
        self._llm_duration = registry.metric("agentopz_llm_call_duration_seconds", CALL_DURATION_BUCKETS)
        self._tool_calls = registry.metric("agentopz_tool_calls_total")
        self._tool_duration = registry.metric("agentopz_tool_call_duration_seconds", CALL_DURATION_BUCKETS)
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


def _create(component_id: str, config: PrometheusConfig, context: Context) -> PrometheusExporter:
    return PrometheusExporter(context.metrics)


FACTORY = Factory(type="prometheus", kind="exporter", config_type=PrometheusConfig, create=_create)
