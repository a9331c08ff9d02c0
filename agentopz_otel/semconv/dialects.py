"""The dialect table: per canonical field, the attribute names that carry it in each instrumentation
dialect (`../shared/reference/genai-dialects.md`), in priority order, newest convention first.

This is data: normalize applies it, and a new dialect or alias is a new row or name here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from ..spans import AGENT, EVALUATOR, LLM, OTHER, TOOL
from .values import (
    Converter,
    as_first_text,
    as_integer,
    as_score,
    as_text,
    as_token_count,
    as_usd,
    contains,
    one_of,
    present,
    tagged,
)

MAX_ANNOTATIONS = 8  # OpenInference annotations.{i}.annotation.* read per span
MAX_CONTENT_PARTS = 8  # OpenInference message_content parts read per message

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
AGENT_NAMED_BY_SPAN = "agent named by its span"
_OPENINFERENCE_KINDS = {
    "LLM": LLM,
    "EMBEDDING": LLM,
    "TOOL": TOOL,
    "AGENT": AGENT_NAMED_BY_SPAN,
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
    ("kind", one_of(_SEMCONV_OPERATIONS), ("gen_ai.operation.name",)),
    ("kind", one_of(_OPENINFERENCE_KINDS), ("openinference.span.kind",)),
    ("kind", one_of(_TRACELOOP_KINDS), ("traceloop.span.kind",)),
    ("kind", one_of(_VERCEL_OPERATIONS), ("ai.operationId",)),
    ("kind", one_of(_TRACELOOP_REQUEST_TYPES), ("llm.request.type",)),
    ("provider", as_text, ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system", "ai.model.provider")),
    (
        "model",
        as_text,
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
        as_token_count,
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
        as_token_count,
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
        as_token_count,
        (
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",
            "llm.token_count.prompt_details.cache_read",
            "ai.usage.cachedInputTokens",
        ),
    ),
    (
        "cache_write_tokens",
        as_token_count,
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
        as_token_count,
        (
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",
            "gen_ai.usage.details.reasoning_tokens",
            "llm.token_count.completion_details.reasoning",
            "ai.usage.reasoningTokens",
        ),
    ),
    ("reported_cost", as_usd, ("operation.cost", "gen_ai.usage.cost.amount", "gen_ai.usage.cost", "llm.cost.total")),
    ("agent", as_text, ("gen_ai.agent.name", "agent.name", "ai.telemetry.functionId", "agent_name")),
    ("tool", as_text, ("gen_ai.tool.name", "tool.name", "ai.toolCall.name")),
    ("entity_name", as_text, ("traceloop.entity.name", "traceloop.workflow.name")),
    # openinference-instrumentation-langchain: LangGraph node spans carry the node in their metadata JSON.
    ("graph_node", contains('"langgraph_node"'), ("metadata",)),
    (
        "finish_reason",
        as_first_text,
        ("gen_ai.response.finish_reasons", "llm.finish_reason", "ai.response.finishReason"),
    ),
    (
        "prompt_version",
        as_text,
        (
            "agentopz.prompt.version",
            "llm.prompt_template.version",
            "traceloop.prompt.version",
            "langfuse.observation.prompt.version",
            "langfuse.prompt.version",
            "gen_ai.agent.version",
        ),
    ),
    ("system_source", tagged("parts"), ("gen_ai.system_instructions",)),
    ("system_source", tagged("messages"), ("gen_ai.input.messages", "ai.prompt.messages")),
    ("system_source", tagged("vercel_prompt"), ("ai.prompt",)),
    ("first_role", as_text, ("llm.input_messages.0.message.role", "gen_ai.prompt.0.role")),
    ("first_content", as_text, ("llm.input_messages.0.message.content", "gen_ai.prompt.0.content")),
    ("output", tagged("messages"), ("gen_ai.output.messages",)),
    (
        "output",
        tagged("text"),
        ("llm.output_messages.0.message.content", "ai.response.text", "gen_ai.completion.0.content"),
    ),
    *(
        (f"system_part.{index}", as_text, (f"llm.input_messages.0.message.contents.{index}.message_content.text",))
        for index in range(MAX_CONTENT_PARTS)
    ),
    *(
        (f"output_part.{index}", as_text, (f"llm.output_messages.0.message.contents.{index}.message_content.text",))
        for index in range(MAX_CONTENT_PARTS)
    ),
    ("output", tagged("response"), ("output.value",)),
    ("output", tagged("json_or_text"), ("traceloop.entity.output",)),
    ("input", tagged("json_or_text"), ("input.value", "traceloop.entity.input")),
    ("response_id", as_text, ("gen_ai.response.id",)),
    ("evaluator_name", as_text, ("metadata.evaluator_name",)),
    ("evaluator_score", as_score, ("metadata.score",)),
    ("evaluator_label", as_text, ("metadata.label",)),
    *(
        (f"annotation.{index}.{part}", converter, (f"annotations.{index}.annotation.{part}",))
        for index in range(MAX_ANNOTATIONS)
        for part, converter in (("name", as_text), ("label", as_text), ("score", as_score), ("explanation", as_text))
    ),
    ("error_type", as_text, ("error.type",)),
    ("tool_status", as_text, ("gen_ai.tool.status",)),
    ("http_status", as_integer, ("http.response.status_code", "http.status_code")),
    ("enriched", present, ("agentopz.cost.source",)),
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


def _fields_starting(*prefixes: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(field for field, _, _ in DIALECT_TABLE if field.startswith(prefixes)))


# The fields a span of each kind is read for (what normalize's SpanView keeps of it); the span's other
# known attributes are left unread. A span with no kind attribute is read for INFERENCE_FIELDS first: a
# model and token counts make it an LLM call, else it is OTHER and its GenAI attributes are not read.
# ON_FAILURE_FIELDS are read only for a call that failed.
_COMMON_FIELDS = (
    "kind",
    "model",
    "agent",
    "error_type",
    "tool_status",
    *_fields_starting("annotation."),
)
_CONTENT_FIELDS = (
    "prompt_version",
    "system_source",
    "first_role",
    "first_content",
    "output",
    "input",
    *_fields_starting("system_part.", "output_part."),
)
INFERENCE_FIELDS = ("model", "input_tokens", "output_tokens")
ON_FAILURE_FIELDS = ("http_status",)
FIELDS_BY_KIND: dict[str, frozenset[str]] = {
    LLM: frozenset(
        (
            *_COMMON_FIELDS,
            *INFERENCE_FIELDS,
            "provider",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "reported_cost",
            "finish_reason",
            "response_id",
            "enriched",
            *_CONTENT_FIELDS,
        )
    ),
    AGENT: frozenset((*_COMMON_FIELDS, "entity_name", *_CONTENT_FIELDS)),
    AGENT_NAMED_BY_SPAN: frozenset((*_COMMON_FIELDS, "entity_name", "graph_node", *_CONTENT_FIELDS)),
    TOOL: frozenset((*_COMMON_FIELDS, "tool", "entity_name")),
    EVALUATOR: frozenset((*_COMMON_FIELDS, "evaluator_name", "evaluator_score", "evaluator_label")),
    OTHER: frozenset(_COMMON_FIELDS),
}

# Per field present, the positions of its attributes with their converters, highest priority first (ties
# in attribute order).
FieldPlans = tuple[tuple[str, tuple[tuple[int, Converter], ...]], ...]


class ReadPlan(NamedTuple):
    """What to read of a span whose attribute keys come in a given order."""

    kind: FieldPlans
    inference: FieldPlans  # read when no kind attribute says the kind
    by_kind: dict[str, FieldPlans]  # the rest, per kind (not the kind field)
    after_inference: dict[str, FieldPlans]  # the rest when the inference fields told the kind (LLM or OTHER)
    on_failure: FieldPlans
    size: int  # the number of attributes it is for
    own_version: tuple[int, ...]  # positions of OWN_VERSION_ATTRIBUTE


# The priority-0 name of prompt_version: a span carrying it was enriched by this service already.
OWN_VERSION_ATTRIBUTE = DIALECT_TABLE[[row[0] for row in DIALECT_TABLE].index("prompt_version")][2][0]


def read_plan(keys: tuple[str, ...]) -> ReadPlan:
    """The plan for a span whose attributes have these keys, in this order. Attributes no dialect names
    are left out, so a span with no known attribute has nothing to read."""
    candidates: dict[str, list[tuple[int, int, Converter]]] = {}
    for index, key in enumerate(keys):
        entry = ATTRIBUTE_TABLE.get(key)
        if entry is not None:
            field, priority, converter = entry
            candidates.setdefault(field, []).append((priority, index, converter))
    fields = tuple(
        (field, tuple((index, converter) for _, index, converter in sorted(found, key=lambda c: c[:2])))
        for field, found in candidates.items()
    )

    def among(wanted: Collection[str]) -> FieldPlans:
        return tuple(plan for plan in fields if plan[0] in wanted)

    by_kind = {kind: among(wanted - {"kind"}) for kind, wanted in FIELDS_BY_KIND.items()}
    return ReadPlan(
        kind=among(("kind",)),
        inference=among(INFERENCE_FIELDS),
        by_kind=by_kind,
        after_inference={kind: among(FIELDS_BY_KIND[kind] - {"kind", *INFERENCE_FIELDS}) for kind in (LLM, OTHER)},
        on_failure=among(ON_FAILURE_FIELDS),
        size=len(keys),
        own_version=tuple(index for index, key in enumerate(keys) if key == OWN_VERSION_ATTRIBUTE),
    )
