"""Runs: spans assembled into runs with exact outcomes, totals and metrics, via the real SDK exporters."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
import time

import pytest
from opentelemetry.trace import Status, StatusCode
from support import TESTS
from support.otlp_proto import make_span
from support.runs import agent_run, raw_run, run_records, runs_config, send, wait_runs
from support.sdk_agent import chat_attributes, emit_chat, emit_tool, tracer
from support.service import service_body

GPT4O_CALL = 0.00575  # 1200 in (200 cached) + 300 out on gpt-4o, per genai-prices


@pytest.fixture
def runs_service(start_service, tmp_path):
    def start(max_open: int = 1000):
        log_path = tmp_path / f"runs-{max_open}.jsonl"
        service = start_service(service_body(runs=runs_config(log_path, max_open)))
        service.run_log = log_path
        return service

    return start


@pytest.mark.parametrize("transport", ["grpc", "http/protobuf"])
def test_a_run_with_calls_and_tools_has_exact_totals(runs_service, transport):
    service = runs_service()
    endpoint = service.grpc_endpoint if transport == "grpc" else service.http_url
    with tracer(transport, endpoint, service="support-svc") as t:
        with agent_run(t, "support", **{"agentopz.prompt.version": "v3"}) as root:
            emit_chat(t)
            emit_tool(t, "search")
            emit_chat(t)
            emit_tool(t, "lookup")
            trace_id = format(root.get_span_context().trace_id, "032x")
    [record] = wait_runs(service, 1)
    assert record["trace_id"] == trace_id
    assert (record["service"], record["agent"], record["prompt_version"]) == ("support-svc", "support", "v3")
    assert record["outcome"] == "success"
    assert math.isclose(record["cost_usd"], 2 * GPT4O_CALL, rel_tol=1e-9)
    assert record["tokens"] == {"input": 2400, "output": 600, "cache_read": 400, "cache_write": 0, "reasoning": 0}
    assert (record["steps"], record["llm_calls"], record["tool_calls"], record["tool_errors"]) == (2, 2, 2, 0)
    assert record["models"] == ["gpt-4o"]
    # The agent span's own times, as the SDK stamped them.
    assert record["duration_seconds"] == (root.end_time - root.start_time) / 1e9 > 0
    labels = {"service": "support-svc", "agent": "support", "prompt_version": "v3"}
    assert service.value("agentopz_runs_total", outcome="success", **labels) == 1
    assert math.isclose(service.value("agentopz_run_cost_usd_sum", **labels), 2 * GPT4O_CALL, rel_tol=1e-9)
    assert math.isclose(
        service.value("agentopz_run_cost_usd_total", outcome="success", **labels), 2 * GPT4O_CALL, rel_tol=1e-9
    )
    assert service.value("agentopz_run_steps_sum", **labels) == 2
    assert service.value("agentopz_run_tool_calls_sum", **labels) == 2
    assert service.value("agentopz_run_duration_seconds_count", **labels) == 1
    assert service.value("agentopz_run_last_finished_timestamp_seconds", agent="support") > 1.7e9
    # The SDK exports the agent span after its calls: they wait for it and carry its name.
    assert service.value("agentopz_tool_calls_total", agent="support", tool="search", status="ok") == 1
    assert service.value("agentopz_llm_calls_total", agent="support", status="ok") == 2
    assert service.value("agentopz_llm_calls_total", agent="support-svc") == 0


def test_a_new_prompt_version_starts_every_outcome_at_zero(runs_service):
    """increase() ignores what a series held when it appeared: a version's series are born at 0."""
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint, service="svc") as t:
        with agent_run(t, "support", **{"agentopz.prompt.version": "v2"}):
            emit_chat(t)
        wait_runs(service, 1)
        with agent_run(t, "support", **{"agentopz.prompt.version": "v2"}):
            emit_chat(t)
    wait_runs(service, 2)
    series = {
        dict(labels)["outcome"]: value
        for (name, labels), value in service.metrics().items()
        if name == "agentopz_runs_total" and dict(labels).get("prompt_version") == "v2"
    }
    cost_series = {
        dict(labels)["outcome"]
        for (name, labels), value in service.metrics().items()
        if name == "agentopz_run_cost_usd_total" and dict(labels).get("prompt_version") == "v2"
    }
    assert cost_series == set(series)
    assert series == {
        "success": 2,
        "quality_failure": 0,
        "llm_error": 0,
        "tool_error": 0,
        "budget_exceeded": 0,
        "timeout": 0,
        "abandoned": 0,
        "error": 0,
    }


