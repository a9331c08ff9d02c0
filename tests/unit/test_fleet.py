"""The synthetic fleet (agentopz_otel.fleet) the demo, the benchmark and the tests' span builders share:
its plans keep to what the agents declare, failures are fast and successes slow, and its encodings are
exact."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from support import bench_script

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


def test_tool_calls_take_their_tools_declared_seconds_and_failures_end_fast():
    assert fleet.AGENTS["support-triage"].tool("search_kb").seconds == (0.08, 0.6)
    # A timeout takes its timeout; a failure that did the work first takes the work's time; the rest end fast.
    assert fleet.KB_TIMEOUT.seconds == (1.5, 1.55)
    assert fleet.CARRIER_TIMEOUT.seconds == (30.0, 30.5)
    assert fleet.TESTS_BROKEN.seconds == (4.0, 9.0)
    assert fleet.KB_UNAVAILABLE.seconds == fleet.PAGE_NOT_FOUND.seconds == fleet.FAILED_CALL_SECONDS
    failures = {
        failure.message: failure for agent in fleet.AGENTS.values() for tool in agent.tools for failure in tool.failures
    }
    seen = set()
    for plan in PLANS:
        for call in plan.calls:
            if call.kind != "tool":
                continue
            tool = fleet.AGENTS[plan.agent].tool(call.name)
            low, high = tool.seconds if call.status == "ok" else failures[call.error_message].seconds
            assert low <= call.end - call.start <= high, (plan.index, call)
            seen.add(call.error_message if call.status != "ok" else "ok")
    assert seen == {
        "ok",
        fleet.KB_TIMEOUT.message,
        fleet.KB_UNAVAILABLE.message,
        fleet.CARRIER_TIMEOUT.message,
        fleet.SEARCH_UNAVAILABLE.message,
        fleet.PAGE_NOT_FOUND.message,
        fleet.TESTS_BROKEN.message,
        fleet.TEST_FLAKY.message,
    }


class _Uniform(random.Random):
    """Returns one set value from random(): an inverse CDF's input, pinned."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_runs_per_conversation_are_geometric_with_the_declared_mean():
    draw = fleet.geometric_runs()
    assert fleet.CONVERSATION_MEAN_RUNS == 6.0
    # P(runs > k) = (5/6)^k: a draw u gives 1 + floor(log(1 - u) / log(5/6)).
    assert [draw(_Uniform(u)) for u in (0.0, 0.16, 0.17, 0.3, 0.31, 0.99)] == [1, 1, 2, 2, 3, 26]
    runs = [draw(random.Random(f"conversations:{index}")) for index in range(20000)]
    assert min(runs) == 1
    assert statistics.fmean(runs) == pytest.approx(6.0, abs=0.15)
    assert runs.count(1) / len(runs) == pytest.approx(1 / 6, abs=0.01)
    assert fleet.geometric_runs(1.0)(random.Random(0)) == 1
    for mean in (0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="at least one run"):
            fleet.geometric_runs(mean)
    with pytest.raises(ValueError, match="at least one run"):
        fleet.fixed_runs(0)


def test_conversations_are_sticky_per_agent_and_seeded():
    conversations = fleet.Conversations(random.Random(3), fleet.fixed_runs(3))
    turns = [(agent, conversations.next(agent)) for agent in ("a", "b", "a", "a", "a", "b", "b", "b")]
    ids = {turn.conversation_id for _, turn in turns}
    assert len(ids) == 4
    assert all(len(id_) == 17 and id_.startswith("conv-") and int(id_[5:], 16) >= 0 for id_ in ids)
    a = [turn for agent, turn in turns if agent == "a"]
    b = [turn for agent, turn in turns if agent == "b"]
    assert [(turn.index, turn.runs, turn.last) for turn in a] == [
        (0, 3, False),
        (1, 3, False),
        (2, 3, True),
        (0, 3, False),
    ]
    assert [turn.index for turn in b] == [0, 1, 2, 0]
    assert a[0].conversation_id == a[1].conversation_id == a[2].conversation_id != a[3].conversation_id
    assert b[0].conversation_id == b[2].conversation_id != b[3].conversation_id
    assert a[0].conversation_id != b[0].conversation_id
    # The same rng state draws the same conversations.
    again = fleet.Conversations(random.Random(3), fleet.fixed_runs(3))
    assert [again.next(agent) for agent, _ in turns] == [turn for _, turn in turns]
    # Geometric by default: a conversation's turns run 0 .. runs - 1, then a new one opens.
    sticky = fleet.Conversations(random.Random(4))
    turns = [sticky.next("a") for _ in range(2000)]
    starts = [turn for turn in turns if turn.index == 0]
    assert len(starts) == len({turn.conversation_id for turn in turns})
    assert len(turns) / len(starts) == pytest.approx(6.0, abs=0.6)


def test_bench_runs_take_the_fleets_latencies_and_a_failed_chat_ends_the_run():
    factory = bench_script().TraceFactory(random.Random(7))
    traces = [factory.trace(agent) for _ in range(300) for agent in fleet.AGENTS]
    failed = [spans for spans in traces if spans[0].error is not None]
    assert len(failed) > 20
    for spans in traces:
        root, calls = spans[0], spans[1:]
        # One call after another, the agent's own work between them, the run ending after the last.
        previous_end = 0.0
        for span in calls:
            gap = span.offset_ms - previous_end
            assert fleet.THINK_SECONDS[0] * 1000 <= gap <= fleet.THINK_SECONDS[1] * 1000
            previous_end = span.offset_ms + span.duration_ms
        assert fleet.THINK_SECONDS[0] * 1000 <= root.duration_ms - previous_end <= fleet.THINK_SECONDS[1] * 1000
        chat_errors = [span for span in calls if span.kind == 3 and span.error is not None]
        if root.error is None:
            assert chat_errors == []
        else:
            # The failed chat call is the run's last span and its error is the run's.
            assert chat_errors == [calls[-1]]
            assert root.error == root.attributes["error.type"] == calls[-1].error
            assert calls[-1].duration_ms <= fleet.FAILED_CALL_SECONDS[1] * 1000
    conversations = [spans[0].attributes.get("gen_ai.conversation.id") for spans in traces]
    semconv = [conversation for conversation in conversations if conversation is not None]
    assert len(semconv) == 1200  # four of the five agents speak the GenAI conventions
    assert len(set(semconv)) < len(semconv) / 3  # runs come in conversations


def test_plans_with_sticky_conversations_differ_only_in_their_conversation_ids():
    conversations = fleet.Conversations(random.Random(9), fleet.fixed_runs(4))
    sticky = [fleet.plan_run(1, index, conversations=conversations) for index in range(400)]
    for plan, same in zip(sticky, PLANS, strict=False):
        assert plan.conversation_id != same.conversation_id
        plan.conversation_id = same.conversation_id
        assert plan == same
    again = fleet.Conversations(random.Random(9), fleet.fixed_runs(4))
    ids = [fleet.plan_run(1, index, conversations=again).conversation_id for index in range(400)]
    by_agent: dict[str, list[str]] = {}
    for plan, conversation_id in zip(PLANS, ids, strict=False):
        by_agent.setdefault(plan.agent, []).append(conversation_id)
    for agent_ids in by_agent.values():
        # Each agent's runs come four to a conversation, in turn.
        assert agent_ids[::4] == list(dict.fromkeys(agent_ids))
        assert all(agent_ids[index] == agent_ids[index - index % 4] for index in range(len(agent_ids)))
