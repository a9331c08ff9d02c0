"""Normalize reads every dialect of the reference page into the same canonical view."""

from __future__ import annotations

import pytest
from support.otlp_proto import make_request, make_span

from agentopz_otel.content import input_text
from agentopz_otel.metrics import Registry
from agentopz_otel.processors import normalize
from agentopz_otel.processors.normalize import Normalizer
from agentopz_otel.semconv import dialects
from agentopz_otel.semconv.dialects import (
    DIALECT_TABLE,
    FIELDS_BY_KIND,
    INFERENCE_FIELDS,
    ON_FAILURE_FIELDS,
    ReadPlan,
    read_plan,
)
from agentopz_otel.spans import AGENT, LLM, OTHER, TOOL, tokens_of


class FromBytes(Normalizer):
    """Reads each request's attributes from its protobuf bytes, as the receiver hands them over."""

    def views(self, request, wire=None):
        return super().views(request, request.SerializeToString())


@pytest.fixture(params=[Normalizer, FromBytes], ids=["protobuf", "bytes"])
def normalizer(request) -> tuple[Normalizer, Registry]:
    """Every test here runs both ways normalize reads attributes (the native one when it is built)."""
    registry = Registry()
    return request.param(registry.metric("agentopz_invalid_attributes_total")), registry


def view_of(normalizer, attrs, name="span", error=False, service="svc"):
    norm, _ = normalizer
    return norm.views(make_request([make_span(name, attrs, error=error)], service=service))[0]


tokens = tokens_of


# One chat call of 1200 input (200 cached) and 300 output tokens, as each dialect reports it.
DIALECTS = {
    "semconv": {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 200,
    },
    "semconv_deprecated": {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.prompt_tokens": 1200,
        "gen_ai.usage.completion_tokens": 300,
        "gen_ai.usage.cache_read_input_tokens": 200,
    },
    "openinference": {
        "openinference.span.kind": "LLM",
        "llm.system": "openai",
        "llm.model_name": "gpt-4o-2024-08-06",
        "llm.token_count.prompt": 1200,
        "llm.token_count.completion": 300,
        "llm.token_count.total": 1500,
        "llm.token_count.prompt_details.cache_read": 200,
    },
    "openllmetry": {
        "llm.request.type": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.total_tokens": 1500,
        "llm.usage.total_tokens": 1500,
        "gen_ai.usage.cache_read.input_tokens": 200,
    },
    "vercel": {
        "ai.operationId": "ai.generateText.doGenerate",
        "ai.model.provider": "openai.chat",
        "ai.model.id": "gpt-4o-2024-08-06",
        "ai.usage.inputTokens": 1200,
        "ai.usage.outputTokens": 300,
        "ai.usage.cachedInputTokens": 200,
    },
    "vercel_legacy": {
        "ai.operationId": "ai.generateText.doGenerate",
        "ai.model.provider": "openai.chat",
        "ai.model.id": "gpt-4o-2024-08-06",
        "ai.usage.promptTokens": 1200,
        "ai.usage.completionTokens": 300,
    },
    "strands": {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.prompt_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.completion_tokens": 300,
        "gen_ai.usage.total_tokens": 1500,
        "gen_ai.usage.cache_read_input_tokens": 200,
    },
    "langfuse_model": {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "langfuse.observation.model.name": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 200,
    },
}


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_gives_the_same_chat_call(normalizer, dialect):
    view = view_of(normalizer, DIALECTS[dialect])
    assert view.kind == LLM
    assert view.provider == "openai"
    assert view.model == "gpt-4o-2024-08-06"
    cached = None if dialect == "vercel_legacy" else 200
    assert tokens(view) == (1200, 300, cached, None, None)


def test_newest_name_wins_and_duplicates_are_not_added(normalizer):
    view = view_of(
        normalizer,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "m",
            "gen_ai.usage.prompt_tokens": 999,  # deprecated duplicate, listed first on the wire
            "gen_ai.usage.input_tokens": 100,
            "gen_ai.usage.cache_creation_input_tokens": 7,
            "gen_ai.usage.cache_write.input_tokens": 10,
        },
    )
    assert view.input_tokens == 100
    assert view.cache_write_tokens == 10


