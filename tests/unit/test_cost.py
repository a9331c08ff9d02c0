"""Cost: the genai-prices figure by default, overrides first, reported cost as fallback, unknown counted."""

from __future__ import annotations

import math

import pytest
from genai_prices import Usage, calc_price
from support.otlp_proto import make_request, make_span, span_attributes

from agentopz_otel.components import Context
from agentopz_otel.config import ConfigError, parse_config
from agentopz_otel.metrics import Registry
from agentopz_otel.processors.cost import FACTORY as COST
from agentopz_otel.processors.cost import Rates
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.spans import Batch

# The catalogue's rates in USD per token: input, output, cache read, cache write, reasoning.
GPT_4O = Rates(2.5e-06, 1e-05, 1.25e-06, 2.5e-06, 1e-05, "catalog")
GPT_4O_MINI = Rates(1.5e-07, 6e-07, 7.5e-08, 1.5e-07, 6e-07, "catalog")


def run_cost(attrs: dict, config: dict | None = None, registry: Registry | None = None):
    registry = registry or Registry()
    context = Context(metrics=registry)
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    cost = COST.create("cost", COST.config_type.model_validate(config or {}), context)
    request = make_request([make_span("chat", attrs)])
    batch = Batch(request, 1)
    normalize.process(batch)
    cost.process(batch)
    return batch.views[0], span_attributes(request.resource_spans[0].scope_spans[0].spans[0]), registry


def chat(model="gpt-4o", provider="openai", **extra):
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 200,
        **extra,
    }


def unpriced(registry: Registry) -> dict:
    family = next(f for f in registry.families if f.name == "agentopz_llm_unpriced_calls_total")
    return {labels: series.value for labels, series in family.items()}


def test_known_model_costs_what_genai_prices_says():
    view, attrs, _ = run_cost(chat())
    expected = calc_price(
        Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=200), "gpt-4o", provider_id="openai"
    )
    assert float(expected.total_price) == 0.00575  # 1000 x $2.50/M + 200 x $1.25/M + 300 x $10/M
    assert math.isclose(view.cost, 0.00575, rel_tol=1e-12)
    assert attrs["agentopz.cost.source"] == "catalog"
    assert math.isclose(attrs["agentopz.cost.usd"], 0.00575, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("model", "provider", "usage"),
    [
        ("gpt-4o-2024-08-06", "openai", {"input_tokens": 5000, "output_tokens": 1, "cache_read_tokens": 4000}),
        ("gpt-4o-mini", "openai", {"input_tokens": 1, "output_tokens": 7777}),
        (
            "claude-sonnet-4-20250514",
            "anthropic",
            {"input_tokens": 3000, "output_tokens": 50, "cache_write_tokens": 1000},
        ),
        ("o3-mini", "openai", {"input_tokens": 100, "output_tokens": 900, "output_reasoning_tokens": 800}),
    ],
)
def test_cached_rates_match_a_full_catalogue_lookup(model, provider, usage):
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": usage["input_tokens"],
        "gen_ai.usage.output_tokens": usage["output_tokens"],
    }
    for key, attribute in (
        ("cache_read_tokens", "gen_ai.usage.cache_read.input_tokens"),
        ("cache_write_tokens", "gen_ai.usage.cache_write.input_tokens"),
        ("output_reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"),
    ):
        if key in usage:
            attrs[attribute] = usage[key]
    view, _, _ = run_cost(attrs)
    expected = float(calc_price(Usage(**usage), model, provider_id=provider).total_price)
    assert math.isclose(view.cost, expected, rel_tol=1e-9)


def test_override_wins_over_the_catalogue():
    config = {"overrides": [{"model": "gpt-4o*", "input": 1.0, "output": 2.0, "cache_read": 0.5}]}
    view, attrs, _ = run_cost(chat(), config)
    # 1000 x $1/M + 200 x $0.5/M + 300 x $2/M
    assert math.isclose(view.cost, 0.0017, rel_tol=1e-12)
    assert attrs["agentopz.cost.source"] == "override"


def test_regex_override_with_provider_prices_a_self_hosted_model():
    config = {"overrides": [{"model_regex": "llama-3\\.[0-9]+-70b", "provider": "vllm", "input": 0.2, "output": 0.6}]}
    view, _, registry = run_cost(chat(model="llama-3.1-70b", provider="vllm"), config)
    assert math.isclose(view.cost, 1200 * 0.2e-6 + 300 * 0.6e-6, rel_tol=1e-12)
    assert unpriced(registry) == {}


def test_unknown_model_is_counted_not_priced_at_zero():
    registry = Registry()
    view, attrs, _ = run_cost(chat(model="my-finetune-7b", provider="acme"), registry=registry)
    run_cost(chat(model="my-finetune-7b", provider="acme"), registry=registry)
    assert view.cost is None
    assert attrs["agentopz.cost.source"] == "unknown"
    assert "agentopz.cost.usd" not in attrs
    assert unpriced(registry) == {("acme", "my-finetune-7b"): 2}


def test_unknown_model_is_logged_once(caplog):
    from agentopz_otel.processors.cost import CostConfig, CostProcessor

    processor = CostProcessor(CostConfig(), Registry().counter("x", "x", ("provider", "model")))
    for _ in range(3):
        assert processor.pricer("acme", "mystery-model") is None
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "mystery-model" in caplog.records[0].message


def test_unknown_names_do_not_push_known_ones_out_of_the_cache():
    from agentopz_otel.processors.cost import CostConfig, CostProcessor

    processor = CostProcessor(CostConfig(max_cached_models=2), Registry().counter("x", "x", ("provider", "model")))
    known = processor.pricer("openai", "gpt-4o")
    assert known == GPT_4O
    for index in range(5):
        assert processor.pricer("acme", f"mystery-{index}") is None
    assert processor.pricer("openai", "gpt-4o") is known  # the same object: no second lookup


