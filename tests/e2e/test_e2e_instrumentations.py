"""Real OpenAI instrumentations -> SDK OTLP exporter -> the service: each dialect priced and counted exactly.

The real `openai` client talks to a loopback stand-in for the Chat Completions API (tests/support/fake_openai.py).
Each instrumentation runs in its own subprocess, so instrumentors never patch the same client twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from genai_prices import Usage, calc_price
from support import TESTS, fake_openai
from support.fake_openai import FakeOpenAI
from support.otlp_sinks import GrpcSink, attribute_value, config_body

SYSTEM_PROMPT = "You are terse."

AGENT_SCRIPT = r"""
import json
import sys

try:
    import httpx2
except ImportError:
    pass
else:
    # openai>=3 moved to the httpx2 fork; instrumentations that still import httpx share its classes.
    httpx2.alias_httpx()

module, base_url, transport, endpoint, service, system_prompt, tests_dir = sys.argv[1:]
sys.path.insert(0, tests_dir)

import importlib

from support.sdk_agent import exporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": service}))
provider.add_span_processor(SimpleSpanProcessor(exporter(transport, endpoint)))
importlib.import_module(module).OpenAIInstrumentor().instrument(tracer_provider=provider)

import openai

client = openai.OpenAI(base_url=base_url, api_key="sk-agentopz-test", max_retries=0)
response = client.chat.completions.create(
    model="gpt-4o",
    messages=[
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": "What is the capital of France?"},
    ],
)
provider.shutdown()
print(json.dumps({"model": response.model, "content": response.choices[0].message.content,
                  "usage": response.usage.model_dump()}))
"""


@dataclass(frozen=True)
class Instrumentation:
    module: str
    transport: str
    span_name: str
    tokens: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cache_read(self) -> int:
        return self.tokens.get("cache_read", 0)


INSTRUMENTATIONS = {
    # OpenInference (Arize): llm.* attributes, flattened messages.
    "openinference": Instrumentation(
        module="openinference.instrumentation.openai",
        transport="grpc",
        span_name="ChatCompletion",
        tokens={"input": 1200, "output": 300, "cache_read": 200, "reasoning": 0},
    ),
    # OpenLLMetry (Traceloop): gen_ai.* attributes plus gen_ai.usage.reasoning_tokens.
    "openllmetry": Instrumentation(
        module="opentelemetry.instrumentation.openai",
        transport="http/protobuf",
        span_name="openai.chat",
        tokens={"input": 1200, "output": 300, "cache_read": 200, "reasoning": 0},
    ),
    # The OpenTelemetry contrib instrumentation: semconv gen_ai.*, no cache tokens; content only when opted in.
    "openai-v2": Instrumentation(
        module="opentelemetry.instrumentation.openai_v2",
        transport="grpc",
        span_name="chat gpt-4o",
        tokens={"input": 1200, "output": 300},
        env={
            "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY",
        },
    ),
}


def run_agent(case: Instrumentation, api: FakeOpenAI, endpoint: str, service: str) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            AGENT_SCRIPT,
            *(case.module, api.base_url, case.transport, endpoint, service, SYSTEM_PROMPT, str(TESTS)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **case.env},
    )
    assert result.returncode == 0, f"agent failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "name",
    [
        "openinference",
        "openllmetry",
        "openai-v2",
    ],
)
def test_openai_instrumentation_is_priced_and_counted(start_service, name):
    case = INSTRUMENTATIONS[name]
    service_name = f"e2e-{name}"
    with GrpcSink() as backend, FakeOpenAI() as api:
        service = start_service(config_body({"endpoint": backend.endpoint, "batch": {"timeout_seconds": 0.05}}))
        endpoint = service.grpc_endpoint if case.transport == "grpc" else service.http_url
        reply = run_agent(case, api, endpoint, service_name)

        assert reply["model"] == fake_openai.MODEL
        assert reply["content"] == fake_openai.ANSWER
        assert [(method, path, body["model"]) for method, path, body in api.requests] == [
            ("POST", "/v1/chat/completions", "gpt-4o")
        ]

        labels = {"service": service_name, "agent": service_name, "provider": "openai", "model": fake_openai.MODEL}
        assert service.wait_for("agentopz_llm_calls_total", 1, **labels) == 1
        assert service.value("agentopz_llm_calls_total") == 1
        assert service.value("agentopz_llm_calls_total", **labels, status="ok") == 1
        assert service.value("agentopz_llm_call_duration_seconds_count", **labels) == 1
        tokens = {
            dict(series)["token_type"]: value
            for (metric, series), value in service.metrics().items()
            if metric == "agentopz_llm_tokens_total"
        }
        assert tokens == case.tokens
        assert service.value("agentopz_llm_tokens_total", **labels, token_type="input") == 1200
        assert service.value("agentopz_llm_tokens_total", **labels, token_type="output") == 300

        usage = Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=case.cache_read)
        expected_cost = float(calc_price(usage, model_ref=fake_openai.MODEL, provider_id="openai").total_price)
        assert math.isclose(expected_cost, 0.00575 if case.cache_read else 0.006, rel_tol=1e-9)
        cost = service.value("agentopz_llm_cost_usd_total", **labels)
        assert math.isclose(cost, expected_cost, rel_tol=1e-9)
        assert service.value("agentopz_llm_unpriced_calls_total") == 0

        assert backend.wait_for_spans(1, timeout=5) == 1
        [(resource, _, span)] = backend.spans()
        attributes = {kv.key: attribute_value(kv) for kv in span.attributes}
        assert span.name == case.span_name
        assert {kv.key: attribute_value(kv) for kv in resource.attributes}["service.name"] == service_name
        assert math.isclose(attributes["agentopz.cost.usd"], expected_cost, rel_tol=1e-9)
        assert attributes["agentopz.cost.source"] == "catalog"
        assert attributes["agentopz.prompt.version"] == "sha-" + hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest()[:8]
        assert len(attributes) == len(span.attributes)
