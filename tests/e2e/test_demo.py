"""The demo fleet (`agentopz-otel demo`) against the real service on the stack's own config.

The demo's runs are plans drawn from the seed, so the test knows every run it sent: the service must
count exactly the planned outcomes, calls, tokens and costs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from genai_prices import Usage, calc_price
from support.admin_api import Admin
from support.demo import STACK_CONFIG, demo_command, stack_body
from support.otlp_sinks import GrpcSink, attribute_value
from support.service import service_body

from agentopz_otel.demo import sticky_conversations
from agentopz_otel.fleet import LIMITS, RESEARCH_SYSTEM, Call, RunPlan, plan_run
from agentopz_otel.processors.runs import RunsConfig

OUTCOMES = {"success", "quality_failure", "llm_error", "tool_error", "budget_exceeded", "timeout", "abandoned", "error"}
SEED = 1
RUNS = 600


def run_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_records(path: Path, count: int, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(records := run_records(path)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return records


def chat_cost(call: Call) -> float:
    usage = Usage(
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        cache_read_tokens=call.cache_read,
        cache_write_tokens=call.cache_write,
    )
    return float(calc_price(usage, model_ref=call.name, provider_id=call.provider).total_price)


def priced(call: Call) -> bool:
    return call.kind == "chat" and call.status == "ok" and call.provider != "vllm"


def plan_cost(plan: RunPlan) -> float:
    return sum(chat_cost(call) for call in plan.calls if priced(call))


def by_labels(service, name: str, *labels: str) -> Counter:
    totals: Counter = Counter()
    for (sample, label_set), value in service.metrics().items():
        if sample == name and value:
            found = dict(label_set)
            totals[tuple(found[label] for label in labels)] += value
    return totals


def test_demo_limits_are_the_stack_limits():
    """The demo sizes its runaway loop and hanging carrier API against the limits the stack config sets."""
    config = RunsConfig.model_validate(yaml.safe_load(STACK_CONFIG.read_text())["processors"]["runs"])
    limits = {
        limit.agent: {key: value for key, value in limit.model_dump().items() if key.startswith("max_") and value}
        for limit in config.limits
    }
    assert limits == LIMITS


def test_plans_are_deterministic_and_cover_every_outcome():
    plans = [plan_run(SEED, index) for index in range(RUNS)]
    assert plans == [plan_run(SEED, index) for index in range(RUNS)]
    assert plans != [plan_run(SEED + 1, index) for index in range(RUNS)]
    assert {plan.intended for plan in plans} == OUTCOMES
    # The canary: v13 gets about 5% of support-triage runs and fails quality far more often than v12.
    support = [plan_run(SEED, index) for index in range(6000)]
    support = [plan for plan in support if plan.agent == "support-triage"]
    canary = [plan for plan in support if plan.prompt_version == "v13"]
    stable = [plan for plan in support if plan.prompt_version == "v12"]
    assert 0.03 < len(canary) / len(support) < 0.07
    assert len(canary) + len(stable) == len(support)

    def quality_failures(plans: list[RunPlan]) -> float:
        return sum(plan.intended == "quality_failure" for plan in plans) / len(plans)

    assert quality_failures(canary) > 4 * quality_failures(stable)
    assert sum(map(plan_cost, canary)) / len(canary) > 5 * sum(map(plan_cost, stable)) / len(stable)
    # The runaway loop is far over both research-assistant limits, every other run stays under them.
    for plan in plans:
        limit = LIMITS.get(plan.agent, {})
        steps = sum(call.kind == "chat" for call in plan.calls)
        over = (
            steps > limit.get("max_steps", math.inf)
            or plan_cost(plan) > limit.get("max_cost_usd", math.inf)
            or plan.duration > limit.get("max_duration_seconds", math.inf)
        )
        assert over == (plan.intended in ("budget_exceeded", "timeout")), plan.index


def test_demo_runs_arrive_with_exactly_the_planned_outcomes_calls_and_costs(start_service, tmp_path):
    run_log = tmp_path / "runs.jsonl"
    service = start_service(stack_body(run_log))
    completed = subprocess.run(
        demo_command(
            "--endpoint",
            service.grpc_endpoint,
            "--runs",
            str(RUNS),
            "--rate",
            "100",
            "--speed",
            "25",
            "--seed",
            str(SEED),
        ),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"done: {RUNS} runs sent;" in completed.stderr
    plans = [plan_run(SEED, index) for index in range(RUNS)]
    records = wait_records(run_log, RUNS)
    assert len(records) == RUNS, service.log()

    # Every run, one by one (matched on everything the record says about it).
    def key(agent, prompt_version, outcome, steps, tools, tool_errors, llm_errors):
        return (agent, prompt_version, outcome, steps, tools, tool_errors, llm_errors)

    research_version = "sha-" + hashlib.sha256(RESEARCH_SYSTEM.encode()).hexdigest()[:8]
    versions = {"research-assistant": research_version, "code-reviewer": "3.2.0", "order-tracker": "unknown"}
    expected = []
    for plan in plans:
        chats = [call for call in plan.calls if call.kind == "chat"]
        tools = [call for call in plan.calls if call.kind == "tool"]
        expected.append(
            (
                key(
                    plan.agent,
                    plan.prompt_version or versions[plan.agent],
                    plan.intended,
                    len(chats),
                    len(tools),
                    sum(call.status != "ok" for call in tools),
                    sum(call.status != "ok" for call in chats),
                ),
                None if plan.crashed else plan.duration,
                None if any(call.provider == "vllm" for call in chats) else plan_cost(plan),
            )
        )
    actual = [
        (
            key(
                r["agent"],
                r["prompt_version"],
                r["outcome"],
                r["steps"],
                r["tool_calls"],
                r["tool_errors"],
                r["llm_errors"],
            ),
            r["duration_seconds"],
            r["cost_usd"] if r["cost_complete"] else None,
        )
        for r in records
    ]
    assert Counter(k for k, _, _ in actual) == Counter(k for k, _, _ in expected)
    expected.sort(key=lambda item: (item[0], item[1] or 0.0))
    actual.sort(key=lambda item: (item[0], item[1] or 0.0))
    for (key_e, duration_e, cost_e), (key_a, duration_a, cost_a) in zip(expected, actual, strict=True):
        assert key_a == key_e
        if duration_e is None:
            assert duration_a is None
        else:
            assert math.isclose(duration_a, duration_e, abs_tol=1e-6), (key_e, duration_a, duration_e)
        if cost_e is None:
            assert cost_a is None
        else:
            assert math.isclose(cost_a, cost_e, rel_tol=1e-9, abs_tol=1e-12), (key_e, cost_a, cost_e)
    runaways = [r for r in records if r["outcome"] == "budget_exceeded"]
    assert len(runaways) == sum(plan.scenario == "runaway" for plan in plans) == 2
    assert all(r["limit_exceeded"] == "max_cost_usd" and r["cost_usd"] > 3 for r in runaways)
    assert {r["limit_exceeded"] for r in records if r["outcome"] == "timeout"} == {"max_duration_seconds"}
    failed_checks = {
        "support-triage": ("refusal", "evaluation:helpfulness"),
        "order-tracker": ("order_status_schema", "evaluation:format"),
        "research-assistant": ("finish_reason", "evaluation:faithfulness"),
        "code-reviewer": ("not_empty", "evaluation:review_usefulness"),
    }
    assert Counter((r["agent"], tuple(r["failed_checks"])) for r in records if r["outcome"] == "quality_failure") == (
        Counter((plan.agent, failed_checks[plan.agent]) for plan in plans if plan.intended == "quality_failure")
    )

    # The metrics: runs by outcome, calls by status, tokens by type, cost by model, unpriced calls.
    runs = by_labels(service, "agentopz_runs_total", "agent", "prompt_version", "outcome")
    assert runs == Counter((k[0], k[1], k[2]) for k, _, _ in expected)
    llm_calls = Counter(
        (plan.agent, call.provider, call.name, call.status)
        for plan in plans
        for call in plan.calls
        if call.kind == "chat"
    )
    assert by_labels(service, "agentopz_llm_calls_total", "agent", "provider", "model", "status") == llm_calls
    assert {status for *_, status in llm_calls} == {"ok", "rate_limited", "server_error"}
    tool_calls = Counter(
        (plan.agent, call.name, call.status) for plan in plans for call in plan.calls if call.kind == "tool"
    )
    assert by_labels(service, "agentopz_tool_calls_total", "agent", "tool", "status") == tool_calls
    assert {status for *_, status in tool_calls} == {"ok", "error"}
    tokens: Counter = Counter()
    for plan in plans:
        for call in plan.calls:
            if call.kind == "chat" and call.status == "ok":
                tokens[(call.name, "input")] += call.input_tokens
                tokens[(call.name, "output")] += call.output_tokens
                tokens[(call.name, "cache_read")] += call.cache_read
                tokens[(call.name, "cache_write")] += call.cache_write
    assert by_labels(service, "agentopz_llm_tokens_total", "model", "token_type") == +tokens
    cost: Counter = Counter()
    for plan in plans:
        for call in plan.calls:
            if priced(call):
                cost[call.name] += chat_cost(call)
    actual_cost = by_labels(service, "agentopz_llm_cost_usd_total", "model")
    assert set(actual_cost) == {(model,) for model in cost}
    for model, value in cost.items():
        assert math.isclose(actual_cost[(model,)], value, rel_tol=1e-9), model
    unpriced = sum(1 for plan in plans for call in plan.calls if call.kind == "chat" and call.provider == "vllm")
    assert unpriced > 0
    assert by_labels(service, "agentopz_llm_unpriced_calls_total", "provider", "model") == {
        ("vllm", "acme-address-parser-7b"): unpriced
    }
    assert service.value("agentopz_late_spans_total") == 0
    assert service.value("agentopz_evicted_runs_total") == 0


def test_demo_over_http_stops_on_sigint_after_its_open_runs_finish(start_service, tmp_path):
    run_log = tmp_path / "runs.jsonl"
    service = start_service(stack_body(run_log))
    process = subprocess.Popen(
        # 10 runs/s for a few seconds: the runaway loop (run 40) does not start, so the drain is short.
        demo_command("--protocol", "http", "--endpoint", service.http_url, "--rate", "10", "--speed", "25"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert service.wait_for("agentopz_runs_total", 5, timeout=30) >= 5
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "until stopped" in stderr
    # The open runs were let finish: none was cut short.
    sent = int(re.search(r"done: (\d+) runs sent; planned outcomes", stderr).group(1))
    assert sent >= 5
    records = wait_records(run_log, sent)
    assert len(records) == sent
    expected = Counter(plan_run(1, index).intended for index in range(sent))
    assert Counter(r["outcome"] for r in records) == expected
    time.sleep(1)
    assert len(run_records(run_log)) == sent


def test_demo_second_sigint_cuts_open_runs_short(start_service, tmp_path):
    run_log = tmp_path / "runs.jsonl"
    service = start_service(stack_body(run_log))
    # At real speed every run is still open after a second.
    process = subprocess.Popen(
        demo_command("--endpoint", service.grpc_endpoint, "--rate", "20"),
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert service.wait_for("agentopz_receiver_spans_total", 10, timeout=30) >= 10
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    match = re.search(r"done: (\d+) runs sent; (\d+) cut short", stderr)
    assert match, stderr
    sent, cut = int(match.group(1)), int(match.group(2))
    assert 0 < cut <= sent
    records = wait_records(run_log, sent)
    assert len(records) == sent
    # A run cut short ends with an error on its agent span: error, or llm_error after a failed call.
    cut_outcomes = Counter(r["outcome"] for r in records) - Counter(
        plan_run(1, index).intended for index in range(sent)
    )
    assert sum(cut_outcomes.values()) <= cut
    assert set(cut_outcomes) <= {"error", "llm_error", "tool_error"}


@pytest.mark.parametrize("argument", ["--rate=0", "--speed=-1"])
def test_demo_rejects_bad_arguments(argument):
    completed = subprocess.run(demo_command(argument), capture_output=True, text=True, timeout=30)
    assert completed.returncode == 2
    assert "must be greater than 0" in completed.stderr


@pytest.mark.parametrize("mean", ["0.9", "inf", "nan"])
def test_demo_rejects_a_conversation_mean_that_is_not_a_number_of_at_least_one(mean):
    completed = subprocess.run(demo_command(f"--conversation-runs={mean}"), capture_output=True, text=True, timeout=30)
    assert completed.returncode == 2
    assert "--conversation-runs must be a number of at least 1" in completed.stderr


def play_demo(runs: int, *args: str) -> subprocess.CompletedProcess:
    """The demo with `args`, `runs` runs played fast; it must exit 0."""
    completed = subprocess.run(
        demo_command(*args, *("--runs", str(runs), "--rate", "200", "--speed", "50", "--seed", str(SEED))),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return completed


def demo_with_flags(service, runs: int, *extra: str) -> subprocess.CompletedProcess:
    """The demo against `service`'s flags, `runs` runs played fast; it must exit 0."""
    return play_demo(runs, "--endpoint", service.grpc_endpoint, "--flags-url", service.admin_url, *extra)