def test_prompt_version_of_the_run_comes_from_its_calls(runs_service):
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint) as t, agent_run(t, "support"):
        emit_chat(t, **{"gen_ai.system_instructions": "Be helpful."})
    [record] = wait_runs(service, 1)
    assert record["prompt_version"] == "sha-" + hashlib.sha256(b"Be helpful.").hexdigest()[:8]
    assert service.value("agentopz_runs_total", prompt_version=record["prompt_version"]) == 1


def test_split_batches_and_reordering_make_one_run(runs_service):
    service = runs_service()
    root, chat, tool = raw_run(b"\x11" * 16)
    send(service, [root])  # the root first, children later in separate requests
    send(service, [tool])
    send(service, [chat])
    [record] = wait_runs(service, 1)
    assert (record["agent"], record["llm_calls"], record["tool_calls"], record["outcome"]) == ("raw", 1, 1, "success")
    assert record["duration_seconds"] == 2.0
    assert math.isclose(record["cost_usd"], GPT4O_CALL, rel_tol=1e-9)


def test_deep_nesting_arriving_bottom_up_is_one_run(runs_service):
    service = runs_service()
    trace_id = b"\x12" * 16
    root, _, _ = raw_run(trace_id, agent="deep")
    chain = make_span("chain", {"openinference.span.kind": "CHAIN"}, trace_id=trace_id, parent=root.span_id)
    tool = make_span(
        "execute_tool t", {"gen_ai.operation.name": "execute_tool"}, trace_id=trace_id, parent=chain.span_id
    )
    chat = make_span("chat", chat_attributes(), trace_id=trace_id, parent=tool.span_id)
    for span in (chat, tool, chain, root):
        send(service, [span])
    [record] = wait_runs(service, 1)
    assert (record["agent"], record["llm_calls"], record["tool_calls"]) == ("deep", 1, 1)


def test_a_second_process_contributes_tool_spans(runs_service):
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint, service="orchestrator") as t:
        with agent_run(t, "planner") as root:
            context = root.get_span_context()
            emit_chat(t)
            script = textwrap.dedent(f"""
                import sys
                sys.path.insert(0, {str(TESTS)!r})
                from support.sdk_agent import emit_tool, tracer
                from opentelemetry import trace
                from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
                parent = SpanContext({context.trace_id}, {context.span_id}, is_remote=True,
                                     trace_flags=TraceFlags(1))
                with tracer("grpc", {service.grpc_endpoint!r}, service="tools-svc") as t:
                    with trace.use_span(NonRecordingSpan(parent)):
                        emit_tool(t, "fetch")
                        emit_tool(t, "fetch", failed=True)
            """)
            subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    [record] = wait_runs(service, 1)
    assert (record["service"], record["agent"]) == ("orchestrator", "planner")
    assert (record["llm_calls"], record["tool_calls"], record["tool_errors"]) == (1, 2, 1)
    assert record["outcome"] == "success"  # the agent recovered from the failed fetch
    assert service.value("agentopz_tool_calls_total", service="tools-svc", tool="fetch", status="error") == 1


def test_a_retry_loop_that_recovers_is_success_and_visible_in_call_metrics(runs_service):
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint) as t, agent_run(t, "retrier"):
        emit_chat(t, error_type="429")
        emit_chat(t, error_type="429")
        emit_chat(t)
    [record] = wait_runs(service, 1)
    assert (record["outcome"], record["llm_calls"], record["llm_errors"]) == ("success", 3, 2)
    assert service.value("agentopz_llm_calls_total", status="rate_limited") == 2
    assert service.value("agentopz_llm_calls_total", status="ok") == 1


def failing_run(t, agent: str, body) -> None:
    with agent_run(t, agent) as root:
        body()
        root.set_status(Status(StatusCode.ERROR, "run failed"))


@pytest.mark.parametrize(
    ("agent", "body", "outcome"),
    [
        ("llm-fail", lambda t: (emit_chat(t), emit_chat(t, error_type="InternalServerError")), "llm_error"),
        ("rate-limited", lambda t: emit_chat(t, error_type="429"), "llm_error"),
        ("tool-fail", lambda t: (emit_chat(t), emit_tool(t, "db", failed=True)), "tool_error"),
        # The 429 was recovered from; the failure that ended the run was the tool's.
        (
            "mixed",
            lambda t: (emit_chat(t, error_type="429"), emit_chat(t), emit_tool(t, "db", failed=True)),
            "tool_error",
        ),
        ("plain-fail", lambda t: emit_chat(t), "error"),
        ("bad-request", lambda t: emit_chat(t, error_type="BadRequestError"), "error"),
    ],
)
def test_failed_run_outcomes(runs_service, agent, body, outcome):
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        failing_run(t, agent, lambda: body(t))
    [record] = wait_runs(service, 1)
    assert record["outcome"] == outcome
    assert service.value("agentopz_runs_total", agent=agent, outcome=outcome) == 1
    # Wasted spend: what the failed run cost is counted under its outcome, none under success.
    assert record["cost_usd"] > 0
    assert math.isclose(
        service.value("agentopz_run_cost_usd_total", agent=agent, outcome=outcome), record["cost_usd"], rel_tol=1e-9
    )
    assert service.value("agentopz_run_cost_usd_total", agent=agent, outcome="success") == 0