def test_pydantic_ai_aggregated_usage_on_agent_span_is_not_a_call(normalizer):
    view = view_of(
        normalizer,
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "support",
            "gen_ai.aggregated_usage.input_tokens": 5000,
            "gen_ai.aggregated_usage.output_tokens": 800,
            "gen_ai.request.model": "gpt-4o",
        },
        name="invoke_agent support",
    )
    assert view.kind == AGENT
    assert view.agent == "support"
    assert tokens(view) == (None, None, None, None, None)


def test_pydantic_ai_chat_uses_operation_cost_and_details(normalizer):
    view = view_of(
        normalizer,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "o3-mini",
            "gen_ai.usage.input_tokens": 50,
            "gen_ai.usage.output_tokens": 500,
            "gen_ai.usage.details.reasoning_tokens": 400,
            "operation.cost": 0.0123,
        },
    )
    assert tokens(view) == (50, 500, None, None, 400)
    assert view.reported_cost == 0.0123


def test_cache_and_reasoning_reported_beside_totals_are_folded_in(normalizer):
    view = view_of(
        normalizer,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "claude",
            "gen_ai.usage.input_tokens": 20,  # excludes the cache, as some providers count
            "gen_ai.usage.cache_read.input_tokens": 1000,
            "gen_ai.usage.cache_creation.input_tokens": 500,
            "gen_ai.usage.output_tokens": 10,
            "gen_ai.usage.reasoning.output_tokens": 40,
        },
    )
    assert tokens(view) == (1520, 50, 1000, 500, 40)


@pytest.mark.parametrize(
    ("attrs", "kind", "agent", "tool"),
    [
        ({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"}, AGENT, "a", None),
        ({"gen_ai.operation.name": "invoke_workflow"}, AGENT, None, None),
        ({"openinference.span.kind": "AGENT", "agent.name": "oi"}, AGENT, "oi", None),
        ({"traceloop.span.kind": "workflow", "traceloop.workflow.name": "wf"}, AGENT, "wf", None),
        ({"traceloop.span.kind": "agent", "traceloop.entity.name": "tl"}, AGENT, "tl", None),
        ({"ai.operationId": "ai.generateText", "ai.telemetry.functionId": "fn"}, AGENT, "fn", None),
        ({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}, TOOL, None, "search"),
        ({"openinference.span.kind": "TOOL", "tool.name": "calc"}, TOOL, None, "calc"),
        ({"traceloop.span.kind": "tool", "traceloop.entity.name": "lookup"}, TOOL, None, "lookup"),
        ({"ai.operationId": "ai.toolCall", "ai.toolCall.name": "weather"}, TOOL, None, "weather"),
        ({"openinference.span.kind": "CHAIN"}, OTHER, None, None),
        ({"http.method": "GET"}, OTHER, None, None),
    ],
)
def test_span_kinds_and_names(normalizer, attrs, kind, agent, tool):
    view = view_of(normalizer, attrs)
    assert (view.kind, view.agent, view.tool) == (kind, agent, tool)


def test_tool_name_falls_back_to_span_name(normalizer):
    view = view_of(normalizer, {"gen_ai.operation.name": "execute_tool"}, name="execute_tool fetch_page")
    assert view.tool == "fetch_page"


@pytest.mark.parametrize(
    ("attrs", "status"),
    [
        ({"error.type": "429"}, "rate_limited"),
        ({"error.type": "openai.RateLimitError"}, "rate_limited"),
        ({"error.type": "APITimeoutError"}, "timeout"),
        ({"error.type": "InternalServerError"}, "server_error"),
        ({"error.type": "x", "http.response.status_code": 503}, "server_error"),
        ({"error.type": "x", "http.response.status_code": 429}, "rate_limited"),
        ({"error.type": "BadRequestError"}, "client_error"),
        ({"error.type": "ValueError"}, "error"),
    ],
)
def test_failed_llm_calls_are_classified(normalizer, attrs, status):
    base = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    assert view_of(normalizer, {**base, **attrs}, error=True).status == status


def test_ok_and_failed_tool_status(normalizer):
    base = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t"}
    assert view_of(normalizer, base).status == "ok"
    assert view_of(normalizer, base, error=True).status == "error"
    assert view_of(normalizer, {**base, "gen_ai.tool.status": "error"}).status == "error"


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("az.ai.openai", "azure"),
        ("gcp.vertex_ai", "google"),
        ("aws.bedrock", "aws"),
        ("Anthropic", "anthropic"),
        # API flavours (Vercel AI SDK and others) are their provider.
        ("openai.chat", "openai"),
        ("openai.responses", "openai"),
        ("anthropic.messages", "anthropic"),
        ("google.vertex.chat", "google"),
        ("azure.chat", "azure"),
        ("mistral.chat", "mistral"),
        # A framework's own name says nothing about the provider.
        ("strands-agents", ""),
        ("langchain", ""),
        ("litellm", ""),
        # Unknown values stay as reported.
        ("vllm", "vllm"),
    ],
)
def test_provider_aliases(normalizer, provider, expected):
    view = view_of(normalizer, {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider})
    assert view.provider == expected


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        (None, "openai/gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("openai", "openai/gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("litellm", "anthropic/claude-sonnet-4", ("anthropic", "claude-sonnet-4")),
        ("strands-agents", "bedrock/claude-3-haiku", ("aws", "claude-3-haiku")),
        # An aggregator's model names carry the upstream provider: they are its own catalogue names.
        ("openrouter", "openai/gpt-4o-mini", ("openrouter", "openai/gpt-4o-mini")),
        # A prefix that is no provider is part of the name.
        (None, "meta-llama/Llama-3-8B", ("", "meta-llama/Llama-3-8B")),
        ("openai", "ft:gpt-4o/custom", ("openai", "ft:gpt-4o/custom")),
    ],
)
def test_provider_prefix_of_the_model_name(normalizer, provider, model, expected):
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
    if provider:
        attrs["gen_ai.system"] = provider
    view = view_of(normalizer, attrs)
    assert (view.provider, view.model) == expected


