"""Prometheus exporter: per-call LLM and tool metrics. The admin port's /metrics serves them with every
other family (see `exposition`)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from .. import catalogue
from ..components import Context, Factory
from ..metrics import CALL_DURATION_BUCKETS, Registry
from ..model import LLM, TOOL, Batch, Call, call_of

UNKNOWN_LABEL = "unknown"

# The token_type label of each of Call.tokens, in order.
TOKEN_TYPES = catalogue.enum("token_type")


class PrometheusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrometheusExporter:
    def __init__(self, registry: Registry) -> None:
        self._llm_calls = registry.metric("agentopz_llm_calls_total")
        self._llm_tokens = registry.metric("agentopz_llm_tokens_total")
        self._llm_cost = registry.metric("agentopz_llm_cost_usd_total")
        self._llm_duration = registry.metric("agentopz_llm_call_duration_seconds", CALL_DURATION_BUCKETS)
        self._tool_calls = registry.metric("agentopz_tool_calls_total")
        self._tool_duration = registry.metric("agentopz_tool_call_duration_seconds", CALL_DURATION_BUCKETS)

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
