"""Quality: every check on real SDK-emitted runs, content in several dialects, evaluator verdicts."""

from __future__ import annotations

import json
import time

import pytest
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from support.runs import run_records, runs_config, wait_runs
from support.sdk_agent import chat_attributes, emit_chat, emit_tool, tracer
from support.service import service_body

CHECK_SETS = [
    {
        "agent": "json-*",
        "checks": [
            {
                "type": "json_schema",
                "schema": {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}},
            }
        ],
    },
    {
        "agent": "regex-agent",
        "checks": [
            {"type": "regex", "name": "ticket_id", "pattern": "^TICKET-[0-9]+"},
            {"type": "regex", "name": "no_secrets", "pattern": "(?i)password", "must_match": False},
        ],
    },
    {
        "agent": "length-agent",
        "checks": [{"type": "not_empty"}, {"type": "min_length", "value": 5}, {"type": "max_length", "value": 20}],
    },
    {"agent": "refusal-agent", "checks": [{"type": "refusal"}]},
    {"agent": "finish-agent", "checks": [{"type": "finish_reason"}]},
    {
        "agent": "threshold-agent",
        "checks": [
            {"type": "max_steps", "value": 2},
            {"type": "max_tool_calls", "value": 1},
            {"type": "max_tool_errors", "value": 0},
            {"type": "max_cost_usd", "value": 0.01},
            {"type": "max_duration_seconds", "value": 30},
        ],
    },
    {
        "agent": "tools-agent",
        "checks": [
            {"type": "required_tools", "tools": ["search"]},
            {"type": "forbidden_tools", "tools": ["delete_account"]},
        ],
    },
]
EVALUATION_RULES = {
    "relevance": {"min_score": 0.7},
    "toxicity": {"max_score": 0.3},
    "tone": {"pass_labels": ["polite"]},
}


def quality_runs(run_log, check_sets: list[dict] = CHECK_SETS) -> dict:
    return runs_config(run_log, quality={"evaluations": EVALUATION_RULES, "checks": check_sets})


@pytest.fixture
def quality_service(start_service, tmp_path):
    def start(check_sets: list[dict] = CHECK_SETS, env: dict | None = None):
        log_path = tmp_path / f"runs{time.monotonic_ns()}.jsonl"
        service = start_service(service_body(runs=quality_runs(log_path, check_sets)), env=env)
        service.run_log = log_path
        return service

    return start


def semconv_output(text: str) -> dict:
    return {"gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}]}])}


def run(t, agent: str, output: str | None = None, finish: str = "stop", agent_attrs: dict | None = None):
    """One run: an agent span with a chat call whose output is `output` (semconv content capture)."""
    with t.start_as_current_span(
        f"invoke_agent {agent}",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, **(agent_attrs or {})},
    ) as root:
        extra = semconv_output(output) if output is not None else {}
        emit_chat(t, **{"gen_ai.response.finish_reasons": [finish], **extra})
        return format(root.get_span_context().trace_id, "032x")


def checks(service, agent: str) -> dict[tuple[str, str], float]:
    counts = {}
    for (name, labels), value in service.metrics().items():
        labels = dict(labels)
        if name == "agentopz_quality_checks_total" and labels["agent"] == agent:
            counts[(labels["check"], labels["verdict"])] = value
    return counts


def records_by_trace(service, count: int) -> dict[str, dict]:
    return {r["trace_id"]: r for r in wait_runs(service, count)}


