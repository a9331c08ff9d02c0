"""Why a failed call failed: the call status (`agentopz_llm_calls_total{status}`) from what the span says."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ..spans import STATUS_CLIENT_ERROR, STATUS_ERROR, STATUS_RATE_LIMITED, STATUS_SERVER_ERROR, STATUS_TIMEOUT

# Failed calls by HTTP status, then by words in error.type / status message / exception type.
_HTTP_STATUS_CLASSES = {429: STATUS_RATE_LIMITED, 408: STATUS_TIMEOUT, 504: STATUS_TIMEOUT}
_ERROR_TEXT_CLASSES = (
    (STATUS_RATE_LIMITED, ("429", "ratelimit", "rate_limit", "rate limit", "too many requests", "resource_exhausted")),
    (STATUS_TIMEOUT, ("timeout", "timed out", "deadline", "504")),
    (
        STATUS_SERVER_ERROR,
        (
            "500",
            "502",
            "503",
            "529",
            "internalserver",
            "internal server",
            "unavailable",
            "overloaded",
            "badgateway",
            "bad gateway",
            "apiconnection",
            "server_error",
        ),
    ),
    (
        STATUS_CLIENT_ERROR,
        (
            "400",
            "401",
            "403",
            "404",
            "422",
            "badrequest",
            "authentication",
            "permissiondenied",
            "notfound",
            "invalid_request",
            "unprocessable",
        ),
    ),
)
FAILED_TOOL_STATUSES = frozenset({"error", "failed", "failure"})
SPAN_STATUS_ERROR = Status.STATUS_CODE_ERROR


def classify_failure(span: Span, error_type: str | None, http_status: int | None) -> str:
    """Why a failed call failed: rate_limited, timeout, server_error, client_error or error."""
    if http_status is not None and http_status >= 400:
        return _HTTP_STATUS_CLASSES.get(http_status, STATUS_SERVER_ERROR if http_status >= 500 else STATUS_CLIENT_ERROR)
    words = [error_type or "", span.status.message]
    words.extend(
        attribute.value.string_value
        for event in span.events
        if event.name == "exception"
        for attribute in event.attributes
        if attribute.key in ("exception.type", "exception.message")
    )
    text = " ".join(words).lower()
    for status, needles in _ERROR_TEXT_CLASSES:
        if any(needle in text for needle in needles):
            return status
    return STATUS_ERROR