def test_past_the_lookup_rate_a_new_name_is_priced_when_it_comes_again():
    from agentopz_otel.processors.cost import CostConfig, CostProcessor

    processor = CostProcessor(CostConfig(max_lookups_per_second=1), Registry().counter("x", "x", ("provider", "model")))
    assert processor.pricer("acme", "mystery") is None  # the one lookup of this second
    assert processor.pricer("openai", "gpt-4o") is None  # deferred
    assert processor.pricer("openai", "gpt-4o-mini") is None  # deferred
    assert processor.pricer("openai", "gpt-4o") == GPT_4O
    assert processor.pricer("openai", "gpt-4o-mini") == GPT_4O_MINI
    assert processor.pricer("acme", "mystery") is None  # cached


def test_the_catalogues_own_memo_stays_bounded():
    from genai_prices import data_snapshot

    from agentopz_otel.processors.cost import CATALOGUE_MEMO_LIMIT, CostConfig, CostProcessor

    processor = CostProcessor(
        CostConfig(max_lookups_per_second=10_000), Registry().counter("x", "x", ("provider", "model"))
    )
    for index in range(2 * CATALOGUE_MEMO_LIMIT):
        processor.pricer("openai", f"mystery-{index}")
    snapshot = data_snapshot.get_snapshot()
    assert len(snapshot._provider_cache) <= CATALOGUE_MEMO_LIMIT
    assert len(snapshot._provider_misses) <= CATALOGUE_MEMO_LIMIT
    assert processor.pricer("openai", "gpt-4o") == GPT_4O


def test_a_name_too_long_to_cache_is_warned_about_once_and_clipped(caplog):
    from agentopz_otel.processors.cost import CostConfig, CostProcessor

    processor = CostProcessor(CostConfig(), Registry().counter("x", "x", ("provider", "model")))
    huge = "m" * 2**20
    for _ in range(10):
        assert processor.pricer("openai", huge) is None
    assert len(caplog.records) == 1
    assert f"...[{2**20} chars]" in caplog.records[0].message
    assert len(caplog.records[0].message) < 1024


def test_reported_cost_is_used_when_no_price_is_known():
    view, attrs, registry = run_cost(chat(model="my-finetune-7b", provider="acme", **{"operation.cost": 0.0042}))
    assert view.cost == 0.0042
    assert attrs["agentopz.cost.source"] == "reported"
    assert unpriced(registry) == {}


def test_catalogue_price_wins_over_reported_cost():
    view, attrs, _ = run_cost(chat(**{"llm.cost.total": 9.99}))
    assert math.isclose(view.cost, 0.00575, rel_tol=1e-12)
    assert attrs["agentopz.cost.source"] == "catalog"


def test_existing_cost_attributes_are_not_overwritten():
    _, attrs, _ = run_cost(chat(**{"agentopz.cost.source": "override", "agentopz.cost.usd": 1.5}))
    assert attrs["agentopz.cost.usd"] == 1.5
    assert attrs["agentopz.cost.source"] == "override"


def test_override_needs_exactly_one_pattern():
    body = """
receivers: {otlp: {}}
processors:
  normalize: {}
  cost: {overrides: [{input: 1, output: 2}]}
exporters: {prometheus: {}}
service: {pipelines: {traces: {receivers: [otlp], processors: [normalize, cost], exporters: [prometheus]}}}
"""
    with pytest.raises(ConfigError, match=r"processors\.cost\.overrides\.0: Value error, give exactly one of model"):
        parse_config(body)


def catalogue_cost(model: str, provider: str) -> float:
    usage = Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=200)
    return float(calc_price(usage, model, provider_id=provider).total_price)


@pytest.mark.parametrize(
    ("provider", "model", "priced_as", "source"),
    [
        # A framework's name (Strands reports gen_ai.system=strands-agents): priced by the model alone.
        ("strands-agents", "gpt-4o", ("gpt-4o", "openai"), "catalog_model_only"),
        ("", "gpt-4o-mini", ("gpt-4o-mini", "openai"), "catalog_model_only"),
        ("my-gateway", "gpt-4o", ("gpt-4o", "openai"), "catalog_model_only"),
        # An API flavour is its provider.
        ("openai.responses", "gpt-4o", ("gpt-4o", "openai"), "catalog"),
        ("openai.chat", "gpt-4o-2024-08-06", ("gpt-4o-2024-08-06", "openai"), "catalog"),
        # A provider-prefixed model name is the model it names, from that provider.
        ("", "openai/gpt-4o-mini", ("gpt-4o-mini", "openai"), "catalog"),
        ("litellm", "anthropic/claude-sonnet-4-20250514", ("claude-sonnet-4-20250514", "anthropic"), "catalog"),
    ],
)
def test_framework_and_flavour_providers_are_priced_right(provider, model, priced_as, source):
    view, attrs, registry = run_cost(chat(model=model, provider=provider))
    assert attrs["agentopz.cost.source"] == source
    assert math.isclose(view.cost, catalogue_cost(*priced_as), rel_tol=1e-12)
    assert unpriced(registry) == {}


def test_a_known_provider_is_never_priced_with_another_providers_prices():
    # gpt-4o is in the catalogue for openai (and others), not for anthropic.
    view, attrs, registry = run_cost(chat(model="gpt-4o", provider="anthropic"))
    assert view.cost is None
    assert attrs["agentopz.cost.source"] == "unknown"
    assert unpriced(registry) == {("anthropic", "gpt-4o"): 1}