def test_demo_starts_a_canary_and_picks_versions_over_openfeature(start_service, tmp_path):
    """The demo defines support-triage's versions on the service, starts the 5% canary, and every
    support-triage run asks the service for its version over OFREP; the run's agent span carries the
    OpenFeature TracingHook's feature_flag.evaluation event with the version it got."""
    with GrpcSink() as backend:
        extensions = {"storage": {"path": str(tmp_path / "state.sqlite")}, "rollouts": {}}
        downstream = {"endpoint": backend.endpoint, "batch": {"timeout_seconds": 0.05}}
        body = service_body(
            runs={"grace_seconds": 0.2, "tick_seconds": 0.05, "root_wait_seconds": 0.5},
            exporters={"otlp/downstream": downstream},
            extensions=extensions,
        )
        service = start_service(body)
        runs = 600
        completed = demo_with_flags(service, runs)
        assert f"started a 5% canary of support-triage v13 on {service.admin_url}" in completed.stderr
        rollout = Admin(service.admin_url).ok("GET", "/api/v1/rollouts/support-triage")
        assert (rollout["baseline"], rollout["candidate"], rollout["weight"], rollout["state"]) == (
            "v12",
            "v13",
            5,
            "progressing",
        )
        support = sum(plan_run(SEED, index).agent == "support-triage" for index in range(runs))
        assert service.wait_for("agentopz_runs_total", support, agent="support-triage") == support
        evaluations = {
            version: service.value("agentopz_flag_evaluations_total", agent="support-triage", prompt_version=version)
            for version in ("v12", "v13")
        }
        runs_by_version = {
            version: service.value("agentopz_runs_total", agent="support-triage", prompt_version=version)
            for version in ("v12", "v13")
        }
        # One evaluation per run, and each run counted under the version it was served.
        assert evaluations == runs_by_version
        assert sum(evaluations.values()) == support
        assert 0 < evaluations["v13"] < 0.12 * support

        def roots() -> list:
            return [span for _, _, span in backend.spans() if span.name == "invoke_agent support-triage"]

        deadline = time.monotonic() + 20
        while len(roots()) < support and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(roots()) == support
        for span in roots():
            [event] = [event for event in span.events if event.name == "feature_flag.evaluation"]
            attributes = {kv.key: attribute_value(kv) for kv in event.attributes}
            version = {kv.key: attribute_value(kv) for kv in span.attributes}["agentopz.prompt.version"]
            assert attributes["feature_flag.key"] == "support-triage"
            assert attributes["feature_flag.result.variant"] == version
            assert attributes["feature_flag.result.reason"] == "split"
            assert attributes["feature_flag.context.id"].startswith("conv-")


