"""A run's prompt version from every source, end to end: the OpenFeature SDK's TracingHook event on any of
the run's spans, and content sent only as OTLP log records (GenAI events), via the real SDK exporters."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from openfeature import api
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from support.sdk_agent import chat_attributes, emit_chat, tracer
from support.service import service_body

SYSTEM = "You are a weather assistant."
SYSTEM_HASH = "sha-" + hashlib.sha256(SYSTEM.encode()).hexdigest()[:8]
AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "weather_agent"}


@pytest.fixture
def runs_service(start_service, tmp_path):
    run_log = tmp_path / "runs.jsonl"
    body = service_body(
        runs={
            "grace_seconds": 0.4,
            "tick_seconds": 0.1,
            "run_log": {"path": str(run_log)},
            "quality": {"checks": [{"checks": [{"type": "regex", "pattern": "Paris"}]}]},
        }
    )
    service = start_service(body)
    service.run_log = run_log
    return service


def wait_runs(service, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = service.run_log.read_text().splitlines() if service.run_log.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    return []


@pytest.fixture
def feature_flags():
    api.set_provider(
        InMemoryProvider({"weather_agent": InMemoryFlag("v7", {"v6": "prompts/weather-6", "v7": "prompts/weather-7"})})
    )
    api.add_hooks([TracingHook()])
    yield api.get_client()
    api.clear_hooks()
    api.clear_providers()


def test_the_variant_a_flag_served_is_the_runs_version(runs_service, feature_flags):
    with tracer("http/protobuf", runs_service.http_url, service="flags") as t:
        with t.start_as_current_span("invoke_agent weather_agent", attributes=AGENT):
            with t.start_as_current_span("load_prompt"):  # the application's own span, not a GenAI one
                prompt = feature_flags.get_string_value(
                    "weather_agent", "prompts/weather-6", EvaluationContext(targeting_key="user-1")
                )
            assert prompt == "prompts/weather-7"
            emit_chat(t, **{"gen_ai.system_instructions": SYSTEM})
        # A run with instructions and no flag keeps the hash.
        with t.start_as_current_span("invoke_agent weather_agent", attributes=AGENT):
            emit_chat(t, **{"gen_ai.system_instructions": SYSTEM})
    records = wait_runs(runs_service, 2)
    assert sorted(record["prompt_version"] for record in records) == sorted(["v7", SYSTEM_HASH])
    assert runs_service.value("agentopz_runs_total", prompt_version="v7", outcome="success") == 1
    # Calls are versioned by what their own span says.
    assert runs_service.value("agentopz_llm_calls_total") == 2


def test_an_explicit_version_beats_the_flag(runs_service, feature_flags):
    with tracer("http/protobuf", runs_service.http_url, service="flags") as t:
        with t.start_as_current_span("invoke_agent weather_agent", attributes=AGENT):
            feature_flags.get_string_value("weather_agent", "prompts/weather-6")
            emit_chat(t, **{"gen_ai.system_instructions": SYSTEM, "agentopz.prompt.version": "pinned-3"})
    [record] = wait_runs(runs_service, 1)
    assert record["prompt_version"] == "pinned-3"


def test_content_sent_only_as_log_records_versions_and_checks_the_run(runs_service):
    """The older GenAI events as OTLP log records, with their content in the body (no content on spans)."""
    logger_provider = LoggerProvider(resource=Resource.create({"service.name": "events"}))
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{runs_service.http_url}/v1/logs"))
    )
    logger = logger_provider.get_logger("genai-events")
    with tracer("http/protobuf", runs_service.http_url, service="events") as t:
        with t.start_as_current_span("invoke_agent weather_agent", attributes=AGENT):
            with t.start_as_current_span("chat gpt-4o", attributes=chat_attributes()):
                logger.emit(event_name="gen_ai.system.message", body={"content": SYSTEM})
                logger.emit(event_name="gen_ai.user.message", body={"content": "Weather in Paris?"})
                logger.emit(
                    event_name="gen_ai.choice",
                    body={
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Paris: sun"},
                    },
                )
    logger_provider.shutdown()
    [record] = wait_runs(runs_service, 1)
    assert record["prompt_version"] == SYSTEM_HASH
    assert record["quality_verdict"] == "pass"
