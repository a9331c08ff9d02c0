"""Real agent frameworks, set up as their docs say, against the loopback OpenAI stand-in, exporting OTLP
with their own SDK exporters to the service started as a process.

Each agent has a system prompt and one tool: two model calls (a tool call, then the answer), one tool
call, 1200 input tokens (200 cached) and 300 output tokens per call. Each framework runs in its own
environment (`.venv-frameworks/<name>`, `tests/e2e/frameworks/node/<dir>`), made by `scripts/install --test`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price
from support import ROOT, fake_openai
from support.fake_openai import FakeOpenAI
from support.otlp_sinks import GrpcSink, attribute_value
from support.processes import require_binary
from support.service import service_body

AGENTS = Path(__file__).parent / "agents"
NODE = Path(__file__).parent / "node"
SYSTEM_PROMPT = "You are a weather assistant. Call get_weather, then answer in one sentence."
PROMPT_HASH = "sha-" + hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest()[:8]
AGENT = "weather_agent"
CALLS = 2


@dataclass(frozen=True)
class Framework:
    program: str  # in tests/e2e/frameworks/agents, or in the node directory
    environment: str  # .venv-frameworks/<environment>, node/<environment>, or "" for the test venv
    model: str = fake_openai.MODEL  # the model the spans report
    cost_source: str = "catalog"
    cache_read: int = 200  # cached input tokens per call it reports
    prompt_version: str = PROMPT_HASH
    content: bool = True  # the output reaches the quality checks
    env: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        if self.environment.startswith("node/"):
            program = NODE / self.environment.removeprefix("node/") / self.program
            require_installed(program.parent / "node_modules")
            return [require_binary("node"), str(program)]
        python = Path(sys.executable)
        if self.environment:
            python = ROOT / ".venv-frameworks" / self.environment / "bin/python"
            require_installed(python)
        return [str(python), str(AGENTS / self.program)]


def require_installed(path: Path) -> None:
    """A framework's environment; skips (or fails under CI) when scripts/install --test has not made it."""
    if not path.exists():
        message = f"{path} missing: run scripts/install --test"
        if os.environ.get("AGENTOPZ_REQUIRE_ALL"):
            pytest.fail(message)
        pytest.skip(message)


FRAMEWORKS = {
    "pydantic-ai": Framework("pydantic_ai_agent.py", "pydantic_ai"),
    "pydantic-ai-no-content": Framework(
        "pydantic_ai_agent.py",
        "pydantic_ai",
        prompt_version="unknown",
        content=False,
        env={"AGENT_INCLUDE_CONTENT": "0"},
    ),
    "openai-agents": Framework("openai_agents_agent.py", "openai_agents"),
    "langgraph-openinference": Framework(
        "langgraph_agent.py", "langchain", env={"AGENT_INSTRUMENTATION": "openinference"}
    ),
    "langgraph-openllmetry": Framework("langgraph_agent.py", "langchain", env={"AGENT_INSTRUMENTATION": "openllmetry"}),
    "strands": Framework("strands_agent.py", "strands", model="gpt-4o", cost_source="catalog_model_only"),
    "strands-latest-semconv": Framework(
        "strands_agent.py",
        "strands",
        model="gpt-4o",
        cost_source="catalog_model_only",
        env={"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"},
    ),
    "openlit": Framework("openai_client_agent.py", "openlit", env={"AGENT_INSTRUMENTATION": "openlit"}),
    # The contrib instrumentation reports no cached tokens.
    "openai-v2": Framework(
        "openai_client_agent.py",
        "",
        cache_read=0,
        env={
            "AGENT_INSTRUMENTATION": "openai-v2",
            "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY",
        },
    ),
    # Content only in log records (the inference-details event), none on the spans.
    "openai-v2-log-events": Framework(
        "openai_client_agent.py",
        "",
        cache_read=0,
        env={
            "AGENT_INSTRUMENTATION": "openai-v2",
            "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "EVENT_ONLY",
        },
    ),
    "openinference-openai": Framework("openai_client_agent.py", "", env={"AGENT_INSTRUMENTATION": "openinference"}),
    # AI SDK 5's chat model reports no cached tokens.
    "vercel-ai-5": Framework("agent.mjs", "node/ai-v5", cache_read=0),
    "vercel-ai-7": Framework("agent.mjs", "node/ai-v7"),
}


def run_config(run_log: Path, backend: GrpcSink) -> str:
    return service_body(
        runs={
            "grace_seconds": 1.0,
            "tick_seconds": 0.1,
            "root_wait_seconds": 2.0,
            "run_log": {"path": str(run_log)},
            "quality": {"checks": [{"checks": [{"type": "regex", "pattern": "Paris"}]}]},
        },
        exporters={"otlp/downstream": {"endpoint": backend.endpoint, "batch": {"timeout_seconds": 0.05}}},
    )