def test_limits_give_budget_exceeded_and_timeout(runs_service):
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        with agent_run(t, "spender"):
            for _ in range(2):  # 2 x $0.00575 > $0.01
                emit_chat(t)
        with agent_run(t, "looper"):
            for _ in range(4):
                emit_chat(t, model="gpt-4o-mini")
        with agent_run(t, "slow"):
            emit_chat(t)
            time.sleep(0.1)
        with agent_run(t, "within"):
            emit_chat(t)
    records = {r["agent"]: r for r in wait_runs(service, 4)}
    assert records["spender"]["outcome"] == "budget_exceeded"
    assert records["spender"]["limit_exceeded"] == "max_cost_usd"
    assert records["looper"]["outcome"] == "budget_exceeded"
    assert records["looper"]["limit_exceeded"] == "max_steps"
    assert records["slow"]["outcome"] == "timeout"
    assert records["within"]["outcome"] == "success"


@pytest.mark.parametrize(
    ("agent", "calls", "outcome", "limit_exceeded"),
    [
        ("steps-edge", 2, "success", None),  # exactly max_steps: 2
        ("steps-edge", 3, "budget_exceeded", "max_steps"),
        ("cost-edge", 2, "success", None),  # exactly max_cost_usd: 2 x $0.25 = $0.5
        ("cost-edge", 3, "budget_exceeded", "max_cost_usd"),
    ],
)
def test_a_run_exactly_at_its_limit_is_within_it(runs_service, agent, calls, outcome, limit_exceeded):
    service = runs_service()
    trace_id = bytes([0x50 + calls]) * 16
    agent_attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent}
    root = make_span(f"invoke_agent {agent}", agent_attributes, trace_id=trace_id)
    # A model the catalogue does not know with the cost the span reports: exact binary fractions.
    reported = chat_attributes(model="house-model", provider="acme", **{"gen_ai.usage.cost": 0.25})
    chats = [make_span("chat house-model", reported, trace_id=trace_id, parent=root.span_id) for _ in range(calls)]
    send(service, [*chats, root])
    [record] = wait_runs(service, 1)
    assert (record["agent"], record["steps"], record["outcome"]) == (agent, calls, outcome)
    assert record["cost_usd"] == 0.25 * calls
    assert record.get("limit_exceeded") == limit_exceeded


def test_sub_agents_calls_are_steps_of_the_outer_run_and_carry_its_agent(runs_service):
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint) as t, agent_run(t, "outer"):
        emit_chat(t)
        with t.start_as_current_span("execute_tool delegate", attributes={"gen_ai.operation.name": "execute_tool"}):
            with agent_run(t, "inner"):
                emit_chat(t)
                emit_chat(t)
    [record] = wait_runs(service, 1)
    assert record["agent"] == "outer"
    # Steps are the LLM calls, the sub-agent's included; the nested agent span is not a step.
    assert (record["llm_calls"], record["sub_agents"], record["steps"], record["tool_calls"]) == (3, 1, 3, 1)
    assert service.value("agentopz_llm_calls_total", agent="outer") == 3
    assert service.value("agentopz_llm_calls_total", agent="inner") == 0
    assert service.value("agentopz_runs_total", agent="inner") == 0


def test_an_agent_span_directly_inside_one_of_the_same_agent_is_not_a_sub_agent(runs_service):
    """OpenLLMetry's LangGraph instrumentation: invoke_agent X > X.workflow (invoke_agent X) > the calls."""
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint) as t, agent_run(t, "weather"), agent_run(t, "weather"):
        emit_chat(t)
        with agent_run(t, "helper"):
            emit_chat(t)
    [record] = wait_runs(service, 1)
    assert (record["agent"], record["steps"], record["sub_agents"]) == ("weather", 2, 1)


def test_two_top_level_agents_in_one_trace_are_two_runs(runs_service):
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        with t.start_as_current_span("POST /chat"):
            with agent_run(t, "triage"):
                emit_chat(t)
            with agent_run(t, "resolver"):
                emit_chat(t)
                emit_chat(t)
    records = {r["agent"]: r for r in wait_runs(service, 2)}
    assert records["triage"]["trace_id"] == records["resolver"]["trace_id"]
    assert (records["triage"]["llm_calls"], records["resolver"]["llm_calls"]) == (1, 2)
    time.sleep(0.6)
    assert len(run_records(service)) == 2


