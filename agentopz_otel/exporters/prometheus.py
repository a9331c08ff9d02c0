"""Prometheus exporter: per-call LLM and tool metrics. The admin port's /metrics serves them with every
other family (see `exposition`)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from ..components import Context, Factory
from ..metrics import CALL_DURATION_BUCKETS, Registry
from ..model import LLM, TOOL, Batch, Call, call_of

UNKNOWN_LABEL = "unknown"

# The token_type label of each of Call.tokens, in order.
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")


class PrometheusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


def _create(component_id: str, config: PrometheusConfig, context: Context) -> PrometheusExporter:
    return PrometheusExporter(context.metrics)


FACTORY = Factory(type="prometheus", kind="exporter", config_type=PrometheusConfig, create=_create)
