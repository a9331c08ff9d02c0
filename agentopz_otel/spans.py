"""The data that flows through a pipeline: the OTLP request plus one canonical view per span."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from . import catalogue
from .records import Evaluation

LLM = "llm"
TOOL = "tool"
AGENT = "agent"
EVALUATOR = "evaluator"  # an evaluator's span (OpenInference EVALUATOR): carries a verdict on another span
OTHER = "other"

# Call status values for agentopz_llm_calls_total / agentopz_tool_calls_total{status}, as the catalogue
# declares them (a tool call is ok or error).
STATUS_OK, STATUS_RATE_LIMITED, STATUS_TIMEOUT, STATUS_SERVER_ERROR, STATUS_CLIENT_ERROR, STATUS_ERROR = catalogue.enum(
    "llm_call_status"
)
UPSTREAM_ERROR_STATUSES = frozenset({STATUS_RATE_LIMITED, STATUS_TIMEOUT, STATUS_SERVER_ERROR})


class SpanView:
    """Everything the pipeline needs from one span, read once by normalize.

    Token counts follow the GenAI semantic conventions: `input_tokens` includes cache reads and
    writes, `output_tokens` includes reasoning. `None` means the span did not say.
    """

    __slots__ = (
        "agent",
        "agent_is_span_name",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost",
        "cost_source",
        "duration",
        "end_time",
        "enriched",
        "evaluation_target",
        "evaluations",
        "finish_reason",
        "flag",
        "flag_version",
        "input",
        "input_tokens",
        "kind",
        "model",
        "output",
        "output_tokens",
        "parent_span_id",
        "prompt_version",
        "prompt_version_from",
        "provider",
        "reasoning_tokens",
        "reported_cost",
        "response_id",
        "service",
        "skip_call_metrics",
        "span",
        "span_id",
        "status",
        "system_source",
        "targeting_key",
        "tool",
        "trace_id",
        "version_attribute",
    )

    def __init__(
        self,
        span: Span,
        service: str,
        trace_id: bytes,
        span_id: bytes,
        parent_span_id: bytes,
        start_time: int,
        end_time: int,
    ) -> None:
        # The ids and times are the span's own, passed in: normalize may have read them from its bytes.
        self.span = span
        self.service = service
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.end_time = end_time
        elapsed = end_time - start_time
        self.duration: float | None = elapsed / 1e9 if elapsed >= 0 else None
        self.kind = OTHER
        self.status = STATUS_OK
        self.provider = ""
        self.model = ""
        self.agent: str | None = None
        # The agent name is the span's own name (no attribute named the agent): a wrapper's title, maybe.
        self.agent_is_span_name = False
        self.tool: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read_tokens: int | None = None
        self.cache_write_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.finish_reason: str | None = None
        self.reported_cost: float | None = None
        self.prompt_version: str | None = None
        # (flag key, variant) of an OpenFeature flag evaluation recorded on the span.
        self.flag: tuple[str, str] | None = None
        # The flag's variant when it is a prompt version (set by prompt_version, read by runs).
        self.flag_version: str | None = None
        # The flag evaluation's targeting key (the user or conversation the variant is sticky to).
        self.targeting_key: str | None = None
        self.prompt_version_from = 3  # prompt_version.FROM_*: nothing known yet
        # (format, raw) of the system instructions, for the prompt-version hash.
        self.system_source: tuple[str, str] | None = None
        # (format, raw) of the output content when captured; see quality.output_text.
        self.output: tuple[str, str] | None = None
        # (format, raw) of the input content (the user's request) when captured; see content.input_text.
        self.input: tuple[str, str] | None = None
        self.response_id: str | None = None
        self.evaluations: list[Evaluation] | None = None
        # (trace id, span id) an evaluator span's verdicts are about, when it links to another trace.
        self.evaluation_target: tuple[bytes, bytes] | None = None
        self.cost: float | None = None
        self.cost_source: str | None = None
        # The span already carries agentopz.cost.source / agentopz.prompt.version (never overwritten).
        self.enriched = False
        self.version_attribute = False
        # Exporters do not count this call now: the runs processor passes it on once its run's agent
        # is known (see `Call`), or it is a span received twice.
        self.skip_call_metrics = False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Add an attribute to the forwarded span (callers never overwrite the user's own)."""
        add_attribute(self.span.attributes, key, value)


class Call(NamedTuple):
    """One LLM or tool call as the per-call metrics count it, kept (without the span) while the agent
    of its run is not known yet."""

    kind: str
    service: str
    agent: str | None  # the call's own agent attribute, if any
    provider: str
    name: str  # the model of an LLM call, the tool of a tool call
    status: str
    tokens: tuple[int | None, ...]  # input, output, cache_read, cache_write, reasoning
    cost: float | None
    duration: float | None


NO_TOKENS = (None, None, None, None, None)


def tokens_of(view: SpanView) -> tuple[int | None, ...]:
    """An LLM call's token counts in `Call.tokens` order."""
    return (
        view.input_tokens,
        view.output_tokens,
        view.cache_read_tokens,
        view.cache_write_tokens,
        view.reasoning_tokens,
    )


def call_of(view: SpanView) -> Call:
    """The call metrics' share of an LLM or tool span's view."""
    if view.kind == LLM:
        return Call(
            LLM,
            view.service,
            view.agent,
            view.provider,
            view.model,
            view.status,
            tokens_of(view),
            view.cost,
            view.duration,
        )
    return Call(TOOL, view.service, view.agent, "", view.tool or "", view.status, NO_TOKENS, None, view.duration)


AttributeValue = str | bool | int | float | Sequence[str]


def add_attribute(attributes, key: str, value: AttributeValue) -> None:
    """Append key=value to a repeated KeyValue field (add() then set: the fastest upb path)."""
    any_value = attributes.add(key=key).value
    if isinstance(value, str):
        any_value.string_value = value
    elif isinstance(value, bool):
        any_value.bool_value = value
    elif isinstance(value, int):
        any_value.int_value = value
    elif isinstance(value, float):
        any_value.double_value = value
    else:
        any_value.array_value.SetInParent()
        for item in value:
            any_value.array_value.values.add().string_value = item


@dataclass
class Batch:
    """One accepted export request on its way through a pipeline."""

    request: ExportTraceServiceRequest
    span_count: int
    # The protobuf bytes `request` was parsed from, when they still describe it (normalize reads the
    # attributes from them); None for OTLP/JSON, or once a span was taken out.
    wire: bytes | None = None
    views: list[SpanView] = field(default_factory=list)