def test_llm_calls_without_an_agent_span_are_one_run_of_the_root(runs_service):
    service = runs_service()
    with tracer("grpc", service.grpc_endpoint, service="rag-api") as t:
        with t.start_as_current_span("GET /answer"):
            emit_chat(t)
            emit_chat(t)
    [record] = wait_runs(service, 1)
    assert (record["agent"], record["llm_calls"], record["outcome"]) == ("rag-api", 2, "success")


def test_a_crashed_run_with_no_root_is_abandoned(runs_service):
    service = runs_service()
    trace_id = b"\x13" * 16
    _, chat, tool = raw_run(trace_id)
    send(service, [chat, tool])
    assert service.wait_for("agentopz_runs_in_flight", 1) == 1
    [record] = wait_runs(service, 1, timeout=6)
    assert record["outcome"] == "abandoned"
    assert record["duration_seconds"] is None
    assert (record["llm_calls"], record["tool_calls"]) == (1, 1)
    assert service.value("agentopz_runs_total", outcome="abandoned") == 1
    assert service.value("agentopz_runs_in_flight") == 0


def test_in_flight_gauges_show_a_looping_run_before_it_ends(runs_service):
    service = runs_service()
    trace_id = b"\x14" * 16
    root, _, _ = raw_run(trace_id, agent="looper")
    calls = [make_span("chat", chat_attributes(), trace_id=trace_id, parent=root.span_id) for _ in range(5)]
    send(service, calls, service_name="loop-svc")
    assert service.wait_for("agentopz_in_flight_run_max_steps", 5, service="loop-svc") == 5
    assert math.isclose(
        service.value("agentopz_in_flight_run_max_cost_usd", service="loop-svc"), 5 * GPT4O_CALL, rel_tol=1e-9
    )
    assert service.value("agentopz_runs_in_flight", service="loop-svc") == 1
    assert service.value("agentopz_open_runs") == 1


def test_late_spans_count_in_calls_not_runs(runs_service):
    service = runs_service()
    root, chat, tool = raw_run(b"\x15" * 16)
    send(service, [root, chat])
    wait_runs(service, 1)
    send(service, [tool, make_span("chat", chat_attributes(), trace_id=b"\x15" * 16, parent=root.span_id)])
    assert service.wait_for("agentopz_late_spans_total", 2) == 2
    assert service.value("agentopz_llm_calls_total") == 2
    time.sleep(0.6)
    assert service.value("agentopz_runs_total") == 1
    assert service.value("agentopz_run_steps_sum") == 1


def test_eviction_at_the_open_run_cap(runs_service):
    service = runs_service(max_open=2)
    for index in range(3):
        trace_id = bytes([0x20 + index]) * 16
        _, chat, _ = raw_run(trace_id)
        send(service, [chat])
    assert service.wait_for("agentopz_evicted_runs_total", 1) == 1
    assert service.value("agentopz_evicted_runs_total", reason="capacity") == 1
    assert service.value("agentopz_runs_in_flight") == 2


def test_shutdown_finishes_runs_in_their_grace_period(runs_service):
    service = runs_service()
    root, chat, _ = raw_run(b"\x16" * 16, agent="flushed")
    send(service, [chat, root])
    service.stop()
    [record] = run_records(service)
    assert (record["agent"], record["outcome"]) == ("flushed", "success")


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_root_span_is_forwarded_with_run_totals_and_the_run_log_as_otlp_logs(start_service, tmp_path, protocol):
    from support.otlp_sinks import SINKS, attribute_value

    with SINKS[protocol]() as backend:
        exporters = {"otlp/backend": {"endpoint": backend.endpoint, "protocol": protocol}}
        service = start_service(service_body(runs=runs_config(tmp_path / "runs.jsonl"), exporters=exporters))
        with tracer("grpc", service.grpc_endpoint, service="support-svc") as t:
            with agent_run(t, "support", **{"agentopz.prompt.version": "v3"}) as root:
                emit_chat(t)
                emit_tool(t, "search")
                emit_chat(t)
                root_id = root.get_span_context().span_id.to_bytes(8, "big")
                trace_id = root.get_span_context().trace_id.to_bytes(16, "big")
        assert backend.wait_for_spans(4) == 4
        deadline = time.monotonic() + 10
        while not backend.log_records() and time.monotonic() < deadline:
            time.sleep(0.05)
        [forwarded_root] = [span for _, _, span in backend.spans() if span.span_id == root_id]
        added = {kv.key: attribute_value(kv) for kv in forwarded_root.attributes if kv.key.startswith("agentopz.")}
        assert math.isclose(added.pop("agentopz.cost.usd"), 2 * GPT4O_CALL, rel_tol=1e-9)
        assert added == {
            "agentopz.prompt.version": "v3",
            "agentopz.run.outcome": "success",
            "agentopz.run.steps": 2,
            "agentopz.run.tool_calls": 1,
            "agentopz.quality.verdict": "unknown",
            "agentopz.quality.failed_checks": (),
        }
        [record] = backend.log_records()
    assert record.event_name == "agentopz.run"
    assert (record.trace_id, record.span_id) == (trace_id, root_id)
    logged = json.loads(record.body.string_value)
    assert (logged["agent"], logged["outcome"], logged["steps"], logged["tool_calls"]) == ("support", "success", 2, 1)
    assert service.value("agentopz_exporter_sent_log_records_total") == 1
    assert service.value("agentopz_exporter_sent_spans_total") == 4


