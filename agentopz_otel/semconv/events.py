"""GenAI and OpenFeature events, as span events or as log records with the same names: message content,
feature-flag evaluations and evaluation results."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ..records import Evaluation
from .dialects import MAX_ANNOTATIONS
from .values import INVALID, SKIP, any_value_text, as_score, as_text, decoded

MAX_EXPLANATION_CHARS = 1024  # evaluations may wait for their run: keep them small
EVALUATION_EVENT = "gen_ai.evaluation.result"
FLAG_EVALUATION_EVENT = "feature_flag.evaluation"  # OpenFeature's OpenTelemetry hook
FLAG_VARIANT_ATTRIBUTES = ("feature_flag.result.variant", "feature_flag.variant")  # newest first
FLAG_CONTEXT_ID_ATTRIBUTE = "feature_flag.context.id"  # the evaluation's targeting key
# A targeting key is an identifier: longer ones are cut, so a run record stays small.
MAX_TARGETING_KEY_CHARS = 128

# Content sent as events (span events, or log records with the same names): event name -> (field,
# attribute holding it, content format) in priority order. A log record may carry it as its body instead.
CONTENT_EVENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    # Older GenAI semconv events; what Strands Agents emits by default.
    "gen_ai.system.message": (("system_source", "content", "event"),),
    "gen_ai.choice": (("output", "message", "event"), ("output", "content", "event")),
    # The first GenAI semconv content events.
    "gen_ai.content.prompt": (("system_source", "gen_ai.prompt", "messages"),),
    "gen_ai.content.completion": (("output", "gen_ai.completion", "messages"),),
    # The newest semconv: the span's content attributes, as one event.
    "gen_ai.client.inference.operation.details": (
        ("system_source", "gen_ai.system_instructions", "parts"),
        ("system_source", "gen_ai.input.messages", "messages"),
        ("output", "gen_ai.output.messages", "messages"),
    ),
}


def event_content(name: str, attributes, body: AnyValue | None) -> list[tuple[str, tuple[str, str]]]:
    """(field, (format, raw)) pairs of content carried by a content event (span event or log record)."""
    wanted = CONTENT_EVENTS.get(name)
    if wanted is None:
        return []
    by_key = {attribute.key: attribute.value for attribute in attributes if attribute.key in _CONTENT_EVENT_KEYS}
    found: dict[str, tuple[str, str]] = {}
    for field, key, content_format in wanted:
        value = by_key.get(key)
        if field not in found and value is not None and (raw := any_value_text(value)) is not None:
            found[field] = (content_format, raw)
    field, _, content_format = wanted[0]
    if not found and content_format == "event" and body is not None:
        # The older events as log records carry their message as the body.
        raw = any_value_text(body)
        if raw is not None:
            found[field] = (content_format, raw)
    return list(found.items())


def log_event_name(log_record) -> str:
    """A log record's event name: the field, or the `event.name` attribute older SDKs send."""
    if log_record.event_name:
        return log_record.event_name
    return next((kv.value.string_value for kv in log_record.attributes if kv.key == "event.name"), "")


_CONTENT_EVENT_KEYS = frozenset(key for fields in CONTENT_EVENTS.values() for _, key, _ in fields)


def flag_evaluation(attributes) -> tuple[str, str] | None:
    """(flag key, variant) of an OpenFeature `feature_flag.evaluation` event, when it names a variant."""
    key = ""
    variants: dict[str, str] = {}
    for attribute in attributes:
        if attribute.key == "feature_flag.key":
            key = attribute.value.string_value
        elif attribute.key in FLAG_VARIANT_ATTRIBUTES and attribute.value.string_value:
            variants[attribute.key] = attribute.value.string_value
    variant = next((variants[name] for name in FLAG_VARIANT_ATTRIBUTES if name in variants), None)
    return (key, variant) if variant is not None else None


def targeting_key(attributes) -> str | None:
    """The targeting key of an OpenFeature `feature_flag.evaluation` event (`feature_flag.context.id`),
    at most MAX_TARGETING_KEY_CHARS; None when absent or empty."""
    for attribute in attributes:
        if attribute.key == FLAG_CONTEXT_ID_ATTRIBUTE:
            return attribute.value.string_value[:MAX_TARGETING_KEY_CHARS] or None
    return None


def evaluation_from_attributes(attributes, response_id: str | None = None) -> Evaluation | None:
    """A gen_ai.evaluation.result event's or log record's attributes as an Evaluation."""
    values: dict[str, Any] = {}
    for attribute in attributes:
        key = attribute.key
        if key == "gen_ai.evaluation.score.value":
            values["score"] = as_score(decoded(attribute.value))
        elif key in _EVALUATION_TEXT_FIELDS:
            text = as_text(decoded(attribute.value))
            if text is not INVALID and text is not SKIP:
                values[_EVALUATION_TEXT_FIELDS[key]] = text
    if "name" not in values:
        return None
    score = values.get("score")
    return Evaluation(
        name=values["name"],
        score=None if score is INVALID else score,
        label=values.get("label"),
        explanation=(values.get("explanation") or "")[:MAX_EXPLANATION_CHARS] or None,
        response_id=values.get("response_id", response_id),
    )


_EVALUATION_TEXT_FIELDS = {
    "gen_ai.evaluation.name": "name",
    "gen_ai.evaluation.score.label": "label",
    "gen_ai.evaluation.explanation": "explanation",
    "gen_ai.response.id": "response_id",
}


def span_evaluations(span: Span, values: dict[str, Any], response_id: str | None) -> list[Evaluation] | None:
    found = [
        evaluation
        for event in span.events
        if event.name == EVALUATION_EVENT
        and (evaluation := evaluation_from_attributes(event.attributes, response_id)) is not None
    ]
    for index in range(MAX_ANNOTATIONS):
        name = values.get(f"annotation.{index}.name")
        if name is None:
            break
        found.append(
            Evaluation(
                name=name,
                score=values.get(f"annotation.{index}.score"),
                label=values.get(f"annotation.{index}.label"),
                explanation=(values.get(f"annotation.{index}.explanation") or "")[:MAX_EXPLANATION_CHARS] or None,
                response_id=response_id,
            )
        )
    return found or None