def test_json_schema_check(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        good = run(t, "json-agent", '{"answer": "42"}')
        wrong_type = run(t, "json-agent", '{"answer": 42}')
        not_json = run(t, "json-agent", "The answer is 42")
    records = records_by_trace(service, 3)
    assert checks(service, "json-agent") == {("json_schema", "pass"): 1, ("json_schema", "fail"): 2}
    assert (records[good]["outcome"], records[good]["quality_verdict"]) == ("success", "pass")
    for failed in (wrong_type, not_json):
        assert records[failed]["outcome"] == "quality_failure"
        assert records[failed]["failed_checks"] == ["json_schema"]
    assert service.value("agentopz_runs_total", agent="json-agent", outcome="quality_failure") == 2


def test_regex_checks(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        run(t, "regex-agent", "TICKET-123 opened")
        run(t, "regex-agent", "no ticket here")
        run(t, "regex-agent", "TICKET-9, your password is hunter2")
    wait_runs(service, 3)
    assert checks(service, "regex-agent") == {
        ("ticket_id", "pass"): 2,
        ("ticket_id", "fail"): 1,
        ("no_secrets", "pass"): 2,
        ("no_secrets", "fail"): 1,
    }


def test_length_checks(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        run(t, "length-agent", "just right")
        run(t, "length-agent", "   ")
        run(t, "length-agent", "this answer is far too long for the limit")
    wait_runs(service, 3)
    assert checks(service, "length-agent") == {
        ("not_empty", "pass"): 2,
        ("not_empty", "fail"): 1,
        ("min_length", "pass"): 2,
        ("min_length", "fail"): 1,
        ("max_length", "pass"): 2,
        ("max_length", "fail"): 1,
    }


def test_refusal_and_finish_reason_checks(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        run(t, "refusal-agent", "Here is your refund.")
        run(t, "refusal-agent", "I'm sorry, but I can't help with that request.")
        run(t, "finish-agent", "complete answer", finish="stop")
        run(t, "finish-agent", "truncated answ", finish="length")
        run(t, "finish-agent", "", finish="content_filter")
    wait_runs(service, 5)
    assert checks(service, "refusal-agent") == {("refusal", "pass"): 1, ("refusal", "fail"): 1}
    assert checks(service, "finish-agent") == {("finish_reason", "pass"): 1, ("finish_reason", "fail"): 2}


def test_threshold_checks(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        with t.start_as_current_span(
            "invoke_agent threshold-agent",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "threshold-agent"},
        ):
            emit_chat(t)
            emit_tool(t, "search")
        with t.start_as_current_span(
            "invoke_agent threshold-agent",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "threshold-agent"},
        ):
            for _ in range(3):  # 3 steps, $0.01725
                emit_chat(t)
            emit_tool(t, "search", failed=True)
            emit_tool(t, "search")
    wait_runs(service, 2)
    assert checks(service, "threshold-agent") == {
        ("max_steps", "pass"): 1,
        ("max_steps", "fail"): 1,
        ("max_tool_calls", "pass"): 1,
        ("max_tool_calls", "fail"): 1,
        ("max_tool_errors", "pass"): 1,
        ("max_tool_errors", "fail"): 1,
        ("max_cost_usd", "pass"): 1,
        ("max_cost_usd", "fail"): 1,
        ("max_duration_seconds", "pass"): 2,
    }


def test_tool_checks(quality_service):
    service = quality_service()
    for tools in (["search"], ["lookup"], ["search", "delete_account"]):
        with tracer("grpc", service.grpc_endpoint) as t:
            with t.start_as_current_span(
                "invoke_agent tools-agent",
                attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "tools-agent"},
            ):
                for tool in tools:
                    emit_tool(t, tool)
    records = wait_runs(service, 3)
    assert checks(service, "tools-agent") == {
        ("required_tools", "pass"): 2,
        ("required_tools", "fail"): 1,
        ("forbidden_tools", "pass"): 2,
        ("forbidden_tools", "fail"): 1,
    }
    assert sorted(tuple(r["failed_checks"]) for r in records) == [(), ("forbidden_tools",), ("required_tools",)]


VALID = '{"answer": "ok"}'
INVALID = '{"answer": 1}'


def dialect_runs(t, output: str) -> None:
    """The same final output carried by four instrumentation dialects."""
    # OpenInference: agent span with output.value (the agent's output wins over its calls').
    with t.start_as_current_span(
        "agent", attributes={"openinference.span.kind": "AGENT", "agent.name": "json-oi", "output.value": output}
    ):
        emit_chat(t, **{"llm.output_messages.0.message.content": "ignored"})
    # OpenInference flattened messages on the LLM span.
    with t.start_as_current_span("agent", attributes={"openinference.span.kind": "AGENT", "agent.name": "json-oi2"}):
        with t.start_as_current_span(
            "ChatCompletion",
            attributes={
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o",
                "llm.system": "openai",
                "llm.token_count.prompt": 10,
                "llm.token_count.completion": 5,
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": output,
            },
        ):
            pass
    # Vercel AI SDK legacy spans.
    with t.start_as_current_span(
        "ai.generateText", attributes={"ai.operationId": "ai.generateText", "ai.telemetry.functionId": "json-vercel"}
    ):
        with t.start_as_current_span(
            "ai.generateText.doGenerate",
            attributes={
                "ai.operationId": "ai.generateText.doGenerate",
                "ai.model.id": "gpt-4o",
                "ai.model.provider": "openai.chat",
                "ai.usage.promptTokens": 10,
                "ai.usage.completionTokens": 5,
                "ai.response.text": output,
            },
        ):
            pass
    # OpenLLMetry / Traceloop workflow with entity output (JSON-encoded return value).
    with t.start_as_current_span(
        "support.workflow",
        attributes={
            "traceloop.span.kind": "workflow",
            "traceloop.workflow.name": "json-traceloop",
            "traceloop.entity.output": json.dumps(output),
        },
    ):
        emit_chat(t)


@pytest.mark.parametrize(("output", "verdict"), [(VALID, "pass"), (INVALID, "fail")])
def test_content_checks_read_every_dialect(quality_service, output, verdict):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        dialect_runs(t, output)
    records = wait_runs(service, 4)
    assert sorted(r["agent"] for r in records) == ["json-oi", "json-oi2", "json-traceloop", "json-vercel"]
    for record in records:
        assert record["quality_verdict"] == verdict, record
    for agent in ("json-oi", "json-oi2", "json-vercel", "json-traceloop"):
        assert checks(service, agent) == {("json_schema", verdict): 1}


def test_content_capture_off_gives_unknown_not_fail(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        run(t, "json-agent", output=None)
        run(t, "length-agent", output=None)
    records = wait_runs(service, 2)
    assert {(r["quality_verdict"], r["outcome"]) for r in records} == {("unknown", "success")}
    assert checks(service, "json-agent") == {("json_schema", "unknown"): 1}
    assert checks(service, "length-agent") == {
        ("not_empty", "unknown"): 1,
        ("min_length", "unknown"): 1,
        ("max_length", "unknown"): 1,
    }


def evaluations(service, agent: str) -> dict[tuple[str, str], float]:
    counts = {}
    for (name, labels), value in service.metrics().items():
        labels = dict(labels)
        if name == "agentopz_evaluations_total" and labels["agent"] == agent:
            counts[(labels["evaluation"], labels["verdict"])] = value
    return counts


def test_evaluation_results_as_span_events(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        for score in (0.9, 0.2):
            with t.start_as_current_span(
                "invoke_agent judged",
                attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "judged"},
            ):
                with t.start_as_current_span("chat gpt-4o", attributes=chat_attributes()) as chat:
                    chat.add_event(
                        "gen_ai.evaluation.result",
                        {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": score},
                    )
    records = wait_runs(service, 2)
    assert sorted((r["quality_verdict"], r["outcome"]) for r in records) == [
        ("fail", "quality_failure"),
        ("pass", "success"),
    ]
    assert sorted(r["failed_checks"] for r in records) == [[], ["evaluation:relevance"]]
    # Each run record carries its scores by evaluation: what the canary analysis's score guard reads.
    assert sorted(r["scores"]["relevance"] for r in records) == [0.2, 0.9]
    assert evaluations(service, "judged") == {("relevance", "pass"): 1, ("relevance", "fail"): 1}
    assert service.value("agentopz_evaluation_score_sum", agent="judged") == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("evaluation", "score", "verdict"),
    [
        ("relevance", 0.7, "pass"),  # exactly min_score
        ("relevance", 0.69, "fail"),
        ("toxicity", 0.3, "pass"),  # exactly max_score
        ("toxicity", 0.31, "fail"),
    ],
)
def test_evaluation_thresholds_are_inclusive(quality_service, evaluation, score, verdict):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        with t.start_as_current_span(
            "invoke_agent judged", attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "judged"}
        ):
            with t.start_as_current_span("chat gpt-4o", attributes=chat_attributes()) as chat:
                chat.add_event(
                    "gen_ai.evaluation.result",
                    {"gen_ai.evaluation.name": evaluation, "gen_ai.evaluation.score.value": score},
                )
    [record] = wait_runs(service, 1)
    assert record["quality_verdict"] == verdict
    assert record["outcome"] == ("success" if verdict == "pass" else "quality_failure")
    assert evaluations(service, "judged") == {(evaluation, verdict): 1}


def test_openinference_annotations(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        with t.start_as_current_span(
            "agent",
            attributes={
                "openinference.span.kind": "AGENT",
                "agent.name": "annotated",
                "annotations.0.annotation.name": "tone",
                "annotations.0.annotation.label": "rude",
                "annotations.1.annotation.name": "correctness",
                "annotations.1.annotation.label": "correct",
            },
        ):
            emit_chat(t)
    [record] = wait_runs(service, 1)
    assert record["outcome"] == "quality_failure"
    assert record["failed_checks"] == ["evaluation:tone"]
    assert evaluations(service, "annotated") == {("tone", "fail"): 1, ("correctness", "pass"): 1}


def log_emitter(transport: str, service):
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    if transport == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        exporter = OTLPLogExporter(endpoint=service.grpc_endpoint, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        exporter = OTLPLogExporter(endpoint=f"{service.http_url}/v1/logs")
    provider = LoggerProvider(resource=Resource.create({"service.name": "judge"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider


@pytest.mark.parametrize("transport", ["grpc", "http/protobuf"])
def test_evaluation_results_as_log_records_during_the_run(quality_service, transport):
    service = quality_service()
    provider = log_emitter(transport, service)
    logger = provider.get_logger("judge")
    with tracer(transport, service.grpc_endpoint if transport == "grpc" else service.http_url) as t:
        with t.start_as_current_span(
            "invoke_agent logged", attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "logged"}
        ):
            with t.start_as_current_span("chat", attributes=chat_attributes()):
                logger.emit(
                    event_name="gen_ai.evaluation.result",
                    attributes={"gen_ai.evaluation.name": "tone", "gen_ai.evaluation.score.label": "rude"},
                )
    provider.shutdown()
    [record] = wait_runs(service, 1)
    assert record["outcome"] == "quality_failure"
    assert record["failed_checks"] == ["evaluation:tone"]
    assert service.value("agentopz_receiver_log_records_total", transport=transport.split("/")[0]) == 1


def test_a_late_evaluation_counts_but_does_not_rewrite_the_outcome(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        with t.start_as_current_span(
            "invoke_agent late",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "late",
                "agentopz.prompt.version": "v9",
            },
        ) as root:
            emit_chat(t, **{"gen_ai.response.id": "chatcmpl-late-1"})
            context = root.get_span_context()
    [record] = wait_runs(service, 1)
    assert record["outcome"] == "success"
    provider = log_emitter("grpc", service)
    logger = provider.get_logger("judge")
    # An LLM-as-judge a while later: matched by the evaluated span, and one by response id only.
    with trace.use_span(trace.NonRecordingSpan(context)):
        logger.emit(
            event_name="gen_ai.evaluation.result",
            attributes={"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.1},
        )
    logger.emit(
        event_name="gen_ai.evaluation.result",
        attributes={
            "gen_ai.evaluation.name": "tone",
            "gen_ai.evaluation.score.label": "polite",
            "gen_ai.response.id": "chatcmpl-late-1",
        },
    )
    provider.shutdown()
    deadline = time.monotonic() + 5
    while sum(evaluations(service, "late").values()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert evaluations(service, "late") == {("relevance", "fail"): 1, ("tone", "pass"): 1}
    assert service.value("agentopz_evaluations_total", prompt_version="v9") == 2
    assert service.value("agentopz_runs_total", agent="late", outcome="success") == 1
    assert service.value("agentopz_runs_total", agent="late", outcome="quality_failure") == 0
    assert len(run_records(service)) == 1


PLUGIN = """
from agentopz_otel.processors.quality import CheckResult, FAIL, PASS, UNKNOWN


def polite(run, options):
    if run.output is None:
        return CheckResult(UNKNOWN, "no output")
    banned = [word for word in options["banned"] if word in run.output.lower()]
    return CheckResult(FAIL, "said " + ", ".join(banned)) if banned else CheckResult(PASS)


def broken(run, options):
    raise RuntimeError("plugin bug")
"""


def install_plugin(path) -> str:
    """Install a check package the way pip would: a module plus dist-info with its entry points."""
    (path / "politeness_check.py").write_text(PLUGIN)
    info = path / "politeness_check-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: politeness-check\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[agentopz_otel.checks]\npolite = politeness_check:polite\nbroken = politeness_check:broken\n"
    )
    return str(path)


def test_plugin_check_installed_through_its_entry_point(quality_service, tmp_path):
    plugins = tmp_path / "site"
    plugins.mkdir()
    plugin_checks = {
        "agent": "plugin-agent",
        "checks": [
            {"type": "plugin", "plugin": "polite", "options": {"banned": ["stupid"]}},
            {"type": "plugin", "plugin": "broken", "name": "flaky"},
        ],
    }
    service = quality_service([*CHECK_SETS, plugin_checks], env={"PYTHONPATH": install_plugin(plugins)})
    with tracer("grpc", service.grpc_endpoint) as t:
        run(t, "plugin-agent", "Thanks for asking!")
        run(t, "plugin-agent", "What a stupid question.")
    records = wait_runs(service, 2)
    assert checks(service, "plugin-agent") == {("polite", "pass"): 1, ("polite", "fail"): 1, ("flaky", "error"): 2}
    # The raising check is never a pass: the polite run is unknown, the rude one fails.
    assert sorted(r["quality_verdict"] for r in records) == ["fail", "unknown"]
    assert "plugin bug" in service.log()


def test_unknown_plugin_is_a_config_error(tmp_path):
    from agentopz_otel.config import ConfigError, parse_config

    runs = quality_runs(tmp_path / "x", [{"agent": "*", "checks": [{"type": "plugin", "plugin": "nope"}]}])
    body = service_body(runs=runs).format(grpc_port=1, http_port=2, admin_port=3)
    with pytest.raises(ConfigError, match=r"no entry point 'nope' in group agentopz_otel\.checks"):
        parse_config(body)


def test_failed_run_keeps_its_error_outcome_even_with_failing_checks(quality_service):
    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        with t.start_as_current_span(
            "invoke_agent json-fail",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "json-fail"},
        ) as root:
            emit_chat(t, **semconv_output("not json"))
            root.set_status(Status(StatusCode.ERROR))
    [record] = wait_runs(service, 1)
    assert (record["outcome"], record["quality_verdict"]) == ("error", "fail")


def test_openinference_evaluator_spans_inside_the_run_and_linked_from_another_trace(quality_service):
    from opentelemetry.trace import Link

    service = quality_service()
    with tracer("grpc", service.grpc_endpoint) as t:
        with t.start_as_current_span(
            "invoke_agent evaluated",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "evaluated"},
        ) as root:
            emit_chat(t)
            # An evaluator run inside the agent's trace: its verdict counts for this run.
            with t.start_as_current_span(
                "hallucination check",
                attributes={
                    "openinference.span.kind": "EVALUATOR",
                    "metadata.evaluator_name": "hallucination",
                    "metadata.label": "hallucinated",
                },
            ):
                pass
            target = root.get_span_context()
    [record] = wait_runs(service, 1)
    assert (record["outcome"], record["failed_checks"]) == ("quality_failure", ["evaluation:hallucination"])
    # Later, an evaluator in its own trace, linked to the run's root span.
    with tracer("grpc", service.grpc_endpoint, service="evals") as t:
        span = t.start_span(
            "relevance eval",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            links=[Link(target)],
            attributes={
                "openinference.span.kind": "EVALUATOR",
                "metadata.evaluator_name": "relevance",
                "metadata.score": 0.95,
            },
        )
        span.end()
    deadline = time.monotonic() + 5
    while ("relevance", "pass") not in evaluations(service, "evaluated") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert evaluations(service, "evaluated") == {("hallucination", "fail"): 1, ("relevance", "pass"): 1}
    assert service.value("agentopz_runs_total", agent="evaluated") == 1