def test_spans_under_an_llm_call_do_not_become_abandoned_runs(runs_service):
    service = runs_service()
    root, chat, _ = raw_run(b"\x30" * 16, agent="with-http")
    http_client = make_span(
        "POST /v1/chat/completions", {"http.request.method": "POST"}, trace_id=b"\x30" * 16, parent=chat.span_id
    )
    send(service, [chat, root])
    send(service, [http_client])  # listed after its LLM parent: waits for a parent that is never a node
    wait_runs(service, 1)
    time.sleep(2.0)  # past abandon_after_seconds
    assert [r["outcome"] for r in run_records(service)] == ["success"]
    assert service.value("agentopz_runs_total") == 1


def test_a_local_root_with_a_remote_parent_is_a_run_not_abandoned(runs_service):
    service = runs_service()
    trace_id = b"\x31" * 16
    server = make_span("GET /answer", {"http.route": "/answer"}, trace_id=trace_id, parent=b"\x77" * 8)
    server.flags = 0x300  # the parent span is in a process that does not send here
    calls = [make_span("chat", chat_attributes(), trace_id=trace_id, parent=server.span_id) for _ in range(2)]
    send(service, [*calls, server], service_name="rag-api")
    [record] = wait_runs(service, 1, timeout=6)
    assert (record["agent"], record["outcome"], record["llm_calls"]) == ("rag-api", "success", 2)
    # No agent known from the trace: the calls keep the service name.
    assert service.value("agentopz_llm_calls_total", service="rag-api", agent="rag-api") == 2


def test_non_genai_root_listed_before_its_calls_in_one_request(runs_service):
    service = runs_service()
    trace_id = b"\x32" * 16
    server = make_span("GET /answer", {}, trace_id=trace_id)
    call = make_span("chat", chat_attributes(), trace_id=trace_id, parent=server.span_id)
    send(service, [server, call], service_name="rag-api")
    [record] = wait_runs(service, 1)
    assert (record["agent"], record["outcome"], record["llm_calls"]) == ("rag-api", "success", 1)
    time.sleep(2.0)
    assert service.value("agentopz_runs_total") == 1


def test_spans_delivered_again_after_their_run_finished_are_duplicates_not_a_second_run(runs_service):
    service = runs_service()
    root, chat, _ = raw_run(b"\x33" * 16)
    send(service, [chat, root])
    wait_runs(service, 1)
    send(service, [chat, root])
    assert service.wait_for("agentopz_duplicate_spans_total", 2) == 2
    time.sleep(0.6)
    assert service.value("agentopz_late_spans_total") == 0
    assert service.value("agentopz_runs_total") == 1
    assert service.value("agentopz_llm_calls_total", agent="raw") == 1
    assert math.isclose(service.value("agentopz_llm_cost_usd_total"), GPT4O_CALL, rel_tol=1e-9)
    assert math.isclose(service.value("agentopz_run_cost_usd_sum"), GPT4O_CALL, rel_tol=1e-9)


def test_a_trace_over_the_span_cap_is_not_assembled_further(start_service, tmp_path):
    service = start_service(service_body(runs=runs_config(tmp_path / "r.jsonl", max_spans_per_trace=3)))
    trace_id = b"\x34" * 16
    tools = [
        make_span(
            "execute_tool t",
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t"},
            trace_id=trace_id,
            parent=bytes([i + 1]) * 8,
        )
        for i in range(5)
    ]
    send(service, tools)
    # Each tool span adds two ids (itself and its awaited parent): the third span on is left out.
    assert service.wait_for("agentopz_unassembled_spans_total", 3) == 3
    # Still counted as calls: the three left out at once, the two assembled when their run is abandoned.
    assert service.wait_for("agentopz_tool_calls_total", 5) == 5