# Every token alias of /work/shared/reference/genai-dialects.md (and the dialect table) -> the field it fills.
TOKEN_ALIASES = {
    "gen_ai.usage.input_tokens": "input_tokens",
    "gen_ai.usage.prompt_tokens": "input_tokens",
    "llm.token_count.prompt": "input_tokens",
    "ai.usage.inputTokens": "input_tokens",
    "ai.usage.promptTokens": "input_tokens",
    "gen_ai.usage.output_tokens": "output_tokens",
    "gen_ai.usage.completion_tokens": "output_tokens",
    "llm.token_count.completion": "output_tokens",
    "ai.usage.outputTokens": "output_tokens",
    "ai.usage.completionTokens": "output_tokens",
    "gen_ai.usage.cache_read.input_tokens": "cache_read_tokens",
    "gen_ai.usage.cache_read_input_tokens": "cache_read_tokens",
    "llm.token_count.prompt_details.cache_read": "cache_read_tokens",
    "ai.usage.cachedInputTokens": "cache_read_tokens",
    "gen_ai.usage.cache_write.input_tokens": "cache_write_tokens",
    "gen_ai.usage.cache_creation.input_tokens": "cache_write_tokens",
    "gen_ai.usage.cache_creation_input_tokens": "cache_write_tokens",
    "gen_ai.usage.cache_write_input_tokens": "cache_write_tokens",
    "llm.token_count.prompt_details.cache_write": "cache_write_tokens",
    "gen_ai.usage.reasoning.output_tokens": "reasoning_tokens",
    "gen_ai.usage.reasoning_tokens": "reasoning_tokens",
    "gen_ai.usage.details.reasoning_tokens": "reasoning_tokens",
    "llm.token_count.completion_details.reasoning": "reasoning_tokens",
    "ai.usage.reasoningTokens": "reasoning_tokens",
}
TOKEN_FIELDS = frozenset(TOKEN_ALIASES.values())


