"""Golden cases for normalize: framework spans in (OTLP JSON, tests/golden/normalize/<case>.json), canonical
views out (<case>.expected.json). Each case says in `source` where its expected values come from.
`UPDATE_GOLDEN=1` rewrites the expected files; review them against the reference before committing."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from support import golden
from support.otlp_json import trace_request

from agentopz_otel.components import Context
from agentopz_otel.metrics import Registry
from agentopz_otel.processors.normalize import FACTORY
from agentopz_otel.spans import SpanView

CASES = golden.cases("normalize")


def canonical(view: SpanView) -> dict[str, Any]:
    """The fields of a view that the reference pins, as plain data."""
    return {
        "span": view.span.name,
        "kind": view.kind,
        "provider": view.provider,
        "model": view.model,
        "tokens": {
            "input": view.input_tokens,
            "output": view.output_tokens,
            "cache_read": view.cache_read_tokens,
            "cache_write": view.cache_write_tokens,
            "reasoning": view.reasoning_tokens,
        },
        "agent": view.agent,
        "tool": view.tool,
        "status": view.status,
        "finish_reason": view.finish_reason,
        "reported_cost": view.reported_cost,
        "prompt_version": view.prompt_version,
        "system_source": view.system_source[0] if view.system_source is not None else None,
        "flag": list(view.flag) if view.flag is not None else None,
        "targeting_key": view.targeting_key,
        "evaluations": [asdict(evaluation) for evaluation in view.evaluations] if view.evaluations else None,
    }


def test_every_dialect_of_the_reference_has_a_case() -> None:
    names = {golden.name(case) for case in CASES}
    assert {
        "semconv_current",
        "semconv_deprecated",
        "openinference",
        "openllmetry",
        "vercel_ai_sdk",
        "pydantic_ai",
        "strands",
        "langgraph",
        "openai_agents",
        "events",
    } <= names


@pytest.mark.parametrize("from_bytes", [False, True], ids=["protobuf", "bytes"])
@pytest.mark.parametrize("case", CASES, ids=golden.name)
def test_golden_views(case: Path, from_bytes: bool) -> None:
    """Both ways normalize reads attributes: through protobuf, and from the request's bytes."""
    document = golden.load(case)
    registry = Registry()
    normalizer = FACTORY.create("normalize", FACTORY.config_type(), Context(metrics=registry))
    request = trace_request(document["request"])
    views = normalizer.views(request, request.SerializeToString() if from_bytes else None)
    invalid = registry.metric("agentopz_invalid_attributes_total")
    actual = {
        "views": [canonical(view) for view in views],
        "invalid_attributes": {labels[0]: series.value for labels, series in invalid.items()},
    }
    assert actual == golden.expected(case, actual)
