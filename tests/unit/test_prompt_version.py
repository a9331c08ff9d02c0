"""Prompt version: explicit attribute, else a hash of the system instructions, else unknown."""

from __future__ import annotations

import hashlib
import json

import pytest
from support.otlp_proto import make_request, make_span, span_attributes

from agentopz_otel.components import Context
from agentopz_otel.metrics import Registry
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.prompt_version import FACTORY as PROMPT_VERSION
from agentopz_otel.spans import Batch

SYSTEM = "You are a support agent. Answer in JSON."
SYSTEM_HASH = "sha-" + hashlib.sha256(SYSTEM.encode()).hexdigest()[:8]


def version_of(attrs: dict, config: dict | None = None, raw: bool = False) -> tuple[str, dict]:
    context = Context(metrics=Registry())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    processor = PROMPT_VERSION.create(
        "prompt_version", PROMPT_VERSION.config_type.model_validate(config or {}), context
    )
    request = make_request([make_span("chat", {"gen_ai.operation.name": "chat", **attrs})])
    batch = Batch(request, 1)
    normalize.process(batch)
    processor.process(batch)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    return batch.views[0].prompt_version, (span if raw else span_attributes(span))


@pytest.mark.parametrize(
    "attrs",
    [
        {"gen_ai.system_instructions": json.dumps([{"type": "text", "content": SYSTEM}])},
        {"gen_ai.system_instructions": SYSTEM},
        {
            "gen_ai.input.messages": json.dumps(
                [
                    {"role": "system", "parts": [{"type": "text", "content": SYSTEM}]},
                    {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
                ]
            )
        },
        {"llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": SYSTEM},
        {"gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": SYSTEM},
        {"ai.prompt": json.dumps({"system": SYSTEM, "prompt": "hi"})},
    ],
    ids=["semconv-parts", "semconv-plain", "semconv-messages", "openinference", "openllmetry-legacy", "vercel"],
)
def test_same_instructions_hash_the_same_in_every_dialect(attrs):
    version, span = version_of(attrs)
    assert version == SYSTEM_HASH
    assert span["agentopz.prompt.version"] == SYSTEM_HASH


def test_explicit_attribute_wins_over_the_hash():
    version, _ = version_of({"llm.prompt_template.version": "v7", "gen_ai.system_instructions": SYSTEM})
    assert version == "v7"


def test_explicit_attributes_in_priority_order():
    version, _ = version_of({"gen_ai.agent.version": "1.2", "traceloop.prompt.version": "3"})
    assert version == "3"


def test_configured_attribute_is_read_first():
    version, _ = version_of(
        {"my.prompt.rev": "r42", "traceloop.prompt.version": "3"}, {"attributes": ["my.prompt.rev"]}
    )
    assert version == "r42"


def test_names_give_hashes_human_names():
    version, span = version_of({"gen_ai.system_instructions": SYSTEM}, {"names": {SYSTEM_HASH: "support-v3"}})
    assert version == "support-v3"
    assert span["agentopz.prompt.version"] == "support-v3"


def test_no_version_and_no_instructions_is_unknown():
    version, span = version_of({"gen_ai.request.model": "gpt-4o"})
    assert version == "unknown"
    assert span["agentopz.prompt.version"] == "unknown"


def test_a_users_own_version_attribute_is_kept_and_not_duplicated():
    version, span = version_of({"agentopz.prompt.version": "mine"}, raw=True)
    assert version == "mine"
    assert [kv.value.string_value for kv in span.attributes if kv.key == "agentopz.prompt.version"] == ["mine"]


def test_different_instructions_give_different_versions():
    first, _ = version_of({"gen_ai.system_instructions": SYSTEM})
    second, _ = version_of({"gen_ai.system_instructions": SYSTEM + " Be brief."})
    assert first != second


def test_the_prompt_cache_keeps_no_prompt_text():
    import tracemalloc

    context = Context(metrics=Registry())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    processor = PROMPT_VERSION.create("prompt_version", PROMPT_VERSION.config_type(), context)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(100):
            prompt = f"prompt {index} " + "x" * 16_000
            request = make_request(
                [make_span("chat", {"gen_ai.operation.name": "chat", "gen_ai.system_instructions": prompt})]
            )
            batch = Batch(request, 1)
            normalize.process(batch)
            processor.process(batch)
            assert batch.views[0].prompt_version == "sha-" + hashlib.sha256(prompt.encode()).hexdigest()[:8]
        del request, batch, prompt
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 100_000  # 100 distinct 16 KB prompts cached by hash: no prompt text is held