@pytest.mark.parametrize(("alias", "field"), sorted(TOKEN_ALIASES.items()))
def test_every_token_alias_is_read(normalizer, alias, field):
    # Big enough to be the whole count (cache and reasoning are folded into input/output when larger).
    view = view_of(normalizer, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", alias: 4321})
    assert getattr(view, field) == 4321
    assert {name: getattr(view, name) for name in TOKEN_FIELDS if name != field} == {
        name: (4321 if (field, name) in FOLDED else None) for name in TOKEN_FIELDS if name != field
    }


# A cache or reasoning count alone also gives the total it is part of.
FOLDED = {
    ("cache_read_tokens", "input_tokens"),
    ("cache_write_tokens", "input_tokens"),
    ("reasoning_tokens", "output_tokens"),
}


@pytest.mark.parametrize(
    "alias",
    [name for field, _, names in DIALECT_TABLE if field in TOKEN_FIELDS for name in names],
)
def test_every_token_alias_of_the_dialect_table_has_a_case(alias):
    assert alias in TOKEN_ALIASES


@pytest.mark.parametrize("bad", [-5, "many", 1.5, 10**12, float("nan")])
def test_unusable_token_counts_are_ignored_and_counted(normalizer, bad):
    _, registry = normalizer
    view = view_of(
        normalizer,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": bad,
            "gen_ai.usage.output_tokens": 300,
        },
    )
    assert view.input_tokens is None
    assert view.output_tokens == 300
    invalid = dict(next(f for f in registry.families if f.name == "agentopz_invalid_attributes_total").items())
    assert invalid[("gen_ai.usage.input_tokens",)].value == 1


def test_numeric_strings_are_accepted(normalizer):
    view = view_of(normalizer, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "42"})
    assert view.input_tokens == 42


def test_finish_reason_from_array_and_string(normalizer):
    chat = {"gen_ai.operation.name": "chat"}
    assert view_of(normalizer, {**chat, "gen_ai.response.finish_reasons": ["length"]}).finish_reason == "length"
    assert view_of(normalizer, {**chat, "llm.finish_reason": "stop"}).finish_reason == "stop"


@pytest.mark.parametrize("empty", ["", []], ids=["string", "array"])
def test_an_empty_finish_reason_says_nothing_and_is_not_counted_as_unusable(normalizer, empty):
    _, registry = normalizer
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    view = view_of(normalizer, {**chat, "gen_ai.response.finish_reasons": empty, "llm.finish_reason": "stop"})
    assert view.finish_reason == "stop"  # the lower-priority name is read when the first says nothing
    invalid = next(f for f in registry.families if f.name == "agentopz_invalid_attributes_total")
    assert dict(invalid.items()) == {}


def test_an_attribute_sent_twice_counts_with_its_first_value(normalizer):
    norm, _ = normalizer
    span = make_span("chat", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"})
    for tokens in (1200, 7):
        added = span.attributes.add(key="gen_ai.usage.input_tokens")
        added.value.int_value = tokens
    view = norm.views(make_request([span]))[0]
    assert view.input_tokens == 1200


def test_service_name_and_ids(normalizer):
    view = view_of(normalizer, {}, service="billing")
    assert view.service == "billing"
    assert view.duration == pytest.approx(0.25)


def test_a_metric_is_capped_as_a_whole_past_its_series_limit():
    from agentopz_otel.metrics import CardinalityConfig

    registry = Registry(CardinalityConfig(max_series_per_metric=3))
    family = registry.counter("x_total", "x", ("a", "b"))
    for a, b in [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2"), ("3", "3")]:
        family.series((a, b)).value += 1
    assert {labels: s.value for labels, s in family.items()} == {
        ("1", "1"): 1,
        ("1", "2"): 1,
        ("2", "1"): 1,
        ("other", "other"): 2,
    }
    overflow = {labels: s.value for labels, s in registry.label_overflow.items()}
    assert overflow == {("__series__",): 2}


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"gen_ai.operation.name": "invoke_agent", "input.value": "Where is order 7?"}, "Where is order 7?"),
        ({"traceloop.span.kind": "agent", "traceloop.entity.input": '"Refund me"'}, "Refund me"),
        (
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.input.messages": '[{"role": "system", "parts": [{"type": "text", "content": "Be brief"}]},'
                ' {"role": "user", "parts": [{"type": "text", "content": "Cancel my plan"}]}]',
            },
            "Cancel my plan",
        ),
        (
            {
                "openinference.span.kind": "LLM",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "Hi there",
            },
            "Hi there",
        ),
        ({"gen_ai.operation.name": "chat", "ai.prompt": '{"system": "S", "prompt": "Summarise"}'}, "Summarise"),
        ({"gen_ai.operation.name": "execute_tool", "input.value": "{}"}, None),  # tools carry no run input
    ],
)
def test_the_start_of_a_run_input_comes_from_each_dialect(normalizer, attrs, expected):
    view = view_of(normalizer, attrs)
    assert (input_text(view.input) if view.input is not None else None) == expected


