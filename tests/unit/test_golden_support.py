"""The golden-file helpers themselves: OTLP JSON ids, the `source` rule and missing expected files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import golden
from support.otlp_json import trace_request

SPAN = {
    "traceId": "0af7651916cd43dd8448eb211c80319c",
    "spanId": "00f067aa0ba902b7",
    "parentSpanId": "00000000000000a1",
    "name": "chat",
    "links": [{"traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "0000000000000001"}],
    "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}}],
}


def request_of(span: dict) -> dict:
    return {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}


def test_otlp_json_ids_are_hex_and_int_values_strings() -> None:
    span = trace_request(request_of(SPAN)).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    assert span.span_id == bytes.fromhex("00f067aa0ba902b7")
    assert span.parent_span_id == bytes.fromhex("00000000000000a1")
    assert span.links[0].trace_id == bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert span.attributes[0].value.int_value == 1200


def test_an_id_that_is_not_hex_names_the_span() -> None:
    with pytest.raises(ValueError, match=r"span 'chat': spanId 'not-hex' is not hex"):
        trace_request(request_of({**SPAN, "spanId": "not-hex"}))


def test_a_case_must_say_where_its_values_come_from(tmp_path: Path) -> None:
    case = tmp_path / "bare.json"
    case.write_text(json.dumps({"request": {}}))
    with pytest.raises(AssertionError, match=r"bare\.json: say in `source`"):
        golden.load(case)


def test_a_missing_expected_file_is_an_error_not_a_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    case = tmp_path / "new_case.json"
    with pytest.raises(AssertionError, match=r"new_case\.expected\.json is missing"):
        golden.expected(case, {"runs": []})
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    assert golden.expected(case, {"runs": [1]}) == {"runs": [1]}
    assert (tmp_path / "new_case.expected.json").read_text() == '{\n  "runs": [\n    1\n  ]\n}\n'


def test_a_kind_without_cases_is_an_error() -> None:
    with pytest.raises(AssertionError, match=r"no golden cases in .*golden/nonexistent"):
        golden.cases("nonexistent")
