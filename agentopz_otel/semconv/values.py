"""Reading an OTLP attribute value as a field wants it: the converters the dialect table names.

A converter returns the field's value, `SKIP` when the attribute says nothing about the field (an empty
string, a kind this field does not map), or `INVALID` when the value is unusable (normalize counts it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from ..content import MAX_CONTENT_DEPTH

# A token count above this is treated as invalid input, not priced (a hostile or broken sender
# must not be able to put 2**63 tokens into a counter).
MAX_TOKENS = 10**10
MAX_REPORTED_COST_USD = 1e6

INVALID: Any = object()  # the attribute is there but its value is unusable (counted)
SKIP: Any = object()  # the attribute is there but says nothing about this field

# A converter takes an attribute's value as `decoded` gives it.
Converter = Callable[[Any], Any]


_SCALARS = frozenset({"string_value", "bool_value", "int_value", "double_value"})


def decoded(value: AnyValue) -> Any:
    """An attribute's value as converters take it: a str, bool, int or float as it is, None when unset,
    an array as a tuple of its items decoded, and the AnyValue itself for anything else (a key-value
    list, bytes, an index into a string table); normalize's native read gives the same
    (processors/normalize_wire.c)."""
    text = value.string_value  # the common case, with one read: a string that is not empty
    if text:
        return text
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which in _SCALARS:
        return getattr(value, which)
    return tuple(map(decoded, value.array_value.values)) if which == "array_value" else value


def _text(value: Any) -> str:
    """The value's string, "" when it is not one (as protobuf's string_value reads)."""
    return value if type(value) is str else ""


def as_text(value: Any) -> Any:
    if type(value) is str:
        return value or SKIP
    return SKIP if value is None else INVALID


def as_number(value: Any) -> float | None:
    kind = type(value)
    if kind is int or kind is float:
        return value
    if kind is str:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def as_token_count(value: Any) -> Any:
    if type(value) is int and 0 < value <= MAX_TOKENS:  # the common case: a positive int
        return value
    number = as_number(value)
    if number is None or not math.isfinite(number) or number != int(number) or not 0 <= number <= MAX_TOKENS:
        return INVALID
    return int(number)


def as_usd(value: Any) -> Any:
    number = as_number(value)
    if number is None or not math.isfinite(number) or not 0 <= number <= MAX_REPORTED_COST_USD:
        return INVALID
    return float(number)


def as_score(value: Any) -> Any:
    number = as_number(value)
    return float(number) if number is not None and math.isfinite(number) else INVALID


def as_integer(value: Any) -> Any:
    if type(value) is int and value:  # the common case
        return value
    number = as_number(value)
    return int(number) if number is not None and math.isfinite(number) else INVALID


def as_first_text(value: Any) -> Any:
    """A string, or the first string of an array (finish reasons come as either)."""
    if type(value) is str:
        return value or SKIP
    if type(value) is tuple:
        for item in value:
            if type(item) is str and item:
                return item
        return SKIP
    return INVALID


def present(value: Any) -> Any:
    return True


def contains(needle: str) -> Converter:
    def convert(value: Any) -> Any:
        return True if needle in _text(value) else SKIP

    return convert


def one_of(mapping: Mapping[str, str]) -> Converter:
    def convert(value: Any) -> Any:
        return mapping.get(_text(value), SKIP)

    return convert


def tagged(tag: str) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is str and value:
            return (tag, value)
        return as_text(value)  # SKIP or INVALID

    return convert


def any_value_text(value: AnyValue) -> str | None:
    """A string value as it is; a structured one (kvlist, array) as JSON, the form content decoding reads."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which in ("kvlist_value", "array_value"):
        return json.dumps(_plain(value, 0))
    return None


def _plain(value: AnyValue, depth: int) -> Any:
    which = value.WhichOneof("value")
    if which == "kvlist_value":
        if depth >= MAX_CONTENT_DEPTH:
            return None
        return {kv.key: _plain(kv.value, depth + 1) for kv in value.kvlist_value.values}
    if which == "array_value":
        if depth >= MAX_CONTENT_DEPTH:
            return None
        return [_plain(item, depth + 1) for item in value.array_value.values]
    if which == "bytes_value":
        return None
    return getattr(value, which) if which is not None else None