def fields_of(plans) -> list[tuple[str, list[int]]]:
    return [(field, [index for index, _ in candidates]) for field, candidates in plans]


def test_the_read_plan_lists_each_fields_attributes_best_first_for_each_kind():
    keys = (
        "http.request.method",  # no dialect's: not read
        "gen_ai.usage.prompt_tokens",
        "gen_ai.operation.name",
        "gen_ai.usage.input_tokens",
        "gen_ai.tool.name",
        "http.response.status_code",
        "gen_ai.usage.prompt_tokens",  # sent twice: after the first
    )
    plan = read_plan(keys)
    assert fields_of(plan.kind) == [("kind", [2])]
    assert fields_of(plan.inference) == [("input_tokens", [3, 1, 6])]
    assert fields_of(plan.by_kind[LLM]) == [("input_tokens", [3, 1, 6])]
    assert fields_of(plan.by_kind[TOOL]) == [("tool", [4])]
    assert fields_of(plan.by_kind[OTHER]) == []
    assert fields_of(plan.after_inference[LLM]) == fields_of(plan.after_inference[OTHER]) == []
    assert fields_of(plan.on_failure) == [("http_status", [5])]
    assert plan.size == 7
    assert read_plan(("http.request.method", "url.path")) == ReadPlan(
        (), (), dict.fromkeys(FIELDS_BY_KIND, ()), {LLM: (), OTHER: ()}, (), 2, ()
    )
    assert read_plan(("agentopz.prompt.version", "x", "agentopz.prompt.version")).own_version == (0, 2)


def test_every_kind_a_kind_attribute_names_has_its_fields():
    kinds = {*dialects._SEMCONV_OPERATIONS.values(), *dialects._OPENINFERENCE_KINDS.values()}
    kinds |= {*dialects._TRACELOOP_KINDS.values(), *dialects._TRACELOOP_REQUEST_TYPES.values()}
    kinds |= set(dialects._VERCEL_OPERATIONS.values())
    assert kinds | {OTHER} == set(FIELDS_BY_KIND)


def test_every_field_of_the_dialect_table_is_read_for_some_kind():
    read = set().union(*FIELDS_BY_KIND.values(), INFERENCE_FIELDS, ON_FAILURE_FIELDS)
    assert {field for field, _, _ in DIALECT_TABLE} == read


@pytest.mark.parametrize(
    ("attrs", "kind", "counted"),
    [
        # A tool span's model and tokens are not its to report: not read, so not counted as unusable.
        ({"gen_ai.operation.name": "execute_tool", "gen_ai.usage.input_tokens": -1}, TOOL, {}),
        # No kind attribute, no model: not a call; past its model and tokens, its GenAI attributes are unread.
        ({"gen_ai.usage.input_tokens": 5, "gen_ai.response.id": 7}, OTHER, {}),
        # No kind attribute, a model and tokens: an LLM call, read as one.
        (
            {"gen_ai.request.model": "m", "gen_ai.usage.output_tokens": 3, "gen_ai.response.id": 7},
            LLM,
            {("gen_ai.response.id",): 1},
        ),
        ({"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": -1}, LLM, {("gen_ai.usage.input_tokens",): 1}),
        # An unusable value is read and counted once, however many steps the reading takes.
        ({"gen_ai.request.model": 4, "gen_ai.usage.input_tokens": 5}, OTHER, {("gen_ai.request.model",): 1}),
    ],
    ids=["tool", "no-kind-no-model", "no-kind-model-and-tokens", "chat", "no-kind-unusable-model"],
)
def test_a_span_is_read_for_the_fields_of_its_kind(normalizer, attrs, kind, counted):
    _, registry = normalizer
    assert view_of(normalizer, attrs).kind == kind
    invalid = registry.metric("agentopz_invalid_attributes_total")
    assert {labels: series.value for labels, series in invalid.items()} == counted


