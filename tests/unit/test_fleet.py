"""The synthetic fleet (agentopz_otel.fleet) the demo, the benchmark and the tests' span builders share:
its plans keep to what the agents declare, failures are fast and successes slow, and its encodings are
exact."""

from __future__ import annotations

import random
import statistics

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

from agentopz_otel import fleet
from agentopz_otel.records import BUDGET_EXCEEDED

PLANS = [fleet.plan_run(1, index) for index in range(3000)]


def test_plans_use_only_what_their_agent_declares():
    for plan in PLANS:
        agent = fleet.AGENTS[plan.agent]
        assert plan.service == agent.service
        assert plan.agent_version == agent.agent_version
        for call in plan.calls:
            if call.kind == "chat":
                assert call.name in agent.models, (plan.index, call.name)
                assert call.provider == fleet.MODELS[call.name].provider
            else:
                tool = agent.tool(call.name)
                if call.status != "ok":
                    assert (call.error_type, call.error_message, call.http_status) in {
                        (failure.type, failure.message, failure.http_status) for failure in tool.failures
                    }


def test_the_demo_plays_every_agent_with_a_share_in_proportion():
    assert [agent.name for agent in fleet.DEMO_AGENTS] == [
        "support-triage",
        "order-tracker",
        "research-assistant",
        "code-reviewer",
    ]
    assert sum(agent.share for agent in fleet.DEMO_AGENTS) == pytest.approx(1.0)
    counts = dict.fromkeys(fleet.AGENTS, 0)
    for plan in PLANS:
        counts[plan.agent] += 1
    assert counts["sql-analyst"] == 0
    for agent in fleet.DEMO_AGENTS:
        assert counts[agent.name] / len(PLANS) == pytest.approx(agent.share, abs=0.03)


def test_failed_calls_answer_far_faster_than_successful_ones():
    def durations(ok: bool) -> list[float]:
        return [
            call.end - call.start
            for plan in PLANS
            for call in plan.calls
            if call.kind == "chat" and (call.status == "ok") == ok
        ]

    failed, answered = durations(False), durations(True)
    assert len(failed) > 100
    assert fleet.FAILED_CALL_SECONDS == (0.08, 0.4)
    assert min(failed) >= 0.08 and max(failed) <= 0.4
    assert statistics.median(answered) > 5 * statistics.median(failed)


def test_storm_window_and_runaway_run_are_where_declared():
    assert [fleet.in_storm(index) for index in (299, 300, 419, 420, 1499, 1500)] == [
        False,
        True,
        True,
        False,
        False,
        True,
    ]
    runaway = PLANS[fleet.RUNAWAY_OFFSET]
    assert (runaway.agent, runaway.scenario, runaway.intended) == ("research-assistant", "runaway", BUDGET_EXCEEDED)
    steps = sum(call.kind == "chat" for call in runaway.calls)
    assert fleet.RUNAWAY_ITERATIONS[0] + 1 <= steps <= fleet.RUNAWAY_ITERATIONS[1] + 1
    assert steps > fleet.LIMITS["research-assistant"]["max_steps"]

    # Only a storm's OpenAI calls are rate limited more than now and then.
    def rate_limited(plans: list[fleet.RunPlan]) -> float:
        calls = [call for plan in plans for call in plan.calls if call.provider == fleet.OPENAI]
        return sum(call.status == "rate_limited" for call in calls) / len(calls)

    storm = [plan for plan in PLANS if fleet.in_storm(plan.index)]
    calm = [plan for plan in PLANS if not fleet.in_storm(plan.index)]
    assert rate_limited(storm) > 0.4
    assert rate_limited(calm) < 0.04


def test_span_builders_give_exact_genai_attributes():
    assert fleet.chat_attributes("gpt-4o", "openai") == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
    }
    assert fleet.usage_attributes(1200, 300) == {"gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300}
    assert fleet.usage_attributes(1200, 300, 0, 64) == {
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 0,
        "gen_ai.usage.cache_creation.input_tokens": 64,
    }
    assert fleet.tool_attributes("search_kb") == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "search_kb",
    }


def test_otlp_attributes_encode_each_type_exactly():
    encoded = fleet.otlp_attributes({"b": True, "i": 7, "f": 0.5, "a": ["x", 2], "s": "text", "o": None})
    assert encoded == [
        KeyValue(key="b", value=AnyValue(bool_value=True)),
        KeyValue(key="i", value=AnyValue(int_value=7)),
        KeyValue(key="f", value=AnyValue(double_value=0.5)),
        KeyValue(
            key="a",
            value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="x"), AnyValue(int_value=2)])),
        ),
        KeyValue(key="s", value=AnyValue(string_value="text")),
        KeyValue(key="o", value=AnyValue(string_value="None")),
    ]


def test_a_failed_demo_call_carries_its_failure_and_no_usage():
    plan = next(plan for plan in PLANS if any(call.status == "rate_limited" for call in plan.calls))
    call = next(call for call in plan.calls if call.status == "rate_limited")
    attributes = fleet.call_attributes(plan, call, random.Random(0))
    assert attributes["error.type"] == "RateLimitError"
    assert attributes["http.response.status_code"] == 429
    assert attributes["server.address"] == "api.openai.com"
    assert not any(key.startswith("gen_ai.usage.") or key.startswith("gen_ai.response.") for key in attributes)