def test_sub_agent_spans_are_forwarded_too(start_service, tmp_path):
    from support.otlp_sinks import GrpcSink

    with GrpcSink() as backend:
        exporters = {"otlp/backend": {"endpoint": backend.endpoint, "protocol": "grpc"}}
        service = start_service(service_body(runs=runs_config(tmp_path / "runs.jsonl"), exporters=exporters))
        with tracer("grpc", service.grpc_endpoint) as t, agent_run(t, "outer"):
            with agent_run(t, "inner"):
                emit_chat(t)
        assert backend.wait_for_spans(3) == 3
        names = sorted(span.name for _, _, span in backend.spans())
    assert names == ["chat gpt-4o", "invoke_agent inner", "invoke_agent outer"]


def openinference(kind: str, **attributes) -> dict:
    return {"openinference.span.kind": kind, **attributes}


OPENINFERENCE_CHAT = openinference(
    "LLM",
    **{
        "llm.model_name": "gpt-4o-2024-08-06",
        "llm.provider": "openai",
        "llm.token_count.prompt": 1200,
        "llm.token_count.completion": 300,
        "llm.token_count.prompt_details.cache_read": 200,
    },
)


def langgraph_react_agent(trace_id: bytes) -> list:
    """The spans of LangGraph create_react_agent(name="weather_agent") with one tool, as
    openinference-instrumentation-langchain exports them (end order): the graph's root AGENT span
    carries the name only as its span name; its nodes are AGENT spans named `agent` whose metadata
    names the LangGraph node."""
    root = make_span("weather_agent", openinference("AGENT", metadata='{"ls_integration": "langgraph"}'), trace_id)

    def node(name: str, kind: str, step: int):
        metadata = f'{{"ls_integration": "langgraph", "langgraph_step": {step}, "langgraph_node": "{name}"}}'
        return make_span(name, openinference(kind, metadata=metadata), trace_id, parent=root.span_id)

    first, tools, second = node("agent", "AGENT", 1), node("tools", "CHAIN", 2), node("agent", "AGENT", 3)
    spans = []
    for agent_node in (first, second):
        sequence = make_span("RunnableSequence", openinference("CHAIN"), trace_id, parent=agent_node.span_id)
        chat = make_span("ChatOpenAI", OPENINFERENCE_CHAT, trace_id, parent=sequence.span_id)
        spans += [chat, sequence, agent_node]
        if agent_node is first:
            tool = make_span("get_weather", openinference("TOOL", **{"tool.name": "get_weather"}), trace_id)
            tool.parent_span_id = tools.span_id
            spans += [tool, tools]
    return [*spans, root]


def openai_agents_run(trace_id: bytes) -> list:
    """One Agent(name="weather_agent") run of the OpenAI Agents SDK with one tool, as
    openinference-instrumentation-openai-agents exports it (end order): the root AGENT span is the
    workflow (`Agent workflow`, no name of its own), the named agent span is below it."""
    workflow = make_span("Agent workflow", openinference("AGENT"), trace_id)
    chain = make_span("Agent workflow", openinference("CHAIN"), trace_id, parent=workflow.span_id)
    agent = make_span(
        "weather_agent",
        openinference("AGENT", **{"agent.name": "weather_agent", "graph.node.id": "weather_agent"}),
        trace_id,
        parent=chain.span_id,
    )
    spans = []
    for turn_index in range(2):
        turn = make_span("turn", openinference("CHAIN"), trace_id, parent=agent.span_id)
        spans.append(make_span("generation", OPENINFERENCE_CHAT, trace_id, parent=turn.span_id))
        if turn_index == 0:
            tool = openinference("TOOL", **{"tool.name": "get_weather"})
            spans.append(make_span("get_weather", tool, trace_id, parent=turn.span_id))
        spans.append(turn)
    return [*spans, agent, chain, workflow]


@pytest.mark.parametrize("arrival", ["one request", "span by span"])
@pytest.mark.parametrize("shape", [langgraph_react_agent, openai_agents_run])
def test_framework_agents_are_named_and_their_steps_are_llm_calls(runs_service, shape, arrival):
    service = runs_service()
    spans = shape(b"\x41" * 16)
    for part in [spans] if arrival == "one request" else [[span] for span in spans]:
        send(service, part, service_name="weather-svc")
    [record] = wait_runs(service, 1)
    assert (record["agent"], record["outcome"]) == ("weather_agent", "success")
    assert (record["steps"], record["llm_calls"], record["tool_calls"], record["sub_agents"]) == (2, 2, 1, 0)
    assert math.isclose(record["cost_usd"], 2 * GPT4O_CALL, rel_tol=1e-9)
    labels = {"service": "weather-svc", "agent": "weather_agent"}
    assert service.value("agentopz_runs_total", outcome="success", **labels) == 1
    assert service.value("agentopz_run_steps_sum", **labels) == 2
    assert service.value("agentopz_llm_calls_total", **labels) == 2
    assert service.value("agentopz_tool_calls_total", tool="get_weather", **labels) == 1
    assert service.value("agentopz_llm_calls_total") == 2