@pytest.mark.parametrize(
    ("code", "error", "status", "counted"),
    [
        ("many", False, "ok", {}),  # not read: the call did not fail
        ("many", True, "error", {("http.response.status_code",): 1}),
        (429, True, "rate_limited", {}),
    ],
)
def test_the_http_status_is_read_for_a_failed_call_only(normalizer, code, error, status, counted):
    _, registry = normalizer
    view = view_of(normalizer, {"gen_ai.operation.name": "chat", "http.response.status_code": code}, error=error)
    assert view.status == status
    invalid = registry.metric("agentopz_invalid_attributes_total")
    assert {labels: series.value for labels, series in invalid.items()} == counted


def test_spans_of_one_shape_share_a_plan_not_their_values(normalizer):
    norm, _ = normalizer
    shape = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    first = view_of(normalizer, {**shape, "gen_ai.usage.input_tokens": 10})
    second = view_of(normalizer, {**shape, "gen_ai.usage.input_tokens": 20})
    assert (first.input_tokens, second.input_tokens) == (10, 20)
    assert list(norm._plans) == ["gen_ai.operation.name\x00gen_ai.request.model\x00gen_ai.usage.input_tokens"]


def test_plans_kept_are_bounded_in_number_and_key_length(normalizer, monkeypatch):
    norm, _ = normalizer
    monkeypatch.setattr(normalize, "MAX_PLANS", 3)
    for index in range(5):
        assert view_of(normalizer, {"gen_ai.request.model": "m", f"key{index}": 1}).model == "m"
    assert [shape.split("\x00")[1] for shape in norm._plans] == ["key2", "key3", "key4"]  # the oldest went first
    long_key = "k" * (normalize.MAX_PLAN_KEY_CHARS - len("gen_ai.request.model") + 1)
    assert view_of(normalizer, {"gen_ai.request.model": "m", long_key: 1}).model == "m"
    assert [shape.split("\x00")[1] for shape in norm._plans] == ["key2", "key3", "key4"]  # read, not kept


@pytest.mark.parametrize(
    ("attrs", "counted"),
    [
        ({"gen_ai.usage.prompt_tokens": -5, "gen_ai.usage.input_tokens": 100}, {}),
        ({"gen_ai.usage.input_tokens": -5, "gen_ai.usage.prompt_tokens": 100}, {("gen_ai.usage.input_tokens",): 1}),
    ],
    ids=["unusable-deprecated-name-first", "unusable-newest-name-first"],
)
def test_an_unusable_value_is_counted_when_it_is_the_one_read_whatever_the_order(normalizer, attrs, counted):
    _, registry = normalizer
    view = view_of(normalizer, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", **attrs})
    assert view.input_tokens == 100
    invalid = registry.metric("agentopz_invalid_attributes_total")
    assert {labels: series.value for labels, series in invalid.items()} == counted


def test_keys_that_join_like_a_kept_shape_get_their_own_reading(normalizer):
    norm, _ = normalizer
    assert view_of(normalizer, {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 5}).kind == LLM
    # One key spelled as the two joined: not the kept plan's two attributes.
    view = view_of(normalizer, {"gen_ai.request.model\x00gen_ai.usage.input_tokens": "m"})
    assert (view.kind, view.model, view.input_tokens) == (OTHER, "", None)
    # Keys holding the separator are not kept, so they can never stand for another span's keys.
    view = view_of(normalizer, {"gen_ai.request.model": "m", "a\x00b": 1, "gen_ai.usage.input_tokens": 5})
    assert (view.kind, view.model, view.input_tokens) == (LLM, "m", 5)
    assert list(norm._plans) == ["gen_ai.request.model\x00gen_ai.usage.input_tokens"]