def test_demo_with_sticky_conversations_reuses_each_agents_conversation_ids():
    """--conversation-runs: the runs' spans carry the seed's sticky conversation ids, several runs each."""
    runs = 300
    with GrpcSink() as backend:
        play_demo(runs, "--endpoint", backend.endpoint, "--conversation-runs", "5")
        conversations = sticky_conversations(SEED, 5)
        plans = [plan_run(SEED, index, conversations=conversations) for index in range(runs)]
        expected = {(plan.agent, plan.conversation_id) for plan in plans}
        sent = set()
        for _, _, span in backend.spans():
            attributes = {kv.key: attribute_value(kv) for kv in span.attributes}
            if "gen_ai.conversation.id" in attributes:
                sent.add((attributes["gen_ai.agent.name"], attributes["gen_ai.conversation.id"]))
    assert sent == expected
    assert len(expected) < runs / 3
    assert {plan.conversation_id for plan in plans}.isdisjoint(
        plan_run(SEED, index).conversation_id for index in range(runs)
    )


@pytest.mark.timeout(300)
def test_demo_canary_analysis_mode_rolls_the_worse_version_back_by_itself(start_service, tmp_path):
    extensions = {"storage": {"path": str(tmp_path / "state.sqlite")}, "rollouts": {}}
    extensions["canary_analysis"] = {"interval_seconds": 0.5}
    body = service_body(
        runs={"grace_seconds": 0.2, "tick_seconds": 0.05, "root_wait_seconds": 0.5}, extensions=extensions
    )
    service = start_service(body)
    completed = demo_with_flags(service, 2000, "--canary-analysis")
    assert "canary of support-triage v13 on " + service.admin_url + " under canary analysis" in completed.stderr
    admin = Admin(service.admin_url)
    # The runs' start intervals become evidence a minute (max_run_seconds) after they end.
    deadline = time.monotonic() + 150
    while (rollout := admin.ok("GET", "/api/v1/rollouts/support-triage"))["state"] != "rolled_back":
        assert time.monotonic() < deadline, rollout
        time.sleep(1)
    assert rollout["weight"] == 0
    [entry] = [
        e for e in admin.ok("GET", "/api/v1/history?agent=support-triage")["entries"] if e["action"] == "rollback"
    ]
    assert (entry["actor"], entry["actor_kind"]) == ("canary_analysis", "analysis")
    # v13 answers with a bigger model: it costs more per run (and takes longer); it also fails more.
    assert "cost" in entry["evidence"]["failed_guards"]
    assert set(entry["evidence"]["failed_guards"]) <= {"quality", "cost", "duration"}
    assert (
        service.value("agentopz_rollout_actions_total", agent="support-triage", action="rollback", actor="analysis")
        == 1
    )
