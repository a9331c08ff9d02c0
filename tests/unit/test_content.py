"""Content in every form it travels in: attributes, span events, OpenInference multi-part messages; content
that was not captured is unknown, never an empty answer; OpenFeature flag evaluations give the version."""

from __future__ import annotations

import hashlib
import json

import pytest
from support.otlp_proto import attributes, make_request, make_span

from agentopz_otel.components import Context
from agentopz_otel.content import output_text, system_text
from agentopz_otel.metrics import Registry
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.prompt_version import FACTORY as PROMPT_VERSION
from agentopz_otel.spans import Batch

SYSTEM = "You are a weather assistant."
SYSTEM_HASH = "sha-" + hashlib.sha256(SYSTEM.encode()).hexdigest()[:8]
ANSWER = "Sunny in Paris."
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}


def processed(attrs: dict, events: list[tuple[str, dict]] = (), config: dict | None = None):
    """The span's view after normalize and prompt_version."""
    context = Context(metrics=Registry())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    versions = PROMPT_VERSION.create("prompt_version", PROMPT_VERSION.config_type.model_validate(config or {}), context)
    span = make_span("chat", attrs)
    for name, event_attributes in events:
        span.events.add(name=name, attributes=attributes(event_attributes))
    batch = Batch(make_request([span]), 1)
    normalize.process(batch)
    versions.process(batch)
    return batch.views[0]


def output_of(view) -> str | None:
    return output_text(view.output) if view.output is not None else None


# Strands Agents' default content events: content blocks as JSON in `content` / `message`.
STRANDS_EVENTS = [
    ("gen_ai.system.message", {"content": json.dumps([{"text": SYSTEM}])}),
    ("gen_ai.user.message", {"content": json.dumps([{"text": "Weather in Paris?"}])}),
    ("gen_ai.choice", {"message": json.dumps([{"text": ANSWER}]), "finish_reason": "end_turn"}),
]


def test_older_semconv_events_give_the_version_and_the_output():
    view = processed(CHAT, STRANDS_EVENTS)
    assert view.prompt_version == SYSTEM_HASH
    assert output_of(view) == ANSWER


def test_first_semconv_content_events():
    events = [
        ("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps([{"role": "system", "content": SYSTEM}])}),
        ("gen_ai.content.completion", {"gen_ai.completion": json.dumps([{"role": "assistant", "content": ANSWER}])}),
    ]
    view = processed(CHAT, events)
    assert (view.prompt_version, output_of(view)) == (SYSTEM_HASH, ANSWER)


def test_the_last_choice_event_is_the_output_and_attributes_win_over_events():
    events = [
        ("gen_ai.choice", {"message": json.dumps({"role": "assistant", "content": "first"})}),
        ("gen_ai.choice", {"message": json.dumps({"role": "assistant", "content": ANSWER})}),
    ]
    assert output_of(processed(CHAT, events)) == ANSWER
    own = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "from the attribute"}]}])
    assert output_of(processed({**CHAT, "gen_ai.output.messages": own}, events)) == "from the attribute"


def test_openinference_multi_part_messages():
    view = processed(
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-4o",
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.contents.0.message_content.type": "text",
            "llm.input_messages.0.message.contents.0.message_content.text": "You are a weather",
            "llm.input_messages.0.message.contents.1.message_content.type": "text",
            "llm.input_messages.0.message.contents.1.message_content.text": "assistant.",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.contents.0.message_content.type": "text",
            "llm.output_messages.0.message.contents.0.message_content.text": ANSWER,
        }
    )
    assert view.prompt_version == "sha-" + hashlib.sha256(b"You are a weather\nassistant.").hexdigest()[:8]
    assert output_of(view) == ANSWER


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        # pydantic-ai with include_content=False: text parts without their content.
        ({"gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text"}]}])}, None),
        ({"gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": []}])}, None),
        # A captured empty answer is an empty answer.
        (
            {"gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": ""}]}])},
            "",
        ),
        ({"llm.output_messages.0.message.content": "__REDACTED__"}, None),
        ({"output.value": "__REDACTED__"}, None),
    ],
    ids=["parts-without-content", "no-parts", "empty-answer", "openinference-redacted", "output-value-redacted"],
)
def test_content_that_was_not_captured_is_unknown(attrs, expected):
    assert output_of(processed({**CHAT, **attrs})) == expected


@pytest.mark.parametrize(
    "attrs",
    [
        {"gen_ai.system_instructions": json.dumps([{"type": "text"}])},
        {"llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": "__REDACTED__"},
    ],
    ids=["parts-without-content", "redacted"],
)
def test_instructions_that_were_not_captured_give_no_hash(attrs):
    assert processed({**CHAT, **attrs}).prompt_version == "unknown"


def test_content_decoding_survives_odd_documents():
    assert system_text(("event", json.dumps({"content": {"content": {"content": None}}}))) is None
    assert system_text(("event", "plain text")) == "plain text"
    deep: dict = {"message": {}}
    node = deep["message"]
    for _ in range(50):
        node["message"] = {}
        node = node["message"]
    assert output_text(("event", json.dumps(deep))) is None


FLAG = ("feature_flag.evaluation", {"feature_flag.key": "weather_agent", "feature_flag.result.variant": "v7"})


def test_a_flag_evaluation_gives_the_version_before_the_hash():
    view = processed({**CHAT, "gen_ai.system_instructions": SYSTEM}, [FLAG])
    assert view.prompt_version == "v7"


def test_the_explicit_attribute_beats_the_flag():
    view = processed({**CHAT, "gen_ai.system_instructions": SYSTEM, "agentopz.prompt.version": "pinned"}, [FLAG])
    assert view.prompt_version == "pinned"


def test_flag_keys_limit_which_flags_pick_the_version():
    attrs = {**CHAT, "gen_ai.system_instructions": SYSTEM}
    assert processed(attrs, [FLAG], {"flag_keys": ["other_agent"]}).prompt_version == SYSTEM_HASH
    assert processed(attrs, [FLAG], {"flag_keys": ["weather_agent"]}).prompt_version == "v7"


def test_a_flag_evaluation_without_a_variant_is_ignored():
    event = ("feature_flag.evaluation", {"feature_flag.key": "weather_agent", "feature_flag.result.value": "true"})
    assert processed({**CHAT, "gen_ai.system_instructions": SYSTEM}, [event]).prompt_version == SYSTEM_HASH