def wait_for_runs(run_log: Path, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run_log.exists() and run_log.read_text():
            time.sleep(1.5)  # a wrongly split trace would finish a second run within the grace period
            return [json.loads(line) for line in run_log.read_text().splitlines()]
        time.sleep(0.1)
    return []


@dataclass
class Observed:
    """What one framework run produced: run records, the service's metrics, the spans it forwarded."""

    answer: str
    model_requests: int
    records: list[dict]
    metrics: dict[tuple[str, frozenset], float]
    spans: list[tuple[str, dict]]  # (name, attributes) as forwarded
    summary: str  # the spans received, for failure messages: what the framework really sent

    def value(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, lbls), v in self.metrics.items() if n == name and wanted <= lbls)


_observed: dict[str, Observed] = {}


def observe(name: str, start_service, tmp_path: Path) -> Observed:
    """Run the framework's agent once per test session; both tests of a framework read the same run."""
    if name in _observed:
        return _observed[name]
    case = FRAMEWORKS[name]
    run_log = tmp_path / "runs.jsonl"
    with GrpcSink() as backend, FakeOpenAI() as api:
        service = start_service(run_config(run_log, backend))
        env = {
            **os.environ,
            "OPENAI_BASE_URL": api.base_url,
            "OPENAI_API_KEY": "sk-agentopz-test",
            "OTEL_EXPORTER_OTLP_ENDPOINT": service.http_url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": f"fw-{name}",
            "OTEL_METRICS_EXPORTER": "none",
            "AGENT_SYSTEM_PROMPT": SYSTEM_PROMPT,
            **case.env,
        }
        result = subprocess.run(case.argv(), capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, f"agent failed:\n{result.stdout}\n{result.stderr}"
        records = wait_for_runs(run_log)
        spans = []
        lines = []
        for _, _, span in backend.spans():
            attributes = {kv.key: attribute_value(kv) for kv in span.attributes}
            spans.append((span.name, attributes))
            lines.append(f"{span.name} {span.span_id.hex()}<{span.parent_span_id.hex()} {attributes}")
            lines.extend(f"    event {event.name} {[kv.key for kv in event.attributes]}" for event in span.events)
        observed = Observed(
            answer=json.loads(result.stdout.strip().splitlines()[-1])["answer"],
            model_requests=len(api.requests),
            records=records,
            metrics=service.metrics(),
            spans=spans,
            summary="\n".join(lines),
        )
    _observed[name] = observed
    return observed


def call_cost(model: str, cache_read: int) -> float:
    usage = Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=cache_read)
    return float(calc_price(usage, model_ref=model, provider_id="openai").total_price)


@pytest.mark.parametrize("name", list(FRAMEWORKS))
def test_framework_tokens_cost_prompt_version_and_output(start_service, tmp_path, name):
    case = FRAMEWORKS[name]
    run = observe(name, start_service, tmp_path)
    assert "Paris" in run.answer
    assert run.model_requests == CALLS
    assert len(run.records) == 1, f"{run.records}\n{run.summary}"
    [record] = run.records
    cost = CALLS * call_cost(case.model, case.cache_read)
    assert record["outcome"] == "success", run.summary
    assert record["service"] == f"fw-{name}"
    assert record["tokens"] == {
        "input": CALLS * 1200,
        "output": CALLS * 300,
        "cache_read": CALLS * case.cache_read,
        "cache_write": 0,
        "reasoning": 0,
    }, run.summary
    assert record["llm_calls"] == CALLS, run.summary
    assert record["tool_calls"] == 1, run.summary
    assert record["models"] == [case.model], run.summary
    assert math.isclose(record["cost_usd"], cost, rel_tol=1e-9), run.summary
    assert record["cost_complete"] is True
    assert record["prompt_version"] == case.prompt_version, run.summary
    assert record["quality_verdict"] == ("pass" if case.content else "unknown"), run.summary

    calls = {
        dict(labels)["model"]: v for (metric, labels), v in run.metrics.items() if metric == "agentopz_llm_calls_total"
    }
    assert calls == {case.model: CALLS}
    assert math.isclose(run.value("agentopz_llm_cost_usd_total"), cost, rel_tol=1e-9)
    assert run.value("agentopz_llm_unpriced_calls_total") == 0
    sources = [
        attributes["agentopz.cost.source"] for _, attributes in run.spans if "agentopz.cost.source" in attributes
    ]
    assert sources == [case.cost_source] * CALLS, run.summary


@pytest.mark.parametrize("name", list(FRAMEWORKS))
def test_framework_agent_and_steps(start_service, tmp_path, name):
    run = observe(name, start_service, tmp_path)
    [record] = run.records
    assert record["agent"] == AGENT, run.summary
    assert record["steps"] == CALLS, run.summary
    assert record["sub_agents"] == 0, run.summary
    assert run.value("agentopz_runs_total", agent=AGENT, outcome="success") == 1
    assert run.value("agentopz_llm_calls_total", agent=AGENT) == CALLS, run.summary
