"""Normalize: read each span once into a SpanView, whatever instrumentation dialect produced it.

The dialects are data: `DIALECT_TABLE` lists, per canonical field, the attribute names that carry it
in priority order (newest convention first). A span is scanned once; for each field the
highest-priority attribute present wins, so duplicate and deprecated names are never added up.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from genai_prices import data_snapshot
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import BaseModel, ConfigDict

from ..bounded_log import BoundedLog
from ..components import Context, Factory
from ..content import MAX_CONTENT_DEPTH
from ..metrics import Counter, Family
from ..model import (
    AGENT,
    EVALUATOR,
    LLM,
    OTHER,
    STATUS_CLIENT_ERROR,
    STATUS_ERROR,
    STATUS_RATE_LIMITED,
    STATUS_SERVER_ERROR,
    STATUS_TIMEOUT,
    TOOL,
    Batch,
    SpanView,
)
from ..records import Evaluation

# A token count above this is treated as invalid input, not priced (a hostile or broken sender
# must not be able to put 2**63 tokens into a counter).
MAX_TOKENS = 10**10
MAX_REPORTED_COST_USD = 1e6
MAX_ANNOTATIONS = 8  # OpenInference annotations.{i}.annotation.* read per span
MAX_EXPLANATION_CHARS = 1024  # evaluations may wait for their run: keep them small
MAX_CONTENT_PARTS = 8  # OpenInference message_content parts read per message
EVALUATION_EVENT = "gen_ai.evaluation.result"
FLAG_EVALUATION_EVENT = "feature_flag.evaluation"  # OpenFeature's OpenTelemetry hook
FLAG_VARIANT_ATTRIBUTES = ("feature_flag.result.variant", "feature_flag.variant")  # newest first
FLAG_CONTEXT_ID_ATTRIBUTE = "feature_flag.context.id"  # the evaluation's targeting key
# A targeting key is an identifier: longer ones are cut, so a run record stays small.
MAX_TARGETING_KEY_CHARS = 128

log = logging.getLogger("agentopz_otel.normalize")

INVALID: Any = object()  # the attribute is there but its value is unusable (counted)
SKIP: Any = object()  # the attribute is there but says nothing about this field

Converter = Callable[[AnyValue], Any]


def _text(value: AnyValue) -> Any:
    text = value.string_value  # read first: the common case needs no WhichOneof
    if text:
        return text
    return SKIP if value.WhichOneof("value") in ("string_value", None) else INVALID


def _number(value: AnyValue) -> float | None:
    which = value.WhichOneof("value")
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "string_value":
        try:
            return float(value.string_value)
        except ValueError:
            return None
    return None


def _token_count(value: AnyValue) -> Any:
    number = value.int_value  # the common case: a positive int
    if 0 < number <= MAX_TOKENS:
        return number
    number = _number(value)
    if number is None or not math.isfinite(number) or number != int(number) or not 0 <= number <= MAX_TOKENS:
        return INVALID
    return int(number)


def _usd(value: AnyValue) -> Any:
    number = _number(value)
    if number is None or not math.isfinite(number) or not 0 <= number <= MAX_REPORTED_COST_USD:
        return INVALID
    return float(number)


def _score(value: AnyValue) -> Any:
    number = _number(value)
    return float(number) if number is not None and math.isfinite(number) else INVALID


def _integer(value: AnyValue) -> Any:
    number = value.int_value  # the common case, read without WhichOneof
    if number:
        return number
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else INVALID


def _first_text(value: AnyValue) -> Any:
    """A string, or the first string of an array (finish reasons come as either)."""
    text = value.string_value  # the common case, read without WhichOneof
    if text:
        return text
    which = value.WhichOneof("value")
    if which == "string_value":
        return SKIP  # an empty string
    if which == "array_value":
        for item in value.array_value.values:
            if item.string_value:
                return item.string_value
        return SKIP
    return INVALID


def _present(value: AnyValue) -> Any:
    return True


def _contains(needle: str) -> Converter:
    def convert(value: AnyValue) -> Any:
        return True if needle in value.string_value else SKIP

    return convert


def _one_of(mapping: Mapping[str, str]) -> Converter:
    def convert(value: AnyValue) -> Any:
        return mapping.get(value.string_value, SKIP)

    return convert


def _tagged(tag: str) -> Converter:
    def convert(value: AnyValue) -> Any:
        text = value.string_value  # the common case, without a call
        if text:
            return (tag, text)
        return _text(value)  # SKIP or INVALID

    return convert


# Span kinds by operation, per dialect.
_SEMCONV_OPERATIONS = {
    "chat": LLM,
    "generate_content": LLM,
    "text_completion": LLM,
    "embeddings": LLM,
    "execute_tool": TOOL,
    "invoke_agent": AGENT,
    "invoke_workflow": AGENT,
}
# An agent span whose own name is the agent's when no attribute names it (OpenInference).
_AGENT_NAMED_BY_SPAN = "agent named by its span"
_OPENINFERENCE_KINDS = {
    "LLM": LLM,
    "EMBEDDING": LLM,
    "TOOL": TOOL,
    "AGENT": _AGENT_NAMED_BY_SPAN,
    "EVALUATOR": EVALUATOR,
}
_TRACELOOP_KINDS = {"workflow": AGENT, "agent": AGENT, "tool": TOOL}
_TRACELOOP_REQUEST_TYPES = {"chat": LLM, "completion": LLM, "embedding": LLM}
_VERCEL_OPERATIONS = {
    "ai.generateText": AGENT,
    "ai.streamText": AGENT,
    "ai.generateObject": AGENT,
    "ai.streamObject": AGENT,
    "ai.generateText.doGenerate": LLM,
    "ai.streamText.doStream": LLM,
    "ai.generateObject.doGenerate": LLM,
    "ai.streamObject.doStream": LLM,
    "ai.embed.doEmbed": LLM,
    "ai.embedMany.doEmbed": LLM,
    "ai.toolCall": TOOL,
}

# (field, converter, attribute names in priority order). Rows for the same field continue its order.
DIALECT_TABLE: tuple[tuple[str, Converter, tuple[str, ...]], ...] = (
    ("kind", _one_of(_SEMCONV_OPERATIONS), ("gen_ai.operation.name",)),
    ("kind", _one_of(_OPENINFERENCE_KINDS), ("openinference.span.kind",)),
    ("kind", _one_of(_TRACELOOP_KINDS), ("traceloop.span.kind",)),
    ("kind", _one_of(_VERCEL_OPERATIONS), ("ai.operationId",)),
    ("kind", _one_of(_TRACELOOP_REQUEST_TYPES), ("llm.request.type",)),
    ("provider", _text, ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system", "ai.model.provider")),
    (
        "model",
        _text,
        (
            "gen_ai.response.model",
            "gen_ai.request.model",
            "llm.response.model_name",
            "llm.model_name",
            "llm.request.model_name",
            "ai.response.model",
            "ai.model.id",
            "langfuse.observation.model.name",
        ),
    ),
    (
        "input_tokens",
        _token_count,
        (
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "llm.token_count.prompt",
            "ai.usage.inputTokens",
            "ai.usage.promptTokens",
        ),
    ),
    (
        "output_tokens",
        _token_count,
        (
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
            "ai.usage.outputTokens",
            "ai.usage.completionTokens",
        ),
    ),
    (
        "cache_read_tokens",
        _token_count,
        (
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",
            "llm.token_count.prompt_details.cache_read",
            "ai.usage.cachedInputTokens",
        ),
    ),
    (
        "cache_write_tokens",
        _token_count,
        (
            "gen_ai.usage.cache_write.input_tokens",
            "gen_ai.usage.cache_creation.input_tokens",
            "gen_ai.usage.cache_creation_input_tokens",
            "gen_ai.usage.cache_write_input_tokens",
            "llm.token_count.prompt_details.cache_write",
        ),
    ),
    (
        "reasoning_tokens",
        _token_count,
        (
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",
            "gen_ai.usage.details.reasoning_tokens",
            "llm.token_count.completion_details.reasoning",
            "ai.usage.reasoningTokens",
        ),
    ),
    ("reported_cost", _usd, ("operation.cost", "gen_ai.usage.cost.amount", "gen_ai.usage.cost", "llm.cost.total")),
    ("agent", _text, ("gen_ai.agent.name", "agent.name", "ai.telemetry.functionId", "agent_name")),
    ("tool", _text, ("gen_ai.tool.name", "tool.name", "ai.toolCall.name")),
    ("entity_name", _text, ("traceloop.entity.name", "traceloop.workflow.name")),
    # openinference-instrumentation-langchain: LangGraph node spans carry the node in their metadata JSON.
    ("graph_node", _contains('"langgraph_node"'), ("metadata",)),
    (
        "finish_reason",
        _first_text,
        ("gen_ai.response.finish_reasons", "llm.finish_reason", "ai.response.finishReason"),
    ),
    (
        "prompt_version",
        _text,
        (
            "agentopz.prompt.version",
            "llm.prompt_template.version",
            "traceloop.prompt.version",
            "langfuse.observation.prompt.version",
            "langfuse.prompt.version",
            "gen_ai.agent.version",
        ),
    ),
    ("system_source", _tagged("parts"), ("gen_ai.system_instructions",)),
    ("system_source", _tagged("messages"), ("gen_ai.input.messages", "ai.prompt.messages")),
    ("system_source", _tagged("vercel_prompt"), ("ai.prompt",)),
    ("first_role", _text, ("llm.input_messages.0.message.role", "gen_ai.prompt.0.role")),
    ("first_content", _text, ("llm.input_messages.0.message.content", "gen_ai.prompt.0.content")),
    ("output", _tagged("messages"), ("gen_ai.output.messages",)),
    (
        "output",
        _tagged("text"),
        ("llm.output_messages.0.message.content", "ai.response.text", "gen_ai.completion.0.content"),
    ),
    *(
        (f"system_part.{index}", _text, (f"llm.input_messages.0.message.contents.{index}.message_content.text",))
        for index in range(MAX_CONTENT_PARTS)
    ),
    *(
        (f"output_part.{index}", _text, (f"llm.output_messages.0.message.contents.{index}.message_content.text",))
        for index in range(MAX_CONTENT_PARTS)
    ),
    ("output", _tagged("response"), ("output.value",)),
    ("output", _tagged("json_or_text"), ("traceloop.entity.output",)),
    ("input", _tagged("json_or_text"), ("input.value", "traceloop.entity.input")),
    ("response_id", _text, ("gen_ai.response.id",)),
    ("evaluator_name", _text, ("metadata.evaluator_name",)),
    ("evaluator_score", _score, ("metadata.score",)),
    ("evaluator_label", _text, ("metadata.label",)),
    *(
        (f"annotation.{index}.{part}", converter, (f"annotations.{index}.annotation.{part}",))
        for index in range(MAX_ANNOTATIONS)
        for part, converter in (("name", _text), ("label", _text), ("score", _score), ("explanation", _text))
    ),
    ("error_type", _text, ("error.type",)),
    ("tool_status", _text, ("gen_ai.tool.status",)),
    ("http_status", _integer, ("http.response.status_code", "http.status_code")),
    ("enriched", _present, ("agentopz.cost.source",)),
)


def build_attribute_table(rows=DIALECT_TABLE) -> dict[str, tuple[str, int, Converter]]:
    """attribute name -> (field, priority, converter); lower priority wins within a field."""
    table: dict[str, tuple[str, int, Converter]] = {}
    order: dict[str, int] = {}
    for field, converter, names in rows:
        for name in names:
            if name in table:
                raise ValueError(f"{name} is listed twice in the dialect table")
            priority = order.get(field, 0)
            order[field] = priority + 1
            table[name] = (field, priority, converter)
    return table


ATTRIBUTE_TABLE = build_attribute_table()

# Content sent as events (span events, or log records with the same names): event name -> (field,
# attribute holding it, content format) in priority order. A log record may carry it as its body instead.
CONTENT_EVENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    # Older GenAI semconv events; what Strands Agents emits by default.
    "gen_ai.system.message": (("system_source", "content", "event"),),
    "gen_ai.choice": (("output", "message", "event"), ("output", "content", "event")),
    # The first GenAI semconv content events.
    "gen_ai.content.prompt": (("system_source", "gen_ai.prompt", "messages"),),
    "gen_ai.content.completion": (("output", "gen_ai.completion", "messages"),),
    # The newest semconv: the span's content attributes, as one event.
    "gen_ai.client.inference.operation.details": (
        ("system_source", "gen_ai.system_instructions", "parts"),
        ("system_source", "gen_ai.input.messages", "messages"),
        ("output", "gen_ai.output.messages", "messages"),
    ),
}

# Provider names as instrumentations spell them -> the provider id used in labels and pricing.
PROVIDER_ALIASES = {
    "az.ai.openai": "azure",
    "azure.ai.openai": "azure",
    "az.ai.inference": "azure",
    "azure.ai.inference": "azure",
    "azure_openai": "azure",
    "azure-openai": "azure",
    "vertex_ai": "google",
    "gcp.vertex_ai": "google",
    "gemini": "google",
    "gcp.gemini": "google",
    "gcp.gen_ai": "google",
    "google.generative-ai": "google",
    "google.vertex": "google",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "amazon-bedrock": "aws",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
}
# Vercel AI SDK and others append the API they used (`openai.chat`, `openai.responses`): the provider is
# what comes before.
API_FLAVOURS = frozenset({"chat", "responses", "completion", "completions", "messages", "embedding", "embeddings"})
# Values that name the framework, not the model provider (Strands reports `gen_ai.system=strands-agents`):
# the provider is unknown, and the model is priced by model alone.
FRAMEWORK_PROVIDER_VALUES = frozenset(
    {
        "strands-agents",
        "strands",
        "langchain",
        "langgraph",
        "llamaindex",
        "llama_index",
        "pydantic-ai",
        "pydantic_ai",
        "openai-agents",
        "openai_agents",
        "crewai",
        "autogen",
        "semantic_kernel",
        "haystack",
        "dspy",
        "agno",
        "litellm",
        "mastra",
    }
)
UNKNOWN_PROVIDER = ""
# Model-name prefixes that name a provider (`openai/gpt-4o-mini`, as LiteLLM-style clients send them).
MODEL_PREFIX_PROVIDERS = frozenset(
    {provider.id for provider in data_snapshot.get_snapshot().providers} | set(PROVIDER_ALIASES)
)


@functools.lru_cache(maxsize=1024)  # every LLM span asks; the answers are few
def canonical_provider(value: str) -> str:
    """The model provider a reported provider value stands for; "" when the value names no provider."""
    provider = value.lower()
    if provider in FRAMEWORK_PROVIDER_VALUES:
        return UNKNOWN_PROVIDER
    base, dot, flavour = provider.rpartition(".")
    if dot and flavour in API_FLAVOURS:
        provider = base
    return PROVIDER_ALIASES.get(provider, provider)


def split_model_prefix(provider: str, model: str) -> tuple[str, str]:
    """(provider, model) with a provider prefix of the model name taken as the provider, when the reported
    provider does not say otherwise (an aggregator such as openrouter keeps `openai/gpt-4o` as its model)."""
    prefix, slash, name = model.partition("/")
    if slash and name:
        named = canonical_provider(prefix)
        if named in MODEL_PREFIX_PROVIDERS and provider in (UNKNOWN_PROVIDER, named):
            return named, name
    return provider, model


# Failed calls by HTTP status, then by words in error.type / status message / exception type.
_HTTP_STATUS_CLASSES = {429: STATUS_RATE_LIMITED, 408: STATUS_TIMEOUT, 504: STATUS_TIMEOUT}
_ERROR_TEXT_CLASSES = (
    (STATUS_RATE_LIMITED, ("429", "ratelimit", "rate_limit", "rate limit", "too many requests", "resource_exhausted")),
    (STATUS_TIMEOUT, ("timeout", "timed out", "deadline", "504")),
    (
        STATUS_SERVER_ERROR,
        (
            "500",
            "502",
            "503",
            "529",
            "internalserver",
            "internal server",
            "unavailable",
            "overloaded",
            "badgateway",
            "bad gateway",
            "apiconnection",
            "server_error",
        ),
    ),
    (
        STATUS_CLIENT_ERROR,
        (
            "400",
            "401",
            "403",
            "404",
            "422",
            "badrequest",
            "authentication",
            "permissiondenied",
            "notfound",
            "invalid_request",
            "unprocessable",
        ),
    ),
)
_FAILED_TOOL_STATUSES = frozenset({"error", "failed", "failure"})
_STATUS_ERROR = Status.STATUS_CODE_ERROR


def classify_failure(span: Span, error_type: str | None, http_status: int | None) -> str:
    """Why a failed call failed: rate_limited, timeout, server_error, client_error or error."""
    if http_status is not None and http_status >= 400:
        return _HTTP_STATUS_CLASSES.get(http_status, STATUS_SERVER_ERROR if http_status >= 500 else STATUS_CLIENT_ERROR)
    words = [error_type or "", span.status.message]
    words.extend(
        attribute.value.string_value
        for event in span.events
        if event.name == "exception"
        for attribute in event.attributes
        if attribute.key in ("exception.type", "exception.message")
    )
    text = " ".join(words).lower()
    for status, needles in _ERROR_TEXT_CLASSES:
        if any(needle in text for needle in needles):
            return status
    return STATUS_ERROR


class NormalizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Normalizer:
    """Turns an OTLP request into SpanViews; counts attributes whose values cannot be used."""

    def __init__(self, invalid_attributes: Family[Counter]) -> None:
        self._table = ATTRIBUTE_TABLE
        self._invalid = invalid_attributes
        self._warnings = BoundedLog(log)

    def process(self, batch: Batch) -> None:
        batch.views = self.views(batch.request)

    def views(self, request: ExportTraceServiceRequest) -> list[SpanView]:
        views: list[SpanView] = []
        add, view = views.append, self.view
        for resource_spans in request.resource_spans:
            service = service_name(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    add(view(span, service))
        return views

    def view(self, span: Span, service: str) -> SpanView:
        table = self._table
        values: dict[str, Any] = {}
        priorities: dict[str, int] = {}
        for attribute in span.attributes:
            entry = table.get(attribute.key)
            if entry is None:
                continue
            field, priority, convert = entry
            if field in priorities and priorities[field] <= priority:  # most fields come once: no lookup
                continue
            value = attribute.value
            # The two commonest conversions inline, their usual case only: a call costs as much as the
            # rest of the step. The converters decide everything else, so the outcome is theirs.
            if convert is _text and (text := value.string_value):
                value = text
            elif convert is _token_count and 0 < (number := value.int_value) <= MAX_TOKENS:
                value = number
            else:
                value = convert(value)
            if value is SKIP:
                continue
            if value is INVALID:
                self._invalid.series((attribute.key,)).value += 1
                which = attribute.value.WhichOneof("value")
                self._warnings.warning(
                    attribute.key,
                    "span attribute %s ignored: unusable %s %r (counted in agentopz_invalid_attributes_total)",
                    attribute.key,
                    which,
                    getattr(attribute.value, which) if which else None,
                )
                continue
            values[field] = value
            priorities[field] = priority
        view = SpanView(span, service)
        has_events = len(span.events) > 0
        if has_events:
            _read_events(view, span, values)
        self._fill(view, span, values, has_events)
        # Priority 0 of prompt_version is our own agentopz.prompt.version: the span has one already.
        view.version_attribute = priorities.get("prompt_version") == 0
        return view

    @staticmethod
    def _fill(view: SpanView, span: Span, values: dict[str, Any], has_events: bool) -> None:
        get = values.get
        model = view.model = get("model", "")
        input_tokens = get("input_tokens")
        output_tokens = get("output_tokens")
        kind = get("kind")
        if kind is None:
            kind = LLM if model and (input_tokens is not None or output_tokens is not None) else OTHER
        view.agent = get("agent")
        if kind == _AGENT_NAMED_BY_SPAN:
            if "graph_node" in values:
                kind = OTHER  # a node of a framework's graph (LangGraph), not an agent of its own
            else:
                kind = AGENT
                if view.agent is None and span.name:
                    view.agent = span.name
                    view.agent_is_span_name = True
        view.kind = kind
        if kind == LLM:
            provider = canonical_provider(get("provider", ""))
            if "/" in model:
                provider, model = split_model_prefix(provider, model)
                view.model = model
            view.provider = provider
            cache_read = get("cache_read_tokens")
            cache_write = get("cache_write_tokens")
            reasoning = get("reasoning_tokens")
            # Some providers report cache and reasoning tokens beside the input/output counts rather
            # than inside them; the canonical view always includes them.
            if cache_read is not None or cache_write is not None:
                cached = (cache_read or 0) + (cache_write or 0)
                if input_tokens is None or input_tokens < cached:
                    input_tokens = (input_tokens or 0) + cached
            if reasoning and (output_tokens is None or output_tokens < reasoning):
                output_tokens = (output_tokens or 0) + reasoning
            view.input_tokens = input_tokens
            view.output_tokens = output_tokens
            view.cache_read_tokens = cache_read
            view.cache_write_tokens = cache_write
            view.reasoning_tokens = reasoning
            view.reported_cost = get("reported_cost")
            view.finish_reason = get("finish_reason")
            view.response_id = get("response_id")
            view.enriched = "enriched" in values
        elif kind == AGENT:
            if view.agent is None:
                view.agent = get("entity_name") or _name_after(span.name, "invoke_agent ")
        elif kind == TOOL:
            view.tool = get("tool") or get("entity_name") or _name_after(span.name, "execute_tool ") or span.name
        if kind in (LLM, AGENT):
            view.prompt_version = get("prompt_version")
            system_source = get("system_source")
            if system_source is None and get("first_role") == "system":
                if "first_content" in values:
                    system_source = ("text", values["first_content"])
                elif "system_part.0" in values:
                    system_source = ("text", _joined_parts(values, "system_part"))
            view.system_source = system_source
            output = get("output")
            if output is None and "output_part.0" in values:
                output = ("text", _joined_parts(values, "output_part"))
            view.output = output
            view.input = get("input")
            if view.input is None:
                if system_source is not None and system_source[0] in ("messages", "vercel_prompt"):
                    view.input = system_source  # the same messages carry the user's request
                elif get("first_role") == "user" and "first_content" in values:
                    view.input = ("text", values["first_content"])
        if kind == EVALUATOR:
            _evaluator_span(view, span, values)
        elif has_events or "annotation.0.name" in values:
            view.evaluations = _evaluations(span, values, view.response_id)
        error_type = get("error_type")
        if (
            error_type is not None
            or span.status.code == _STATUS_ERROR
            or ("tool_status" in values and values["tool_status"].lower() in _FAILED_TOOL_STATUSES)
        ):
            view.status = classify_failure(span, error_type, get("http_status")) if kind != TOOL else STATUS_ERROR


def _joined_parts(values: dict[str, Any], field: str) -> str:
    texts = []
    for index in range(MAX_CONTENT_PARTS):
        text = values.get(f"{field}.{index}")
        if text is not None:
            texts.append(text)
    return "\n".join(texts)


def _read_events(view: SpanView, span: Span, values: dict[str, Any]) -> None:
    """Content events fill the content fields the attributes left empty; a feature-flag evaluation
    gives the variant served."""
    from_attributes = {field for field in ("system_source", "output") if field in values}
    for event in span.events:
        name = event.name
        if name == FLAG_EVALUATION_EVENT:
            if view.flag is None:
                view.flag = flag_evaluation(event.attributes)
                view.targeting_key = targeting_key(event.attributes)
        elif name in CONTENT_EVENTS:
            for field, source in event_content(name, event.attributes, None):
                # Attributes win; among events the first system message and the last choice.
                if field not in from_attributes and (field == "output" or field not in values):
                    values[field] = source


def event_content(name: str, attributes, body: AnyValue | None) -> list[tuple[str, tuple[str, str]]]:
    """(field, (format, raw)) pairs of content carried by a content event (span event or log record)."""
    wanted = CONTENT_EVENTS.get(name)
    if wanted is None:
        return []
    by_key = {attribute.key: attribute.value for attribute in attributes if attribute.key in _CONTENT_EVENT_KEYS}
    found: dict[str, tuple[str, str]] = {}
    for field, key, content_format in wanted:
        value = by_key.get(key)
        if field not in found and value is not None and (raw := any_value_text(value)) is not None:
            found[field] = (content_format, raw)
    field, _, content_format = wanted[0]
    if not found and content_format == "event" and body is not None:
        # The older events as log records carry their message as the body.
        raw = any_value_text(body)
        if raw is not None:
            found[field] = (content_format, raw)
    return list(found.items())


def log_event_name(log_record) -> str:
    """A log record's event name: the field, or the `event.name` attribute older SDKs send."""
    if log_record.event_name:
        return log_record.event_name
    return next((kv.value.string_value for kv in log_record.attributes if kv.key == "event.name"), "")


