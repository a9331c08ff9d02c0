"""Input that passed in the last release, sent to the built-in default config over OTLP/HTTP JSON."""

from __future__ import annotations

import json
import urllib.request

import pytest
from support.service import metric_samples

TRACE_ID = "5b8efff798038103d269b633813fc60c"


def chat_span(span_id: str, attributes: list[dict]) -> dict:
    return {
        "traceId": TRACE_ID,
        "spanId": span_id,
        "name": "chat",
        "kind": 3,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000001000000000",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
            *attributes,
        ],
    }


def send(service, *spans: dict) -> None:
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                "scopeSpans": [{"spans": list(spans)}],
            }
        ]
    }
    request = urllib.request.Request(
        f"{service.http_url}/v1/traces",
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def attribute(key: str, value: dict) -> dict:
    return {"key": key, "value": value}


@pytest.fixture
def default_service(start_service):
    return start_service(None)


def test_int_value_as_a_string_counts_its_tokens(default_service):
    model = attribute("gen_ai.request.model", {"stringValue": "gpt-4o"})
    send(
        default_service,
        chat_span(
            "eee19b7ec3c1b174",
            [
                model,
                attribute("gen_ai.usage.input_tokens", {"intValue": "250"}),
                attribute("gen_ai.usage.output_tokens", {"intValue": "40"}),
            ],
        ),
    )
    default_service.wait_for("agentopz_llm_calls_total", 1)
    assert default_service.value("agentopz_llm_tokens_total", token_type="input") == 250
    assert default_service.value("agentopz_llm_tokens_total", token_type="output") == 40


def test_a_token_count_sent_as_the_string_100_counts_100(default_service):
    model = attribute("gen_ai.request.model", {"stringValue": "gpt-4o"})
    tokens = attribute("gen_ai.usage.input_tokens", {"stringValue": "100"})
    send(default_service, chat_span("eee19b7ec3c1b174", [model, tokens]))
    default_service.wait_for("agentopz_llm_calls_total", 1)
    assert default_service.value("agentopz_llm_tokens_total", token_type="input") == 100
    assert default_service.value("agentopz_invalid_attributes_total") == 0


def test_a_model_name_with_control_and_unicode_characters_round_trips_as_a_label(default_service):
    name = 'gpt "quoted"\\back\nslash-модель-✓'
    model = attribute("gen_ai.request.model", {"stringValue": name})
    send(default_service, chat_span("eee19b7ec3c1b174", [model]))
    default_service.wait_for("agentopz_llm_calls_total", 1)
    models = {
        dict(labels)["model"]
        for (metric, labels), _ in metric_samples(default_service.metrics_text()).items()
        if metric == "agentopz_llm_calls_total"
    }
    assert models == {name}