def test_agent_name_from_attributes_first_then_from_the_span_name(runs_service):
    service = runs_service()
    named_by_attribute = make_span("planner span", openinference("AGENT", **{"agent.name": "planner"}), b"\x42" * 16)
    named_by_convention = make_span("invoke_agent booker", {"gen_ai.operation.name": "invoke_agent"}, b"\x43" * 16)
    named_by_span = make_span("researcher", openinference("AGENT"), b"\x44" * 16)
    spans = []
    for root in (named_by_attribute, named_by_convention, named_by_span):
        spans += [make_span("chat", chat_attributes(), trace_id=root.trace_id, parent=root.span_id), root]
    send(service, spans)
    records = wait_runs(service, 3)
    assert sorted(r["agent"] for r in records) == ["booker", "planner", "researcher"]
    for agent in ("booker", "planner", "researcher"):
        assert service.value("agentopz_llm_calls_total", agent=agent) == 1


def test_a_named_outer_agent_keeps_its_name_over_a_named_inner_one(runs_service):
    service = runs_service()
    trace_id = b"\x45" * 16
    outer = make_span("triage", openinference("AGENT", **{"agent.name": "triage"}), trace_id)
    inner = make_span("billing", openinference("AGENT", **{"agent.name": "billing"}), trace_id, parent=outer.span_id)
    chat = make_span("chat", chat_attributes(), trace_id=trace_id, parent=inner.span_id)
    send(service, [chat, inner, outer])
    [record] = wait_runs(service, 1)
    assert (record["agent"], record["steps"], record["sub_agents"]) == ("triage", 1, 1)
    assert service.value("agentopz_llm_calls_total", agent="triage") == 1


def test_spans_sent_twice_by_the_sdk_count_once(runs_service):
    service = runs_service()
    # Two exporters on one provider: every span reaches the service twice, as after a retried export.
    with tracer("grpc", service.grpc_endpoint, service="support-svc", copies=2) as t:
        with agent_run(t, "support"):
            emit_chat(t)
            emit_tool(t, "search")
            emit_chat(t)
    [record] = wait_runs(service, 1)
    time.sleep(0.6)  # a second run would have finished by now
    assert service.value("agentopz_duplicate_spans_total") == 4
    assert (record["steps"], record["tool_calls"]) == (2, 1)
    labels = {"service": "support-svc", "agent": "support"}
    assert service.value("agentopz_runs_total", **labels) == 1
    assert service.value("agentopz_run_steps_sum", **labels) == 2
    assert math.isclose(service.value("agentopz_run_cost_usd_sum", **labels), 2 * GPT4O_CALL, rel_tol=1e-9)
    assert service.value("agentopz_llm_calls_total", **labels) == 2
    assert service.value("agentopz_llm_tokens_total", token_type="input", **labels) == 2400
    assert service.value("agentopz_llm_tokens_total", token_type="cache_read", **labels) == 400
    assert math.isclose(service.value("agentopz_llm_cost_usd_total", **labels), 2 * GPT4O_CALL, rel_tol=1e-9)
    assert service.value("agentopz_llm_call_duration_seconds_count", **labels) == 2
    assert service.value("agentopz_tool_calls_total", **labels) == 1
    assert service.value("agentopz_tool_call_duration_seconds_count", **labels) == 1


def test_remembered_span_ids_are_bounded_oldest_finished_trace_first(start_service, tmp_path):
    config = runs_config(tmp_path / "runs.jsonl", max_remembered_span_ids=2)
    service = start_service(service_body(runs=config))
    service.run_log = tmp_path / "runs.jsonl"
    first, second = raw_run(b"\x46" * 16, agent="first"), raw_run(b"\x47" * 16, agent="second")
    send(service, [first[1], first[0]])
    wait_runs(service, 1)
    send(service, [second[1], second[0]])  # exactly the budget: the finished first trace is forgotten
    wait_runs(service, 2)
    send(service, [second[1], first[1]])
    assert service.wait_for("agentopz_duplicate_spans_total", 1) == 1
    # The first trace's call was forgotten, so it counts again (with its own, abandoned, run).
    assert service.wait_for("agentopz_llm_calls_total", 3) == 3
    assert service.value("agentopz_llm_calls_total", agent="second") == 1