_CONTENT_EVENT_KEYS = frozenset(key for fields in CONTENT_EVENTS.values() for _, key, _ in fields)


def any_value_text(value: AnyValue) -> str | None:
    """A string value as it is; a structured one (kvlist, array) as JSON, the form content decoding reads."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which in ("kvlist_value", "array_value"):
        return json.dumps(_plain(value, 0))
    return None


def _plain(value: AnyValue, depth: int) -> Any:
    which = value.WhichOneof("value")
    if which == "kvlist_value":
        if depth >= MAX_CONTENT_DEPTH:
            return None
        return {kv.key: _plain(kv.value, depth + 1) for kv in value.kvlist_value.values}
    if which == "array_value":
        if depth >= MAX_CONTENT_DEPTH:
            return None
        return [_plain(item, depth + 1) for item in value.array_value.values]
    if which == "bytes_value":
        return None
    return getattr(value, which) if which is not None else None


def flag_evaluation(attributes) -> tuple[str, str] | None:
    """(flag key, variant) of an OpenFeature `feature_flag.evaluation` event, when it names a variant."""
    key = ""
    variants: dict[str, str] = {}
    for attribute in attributes:
        if attribute.key == "feature_flag.key":
            key = attribute.value.string_value
        elif attribute.key in FLAG_VARIANT_ATTRIBUTES and attribute.value.string_value:
            variants[attribute.key] = attribute.value.string_value
    variant = next((variants[name] for name in FLAG_VARIANT_ATTRIBUTES if name in variants), None)
    return (key, variant) if variant is not None else None


def targeting_key(attributes) -> str | None:
    """The targeting key of an OpenFeature `feature_flag.evaluation` event (`feature_flag.context.id`),
    at most MAX_TARGETING_KEY_CHARS; None when absent or empty."""
    for attribute in attributes:
        if attribute.key == FLAG_CONTEXT_ID_ATTRIBUTE:
            return attribute.value.string_value[:MAX_TARGETING_KEY_CHARS] or None
    return None


def evaluation_from_attributes(attributes, response_id: str | None = None) -> Evaluation | None:
    """A gen_ai.evaluation.result event's or log record's attributes as an Evaluation."""
    values: dict[str, Any] = {}
    for attribute in attributes:
        key = attribute.key
        if key == "gen_ai.evaluation.score.value":
            values["score"] = _score(attribute.value)
        elif key in _EVALUATION_TEXT_FIELDS:
            text = _text(attribute.value)
            if text is not INVALID and text is not SKIP:
                values[_EVALUATION_TEXT_FIELDS[key]] = text
    if "name" not in values:
        return None
    score = values.get("score")
    return Evaluation(
        name=values["name"],
        score=None if score is INVALID else score,
        label=values.get("label"),
        explanation=(values.get("explanation") or "")[:MAX_EXPLANATION_CHARS] or None,
        response_id=values.get("response_id", response_id),
    )


_EVALUATION_TEXT_FIELDS = {
    "gen_ai.evaluation.name": "name",
    "gen_ai.evaluation.score.label": "label",
    "gen_ai.evaluation.explanation": "explanation",
    "gen_ai.response.id": "response_id",
}


def _evaluations(span: Span, values: dict[str, Any], response_id: str | None) -> list[Evaluation] | None:
    found = [
        evaluation
        for event in span.events
        if event.name == EVALUATION_EVENT
        and (evaluation := evaluation_from_attributes(event.attributes, response_id)) is not None
    ]
    for index in range(MAX_ANNOTATIONS):
        name = values.get(f"annotation.{index}.name")
        if name is None:
            break
        found.append(
            Evaluation(
                name=name,
                score=values.get(f"annotation.{index}.score"),
                label=values.get(f"annotation.{index}.label"),
                explanation=(values.get(f"annotation.{index}.explanation") or "")[:MAX_EXPLANATION_CHARS] or None,
                response_id=response_id,
            )
        )
    return found or None


def _evaluator_span(view: SpanView, span: Span, values: dict[str, Any]) -> None:
    """An EVALUATOR span: its verdict (and any annotations) are about the span it links to, or, with no
    link, about the run it sits in."""
    evaluations = _evaluations(span, values, None) or []
    if "evaluator_score" in values or "evaluator_label" in values:
        name = values.get("evaluator_name") or span.name
        evaluations.append(
            Evaluation(name=name, score=values.get("evaluator_score"), label=values.get("evaluator_label"))
        )
    view.evaluations = evaluations or None
    for link in span.links:
        if len(link.trace_id) == 16:
            view.evaluation_target = (link.trace_id, link.span_id)
            break


def _name_after(name: str, prefix: str) -> str | None:
    return name[len(prefix) :] or None if name.startswith(prefix) else None


def service_name(resource_attributes) -> str:
    for attribute in resource_attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value or "unknown_service"
    return "unknown_service"


def _create(component_id: str, config: NormalizeConfig, context: Context) -> Normalizer:
    return Normalizer(context.metrics.metric("agentopz_invalid_attributes_total"))


FACTORY = Factory(type="normalize", kind="processor", config_type=NormalizeConfig, create=_create)
