"""Message content carried in spans, span events and log records: the text inside GenAI messages.

Normalize keeps content as a (format, raw value) pair without parsing it; these functions decode it
when a prompt hash or a quality check needs the text. Content that was not captured (a part without
its text, a redacted value) gives None, "not known", never an empty answer.
"""

from __future__ import annotations

import json
from typing import Any

NOT_JSON: Any = object()
# What instrumentations put in place of content they were told to hide (OpenInference: `__REDACTED__`).
REDACTED_VALUES = frozenset({"__REDACTED__"})
MAX_CONTENT_DEPTH = 8  # message wrappers nest a few levels ({"message": {"content": [...]}}), never more


def _json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep JSON
        return NOT_JSON


def _captured(text: Any) -> str | None:
    return text if isinstance(text, str) and text not in REDACTED_VALUES else None


def parts_text(parts: Any) -> str | None:
    """Text of a GenAI message's `parts` list (parts of type text), or of a plain string.

    A text part carries its text under `content` (GenAI semconv) or `text` (Strands content blocks,
    OpenAI-style parts); a part with neither was not captured."""
    if isinstance(parts, str):
        return _captured(parts)
    if not isinstance(parts, list):
        return None
    texts = []
    for part in parts:
        if isinstance(part, dict) and part.get("type", "text") == "text":
            text = _captured(part.get("content", part.get("text")))
            if text is not None:
                texts.append(text)
    return "\n".join(text for text in texts if text) if texts else None  # [""] is an empty answer


def _message_parts(message: Any) -> Any:
    return message.get("parts", message.get("content")) if isinstance(message, dict) else None


def message_text(document: Any, depth: int = 0) -> str | None:
    """Text of one message however it is wrapped: a string, a parts or content-block list, or an object
    with `parts`, `content`, `message` (a `gen_ai.choice` event) or `text`."""
    if isinstance(document, dict) and depth < MAX_CONTENT_DEPTH:
        for key in ("parts", "content", "message", "text"):
            if key in document:
                return message_text(document[key], depth + 1)
        return None
    return parts_text(document)


def _system_from_messages(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    texts = [
        parts_text(_message_parts(message))
        for message in messages
        if isinstance(message, dict) and message.get("role") == "system"
    ]
    texts = [text for text in texts if text]
    return "\n".join(texts) if texts else None


def system_text(source: tuple[str, str]) -> str | None:
    """The plain system instructions from a (format, raw value) pair found by normalize."""
    kind, raw = source
    document = _json(raw) if kind != "text" else NOT_JSON
    if document is NOT_JSON:
        # Plain text; gen_ai.system_instructions and event content may be plain strings rather than JSON.
        return _captured(raw) if kind in ("text", "parts", "event") else None
    if kind == "parts":
        return parts_text(document)
    if kind == "event":
        return message_text(document)
    if kind == "messages":
        return _system_from_messages(document)
    if isinstance(document, dict):  # Vercel ai.prompt: {"system": ..., "messages": [...]}
        return _captured(document.get("system"))
    return None


def _last_message_text(messages: Any) -> str | None:
    """Text of the last message of `gen_ai.output.messages`."""
    if not isinstance(messages, list) or not messages:
        return None
    return parts_text(_message_parts(messages[-1]))


def output_text(source: tuple[str, str]) -> str | None:
    """The final output as text from a (format, raw value) pair found by normalize."""
    kind, raw = source
    document = _json(raw) if kind != "text" else NOT_JSON
    if document is NOT_JSON:
        return _captured(raw) if kind in ("text", "json_or_text", "response", "event") else None
    if kind == "messages":
        return _last_message_text(document)
    if kind == "event":
        return message_text(document)
    if kind == "response" and isinstance(document, dict) and isinstance(document.get("choices"), list):
        # OpenInference output.value on an LLM span: the raw chat.completion response.
        choices = document["choices"]
        message = choices[0].get("message", {}) if choices and isinstance(choices[0], dict) else {}
        content = message.get("content") if isinstance(message, dict) else None
        return _captured(content)
    # A JSON-encoded string is that string; structured output stays JSON for schema checks.
    return _captured(document) if isinstance(document, str) else raw
