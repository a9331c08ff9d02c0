"""Message content carried in span attributes: the text inside GenAI message parts.

Normalize keeps content as a (format, raw attribute value) pair without parsing it; these functions
decode it when a prompt hash or a quality check needs the text.
"""

from __future__ import annotations

import json
from typing import Any

NOT_JSON: Any = object()


def _json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep JSON
        return NOT_JSON


def parts_text(parts: Any) -> str | None:
    """Text of a GenAI message's `parts` list (parts of type text), or of a plain string."""
    if isinstance(parts, str):
        return parts
    if isinstance(parts, list):
        texts = [
            part.get("content") or part.get("text") or ""
            for part in parts
            if isinstance(part, dict) and part.get("type", "text") == "text"
        ]
        texts = [text for text in texts if isinstance(text, str)]
        return "\n".join(text for text in texts if text) if texts else None  # "" is an empty answer
    return None


def _message_parts(message: Any) -> Any:
    return message.get("parts", message.get("content")) if isinstance(message, dict) else None


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
    """The plain system instructions from a (format, raw attribute value) pair found by normalize."""
    kind, raw = source
    document = _json(raw) if kind != "text" else NOT_JSON
    if document is NOT_JSON:
        # Plain text; gen_ai.system_instructions may be a plain string rather than JSON parts.
        return raw if kind in ("text", "parts") else None
    if kind == "parts":
        return parts_text(document)
    if kind == "messages":
        return _system_from_messages(document)
    if isinstance(document, dict):  # Vercel ai.prompt: {"system": ..., "messages": [...]}
        return document.get("system") if isinstance(document.get("system"), str) else None
    return None


def _first_user_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            return parts_text(_message_parts(message))
    return None


def input_text(source: tuple[str, str]) -> str | None:
    """The run's input (the first user message, or the agent's input value) from a (format, raw) pair."""
    kind, raw = source
    document = _json(raw) if kind != "text" else NOT_JSON
    if document is NOT_JSON:
        return raw if kind in ("text", "json_or_text") else None
    if kind == "messages":
        return _first_user_text(document)
    if kind == "vercel_prompt" and isinstance(document, dict):  # {"system", "prompt"} or {"messages"}
        prompt = document.get("prompt")
        return prompt if isinstance(prompt, str) else _first_user_text(document.get("messages"))
    return document if isinstance(document, str) else raw


def _last_message_text(messages: Any) -> str | None:
    """Text of the last message of `gen_ai.output.messages`."""
    if not isinstance(messages, list) or not messages:
        return None
    return parts_text(_message_parts(messages[-1]))


def output_text(source: tuple[str, str]) -> str | None:
    """The final output as text from a (format, raw attribute value) pair found by normalize."""
    kind, raw = source
    document = _json(raw) if kind != "text" else NOT_JSON
    if document is NOT_JSON:
        return raw if kind in ("text", "json_or_text", "response") else None
    if kind == "messages":
        return _last_message_text(document)
    if kind == "response" and isinstance(document, dict) and isinstance(document.get("choices"), list):
        # OpenInference output.value on an LLM span: the raw chat.completion response.
        choices = document["choices"]
        message = choices[0].get("message", {}) if choices and isinstance(choices[0], dict) else {}
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else None
    # A JSON-encoded string is that string; structured output stays JSON for schema checks.
    return document if isinstance(document, str) else raw
