"""The Prometheus exporter's call metrics (series kept per label combination) and its /metrics handler
under a scraper looping back to back."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agentopz_otel.exporters.prometheus import PrometheusExporter
from agentopz_otel.exposition import BUILD_PAUSE_FACTOR, SLOW_BUILD_SECONDS, metrics_handler, next_build_at
from agentopz_otel.metrics import CardinalityConfig, Registry
from agentopz_otel.spans import NO_TOKENS, Call


def values(registry: Registry, name: str) -> dict:
    family = next(f for f in registry.families if f.name == name)
    return {labels: getattr(series, "value", None) or series.count for labels, series in family.items()}


LLM = Call("llm", "svc", None, "openai", "gpt-4o", "ok", (100, 10, None, None, 2), 0.5, 1.0)


def test_repeated_calls_add_up_in_the_same_series_and_unreported_tokens_make_none():
    registry = Registry()
    exporter = PrometheusExporter(registry)
    exporter.export_calls([LLM, LLM._replace(status="rate_limited", cost=None, duration=None)], "agent")
    exporter.export_calls([LLM], None)  # no run agent: the call's own, else the service
    labels = ("svc", "agent", "openai", "gpt-4o")
    assert values(registry, "agentopz_llm_calls_total") == {
        (*labels, "ok"): 1,
        (*labels, "rate_limited"): 1,
        ("svc", "svc", "openai", "gpt-4o", "ok"): 1,
    }
    tokens = values(registry, "agentopz_llm_tokens_total")
    assert {k[-1]: v for k, v in tokens.items() if k[:4] == labels} == {"input": 200, "output": 20, "reasoning": 4}
    assert values(registry, "agentopz_llm_cost_usd_total") == {labels: 0.5, ("svc", "svc", "openai", "gpt-4o"): 0.5}
    assert values(registry, "agentopz_llm_call_duration_seconds")[labels] == 1  # one observation


def test_a_call_past_a_label_cap_counts_its_overflow_every_time_not_only_the_first():
    registry = Registry(CardinalityConfig(limits={"model": 1}))
    exporter = PrometheusExporter(registry)
    tool = Call("tool", "svc", None, "", "search", "ok", NO_TOKENS, None, 0.2)
    calls = [LLM, LLM._replace(name="other-model"), LLM._replace(name="other-model"), tool, tool]
    exporter.export_calls(calls, "agent")
    assert values(registry, "agentopz_llm_calls_total") == {
        ("svc", "agent", "openai", "gpt-4o", "ok"): 1,
        ("svc", "agent", "openai", "other", "ok"): 2,
    }
    # Each of the two calls of the model past the cap is counted, once per series it touches.
    overflow = values(registry, "agentopz_label_overflow_total")[("model",)]
    assert overflow == 2 * 6  # calls, input, output and reasoning tokens, cost, duration: 6 series
    assert values(registry, "agentopz_tool_calls_total") == {("svc", "agent", "search", "ok"): 2}


async def scrape_twice(registry: Registry, **pause) -> tuple[str, str, float]:
    series = registry.counter("agentopz_test_total", "test").series(())
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry, **pause))
    async with TestClient(TestServer(app)) as client:
        first = await (await client.get("/metrics")).text()
        series.value += 1
        began = time.monotonic()
        second = await (await client.get("/metrics")).text()
    return first, second, time.monotonic() - began


def test_after_a_slow_build_the_next_waits_its_pause_then_is_fresh():
    first, second, waited = asyncio.run(scrape_twice(Registry(), slow_build_seconds=0, pause_factor=200))
    assert "agentopz_test_total 0.0" in first
    assert "agentopz_test_total 1.0" in second
    assert waited > 0.05  # 200 builds' worth of a build of two metrics: some milliseconds at least


def test_after_a_quick_build_every_scrape_is_fresh_at_once():
    first, second, waited = asyncio.run(scrape_twice(Registry()))
    assert "agentopz_test_total 0.0" in first
    assert "agentopz_test_total 1.0" in second
    assert waited < 1.0


@pytest.mark.parametrize(
    ("began", "ended", "next_at"),
    [
        (0.0, 0.0999, 0.0999),  # quicker than slow_build_seconds: at once
        (0.0, 0.1, 0.7),  # exactly slow: six times 0.1 s after it ended
        (10.0, 11.0, 17.0),
    ],
)
def test_the_next_build_waits_six_times_a_slow_build(began, ended, next_at):
    assert next_build_at(began, ended, SLOW_BUILD_SECONDS, BUILD_PAUSE_FACTOR) == pytest.approx(next_at)