def test_the_built_in_default_config_assembles_runs(start_service):
    service = start_service(None)  # no --config: agentopz_otel/default_config.yaml
    with tracer("grpc", service.grpc_endpoint, service="default-svc") as t:
        failing_run(t, "support", lambda: emit_chat(t, error_type="429"))
    labels = {"service": "default-svc", "agent": "support", "prompt_version": "unknown"}
    # The default grace period is 5 s after the root arrived.
    assert service.wait_for("agentopz_runs_total", 1, outcome="llm_error", **labels) == 1
    assert service.value("agentopz_runs_total") == 1
    assert service.value("agentopz_llm_calls_total", service="default-svc", agent="support", status="rate_limited") == 1


def test_held_calls_count_when_a_named_top_level_agent_arrives_not_only_at_the_end(start_service, tmp_path):
    service = start_service(service_body(runs=runs_config(tmp_path / "runs.jsonl", grace_seconds=60)))
    root, chat, tool = raw_run(b"\x48" * 16, agent="support")
    send(service, [chat, tool])
    time.sleep(0.5)
    assert service.value("agentopz_llm_calls_total") == 0  # held: the agent of their run is not known yet
    send(service, [root])
    assert service.wait_for("agentopz_llm_calls_total", 1, agent="support") == 1
    assert service.value("agentopz_tool_calls_total", agent="support", tool="search") == 1
    assert service.value("agentopz_runs_total") == 0  # the run is still in its grace period


# -- open runs across a restart ------------------------------------------------------------------


def checkpointed_body(tmp_path, **checkpoint) -> str:
    runs = runs_config(tmp_path / "runs.jsonl", grace_seconds=2.0, abandon_after_seconds=4.0)
    runs["checkpoint"] = {"storage": "storage", "interval_seconds": 0.3, **checkpoint}
    return service_body(runs=runs, extensions={"storage": {"path": str(tmp_path / "state.sqlite")}})


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_open_runs_stay_whole_across_a_restart(start_service, tmp_path, stop):
    """Half of each run before the restart, the rest after: one run each, exact totals, no abandoned."""
    body = checkpointed_body(tmp_path)
    first = start_service(body)
    split_root, split_chat, split_tool = raw_run(b"\x31" * 16, agent="split")
    second_chat = make_span("chat gpt-4o", chat_attributes(), trace_id=split_root.trace_id, parent=split_root.span_id)
    waiting_root, waiting_chat, _ = raw_run(b"\x32" * 16, agent="in-grace")
    send(first, [split_chat, split_tool])  # the root comes after the restart
    send(first, [waiting_chat, waiting_root])  # the root is in, the run in its grace period
    if stop == "sigterm":
        assert first.stop() == 0
        assert "2 open runs saved for the next start" in first.log()
    else:
        time.sleep(0.8)  # past a periodic save
        first.process.kill()
        first.process.wait()
    first.run_log = tmp_path / "runs.jsonl"
    assert run_records(first) == []

    second = start_service(body)
    second.run_log = first.run_log
    assert "2 open runs restored from the checkpoint" in second.log()
    send(second, [second_chat, split_root])
    records = {record["agent"]: record for record in wait_runs(second, 2)}
    time.sleep(0.5)
    assert len(run_records(second)) == 2
    split = records["split"]
    assert (split["outcome"], split["steps"], split["llm_calls"], split["tool_calls"]) == ("success", 2, 2, 1)
    assert math.isclose(split["cost_usd"], 2 * GPT4O_CALL, rel_tol=1e-9)
    assert split["tokens"]["input"] == 2400
    waiting = records["in-grace"]
    assert (waiting["outcome"], waiting["steps"], waiting["tool_calls"]) == ("success", 1, 0)
    assert math.isclose(waiting["cost_usd"], GPT4O_CALL, rel_tol=1e-9)
    assert second.value("agentopz_runs_total", outcome="abandoned") == 0
    assert second.value("agentopz_runs_total", outcome="success") == 2
    assert second.value("agentopz_evicted_runs_total") == 0


def test_without_a_checkpoint_a_restart_counts_the_runs_it_loses(runs_service):
    service = runs_service()
    for index in range(3):
        root, chat, _ = raw_run(bytes([0x40 + index]) * 16, agent="unfinished")
        send(service, [chat])  # roots never come before the stop
    root, chat, _ = raw_run(b"\x4f" * 16, agent="complete")
    send(service, [chat, root])
    assert service.stop() == 0
    assert "3 runs waiting for their root at shutdown are lost" in service.log()
    [record] = run_records(service)
    assert (record["agent"], record["outcome"]) == ("complete", "success")
