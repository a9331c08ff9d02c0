"""The compact forms the runs processor keeps per open run: remembered span ids, held calls, call counts."""

from __future__ import annotations

import asyncio
import math
import pickle
import sqlite3
import struct
import time
from array import array
from collections import OrderedDict

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support.otlp_proto import attributes, make_request, make_span

from agentopz_otel.components import Context
from agentopz_otel.metrics import Counter, Registry
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.runs import FACTORY as RUNS
from agentopz_otel.processors.runs import RunsConfig, assembly
from agentopz_otel.processors.runs.assembler import EVICTED_RUNS, MEMORY, Assembler
from agentopz_otel.processors.runs.assembly import (
    EVALUATION_BYTES,
    EXACT_ROWS,
    FINISHED_TRACE_BYTES,
    GROUP_FIELDS,
    KNOWN_ID,
    MAX_MODELS_PER_RUN,
    MAX_TOOLS_PER_RUN,
    NEW_ID,
    NO_CALLS,
    NODE_BYTES,
    PACKED_IDS,
    RARE_FIELDS,
    RECEIVED_ID,
    ROOT_FIELDS,
    SET_SPAN_ID_BYTES,
    TUPLE_GROUPS,
    Group,
    HeldCalls,
    Output,
    RareFields,
    RootFields,
    SpanIds,
    TraceState,
    count_call,
    count_run_call,
    counts_by_name,
    footprint,
    held_calls,
    hold_call,
    merge_counts,
    merge_held,
    merge_run_counts,
    models_of,
    new_group,
    run_counts,
    tools_of,
)
from agentopz_otel.processors.runs.checkpoint import (
    _PLAIN,
    SLICE,
    RunCheckpoint,
    RunState,
    pack_trace,
    unpack_trace,
)
from agentopz_otel.processors.runs.evaluations import PENDING_TRACE_BYTES, UNMATCHED
from agentopz_otel.processors.runs.logged_content import TRACE_CONTENT_BYTES
from agentopz_otel.spans import NO_TOKENS, Batch, Call


def span_id(number: int) -> bytes:
    return number.to_bytes(8, "big")


def test_span_ids_are_found_only_at_their_own_offset():
    trace = TraceState(bytes(16), 0.0)
    trace.add_seen(bytes.fromhex("00000000000000aa"))
    trace.add_seen(bytes.fromhex("bbbbbbbbbbbbbbbb"))
    # These 8 bytes sit across the two ids packed side by side: not an id that was received.
    assert not trace.has_seen(bytes.fromhex("000000aabbbbbbbb"))
    assert trace.has_seen(bytes.fromhex("bbbbbbbbbbbbbbbb"))
    assert not trace.has_seen(bytes.fromhex("00000000000000bb"))
    assert trace.seen_count() == 2


def test_span_ids_move_to_a_set_past_the_packed_limit_and_keep_every_id():
    trace = TraceState(bytes(16), 0.0)
    for number in range(1, PACKED_IDS + 1):
        trace.add_seen(span_id(number))
    assert isinstance(trace.ids, bytearray) and len(trace.ids) == 9 * PACKED_IDS == trace.ids_bytes()
    assert trace.seen_count() == PACKED_IDS and trace.node_count() == 0
    trace.add_seen(span_id(PACKED_IDS + 1))
    assert isinstance(trace.ids, SpanIds)
    assert trace.seen_count() == PACKED_IDS + 1 and trace.ids_bytes() == (PACKED_IDS + 1) * SET_SPAN_ID_BYTES
    assert all(trace.has_seen(span_id(n)) for n in range(1, PACKED_IDS + 2))
    assert not trace.has_seen(span_id(PACKED_IDS + 2))
    trace.forget_ids()
    assert trace.seen_count() == 0 and not trace.has_seen(span_id(1))


def test_received_ids_and_the_node_map_share_one_entry_per_id():
    trace = TraceState(bytes(16), 0.0)
    first, second = new_group(trace, b"", 0.0), new_group(trace, b"", 0.0)
    trace.set_node(span_id(1), second)  # awaited as a parent: in the node map, not received
    trace.add_seen(span_id(2))  # an LLM call: received, not in the node map
    trace.add_seen(span_id(1))  # the parent arrives
    trace.set_node(span_id(2), first)
    assert bytes(trace.ids) == span_id(1) + bytes([0x80 | 2]) + span_id(2) + bytes([0x80 | 1])
    assert trace.seen_count() == 2 and trace.node_count() == 2 and trace.entry_count() == 2
    trace.set_node(span_id(3), first)
    assert trace.seen_count() == 2 and trace.node_count() == 3 and not trace.has_seen(span_id(3))
    assert trace.seen_ids() == [span_id(1), span_id(2)]
    assert trace.node_items() == [(span_id(1), second), (span_id(2), first), (span_id(3), first)]


def test_the_node_map_is_packed_until_it_outgrows_the_tag_or_its_limit():
    trace = TraceState(bytes(16), 0.0)
    first, second = new_group(trace, b"", 0.0), new_group(trace, b"", 0.0)
    trace.set_node(bytes.fromhex("00000000000000aa"), first)
    trace.set_node(bytes.fromhex("bbbbbbbbbbbbbbbb"), second)
    assert isinstance(trace.ids, bytearray) and len(trace.ids) == 2 * 9 == trace.ids_bytes()
    # 8 bytes across the two entries (an id's tail, a tag, the next id's head) are no id.
    assert trace.node(bytes.fromhex("000000aa02bbbbbb")) is None
    assert not trace.has_seen(bytes.fromhex("000000aa02bbbbbb"))
    assert trace.node(bytes.fromhex("bbbbbbbbbbbbbbbb")) is second
    trace.set_node(bytes.fromhex("bbbbbbbbbbbbbbbb"), first)  # an id seen first as a parent, then arrived
    assert trace.node(bytes.fromhex("bbbbbbbbbbbbbbbb")) is first and trace.node_count() == 2
    second.merged_into = first
    for number in range(3, PACKED_IDS + 1):
        trace.set_node(span_id(number), second)
    assert isinstance(trace.ids, bytearray) and trace.node_count() == PACKED_IDS
    assert trace.node(span_id(PACKED_IDS)) is first  # a merged group answers with the one it joined
    trace.set_node(span_id(PACKED_IDS + 1), second)
    assert isinstance(trace.ids, SpanIds) and trace.node_count() == PACKED_IDS + 1
    assert trace.ids_bytes() == (PACKED_IDS + 1) * NODE_BYTES
    assert trace.node(span_id(3)) is first and trace.node(span_id(PACKED_IDS + 1)) is first


def test_a_node_map_whose_trace_has_more_groups_than_the_tag_numbers_moves_to_a_dict():
    trace = TraceState(bytes(16), 0.0)
    groups = [new_group(trace, b"", 0.0) for _ in range(128)]
    trace.add_seen(span_id(3))
    trace.set_node(span_id(1), groups[126])  # the 127th group: the last the 7-bit tag numbers
    assert isinstance(trace.ids, bytearray) and trace.node(span_id(1)) is groups[126]
    trace.set_node(span_id(2), groups[127])
    assert isinstance(trace.ids, SpanIds)
    assert trace.node_items() == [(span_id(1), groups[126]), (span_id(2), groups[127])]
    assert trace.seen_ids() == [span_id(3)] and trace.node(span_id(3)) is None


def test_receiving_an_id_tells_a_new_entry_from_an_awaited_parent_and_a_copy():
    trace = TraceState(bytes(16), 0.0)
    group = new_group(trace, b"", 0.0)
    trace.set_node(span_id(1), group)
    assert trace.receive(span_id(2)) == NEW_ID and trace.node(span_id(2)) is None
    assert trace.receive(span_id(1)) == KNOWN_ID and trace.node(span_id(1)) is group
    assert trace.receive(span_id(1)) == trace.receive(span_id(2)) == RECEIVED_ID
    assert trace.seen_ids() == [span_id(1), span_id(2)]
    for number in range(3, PACKED_IDS + 2):  # past the packed table: a set, where every id may be a node
        trace.receive(span_id(number))
    assert isinstance(trace.ids, SpanIds) and trace.receive(span_id(PACKED_IDS + 2)) == KNOWN_ID
    assert trace.receive(span_id(PACKED_IDS + 2)) == RECEIVED_ID


def test_a_span_sent_twice_in_one_batch_counts_once():
    assembler = Assembler(RunsConfig())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), Context(metrics=Registry()))
    trace_id = span_id(13) * 2
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
    call = make_span("chat m", chat, trace_id=trace_id, parent=span_id(99))
    other = make_span("chat m", chat, trace_id=trace_id, parent=span_id(99))
    batch = Batch(make_request([call, other, call]), 3)
    normalize.process(batch)
    out = assembler.intake(batch, 0.0)
    assert out.counts == {("agentopz_duplicate_spans_total", ()): 1}
    (group,) = assembler.traces[trace_id].groups
    assert group.llm_calls == 2 and assembler._remembered == 2
    assert [view.skip_call_metrics for view in batch.views] == [True, True, True]  # held, held, counted nowhere


def test_a_trace_keeps_its_first_groups_in_a_tuple_then_in_a_list():
    trace = TraceState(bytes(16), 0.0)
    groups = [new_group(trace, b"", 0.0) for _ in range(TUPLE_GROUPS)]
    assert type(trace.groups) is tuple and list(trace.groups) == groups
    trace.set_node(span_id(1), groups[1])
    groups += [new_group(trace, b"", 0.0) for _ in range(2)]
    assert type(trace.groups) is list and trace.groups == groups
    trace.set_node(span_id(2), groups[-1])
    assert trace.node_items() == [(span_id(1), groups[1]), (span_id(2), groups[-1])]


def test_the_span_limit_counts_the_node_map_not_every_id_received():
    assembler = Assembler(RunsConfig(max_spans_per_trace=2))
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), Context(metrics=Registry()))
    trace_id = span_id(6) * 2
    agent = make_span("invoke_agent a", {"gen_ai.operation.name": "invoke_agent"}, trace_id=trace_id)
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
    calls = [make_span("chat m", chat, trace_id=trace_id, parent=agent.span_id) for _ in range(3)]
    tool = make_span(
        "execute_tool t", {"gen_ai.operation.name": "execute_tool"}, trace_id=trace_id, parent=agent.span_id
    )
    batch = Batch(make_request([*calls, tool]), 4)
    normalize.process(batch)
    out = assembler.intake(batch, 0.0)
    trace = assembler.traces[trace_id]
    # Three calls and a tool received; the node map holds the awaited agent and the tool: at the limit.
    assert trace.seen_count() == 4 and trace.node_count() == 2 and not out.counts
    later = make_span(
        "execute_tool u", {"gen_ai.operation.name": "execute_tool"}, trace_id=trace_id, parent=agent.span_id
    )
    batch = Batch(make_request([later]), 1)
    normalize.process(batch)
    out = assembler.intake(batch, 1.0)
    assert out.counts == {("agentopz_unassembled_spans_total", ()): 1}


def test_a_group_waits_for_its_parent_by_its_entry_in_the_packed_table_and_by_id_past_it():
    assembler = Assembler(RunsConfig())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), Context(metrics=Registry()))
    trace_id = span_id(12) * 2
    remote, local_root = span_id(900), span_id(901)
    call = make_span("chat m", {"gen_ai.operation.name": "chat"}, trace_id=trace_id, parent=local_root)
    root = make_span("handle", trace_id=trace_id, parent=remote)
    root.span_id, root.flags = local_root, 0x300  # its parent is in another process
    batch = Batch(make_request([call]), 1)
    normalize.process(batch)
    assembler.intake(batch, 0.0)
    trace = assembler.traces[trace_id]
    (group,) = trace.groups
    assert (group.top_parent, group.top_parent_id()) == (2, local_root)  # entry 1 is the call's id
    batch = Batch(make_request([root]), 1)
    normalize.process(batch)
    assert assembler.intake(batch, 1.0, hold_roots=False) == Output()
    # The local root arrived: its remote parent is awaited now, and it is the root of the group.
    assert (group.top_parent, group.top_parent_id(), group.root_span_id) == (3, remote, local_root)
    restored = unpack_trace(pack_trace(trace), _PLAIN, 0.0)
    assert pack_trace(trace)[2][0][0][_PLAIN.index("top_parent")] == remote  # checkpointed as the id
    assert (restored.groups[0].top_parent, restored.groups[0].top_parent_id()) == (3, remote)
    for number in range(PACKED_IDS):
        trace.add_seen(span_id(1000 + number))
    assert isinstance(trace.ids, SpanIds) and (group.top_parent, group.top_parent_id()) == (remote, remote)


def test_a_group_makes_a_side_record_only_for_a_field_set_to_another_value_than_its_default():
    group = Group(TraceState(bytes(16), 0.0), b"", 0.0)
    group.failed = False
    group.evaluations = ()
    group.llm_errors += 0
    assert group.rooted is None and group.rare is None
    assert (group.root_span_id, group.failed, group.evaluations, group.output) == (b"", False, (), None)
    group.root_span_id = span_id(1)
    group.llm_errors += 2
    assert isinstance(group.rooted, RootFields) and isinstance(group.rare, RareFields)
    assert (group.root_span_id, group.end_time, group.llm_errors, group.tool_errors) == (span_id(1), 0, 2, 0)
    group.root_span_id = b""  # set back: the record stays, holding the default
    assert group.root_span_id == b"" and group.rooted is not None
    assert set(GROUP_FIELDS) == {*Group.__slots__, *ROOT_FIELDS, *RARE_FIELDS} - {"rooted", "rare"}


def test_a_run_with_more_label_tuples_than_a_row_can_number_holds_no_more(monkeypatch):
    monkeypatch.setattr(assembly, "MAX_CALL_LABELS", 2)
    held = hold_call(hold_call(NO_CALLS, LLM_CALL, LLM_CALL[:6]), TOOL_CALL, TOOL_CALL[:6])
    assert held is not None and hold_call(held, UNPRICED, UNPRICED[:6]) is None
    held = hold_call(held, LLM_CALL, LLM_CALL[:6])  # a label tuple it has still fits
    assert held is not None and held_calls(held) == [LLM_CALL, TOOL_CALL, LLM_CALL]


LLM_CALL = Call("llm", "svc", None, "openai", "gpt-4o", "ok", (1200, 300, 200, None, 0), 0.00575, 1.25)
UNPRICED = Call("llm", "svc", "inner", "vllm", "llama", "rate_limited", (None,) * 5, None, None)
TOOL_CALL = Call("tool", "svc", None, "", "search", "error", NO_TOKENS, None, 0.5)


def hold(calls: list[Call]) -> HeldCalls:
    held = NO_CALLS
    for call in calls:
        held = hold_call(held, call, call[:6]) or held
    return held


def test_held_calls_come_back_exactly_as_they_were_held():
    held = hold([LLM_CALL, TOOL_CALL, LLM_CALL, UNPRICED])
    assert held_calls(held) == [LLM_CALL, TOOL_CALL, LLM_CALL, UNPRICED]
    assert held[1:] == (LLM_CALL[:6], TOOL_CALL[:6], UNPRICED[:6])  # each distinct label tuple once
    # A row per call: 3 bytes, then 4 a token count and 8 another number the span gave (a tool call has
    # its duration only).
    assert type(held[0]) is bytes and len(held[0]) == (3 + 4 * 4 + 2 * 8) + (3 + 8) + (3 + 4 * 4 + 2 * 8) + 3
    held = merge_held(held, hold([TOOL_CALL]))
    assert held_calls(held)[-1] == TOOL_CALL and len(held_calls(held)) == 5 and len(held) == 4


@pytest.mark.parametrize(
    ("tokens", "row_bytes"),
    [
        ((0, 2**32 - 1, None, None, None), 3 + 2 * 4 + 8),  # both fit 4 bytes
        ((0, 2**32, None, None, None), 3 + 2 * 8 + 8),  # one does not: all as doubles
        ((-1, 5, None, None, None), 3 + 2 * 8 + 8),
        ((None,) * 5, 3 + 8),
    ],
)
def test_held_token_counts_take_4_bytes_each_when_all_of_them_fit(tokens, row_bytes):
    call = LLM_CALL._replace(tokens=tokens, cost=None)
    held = hold([call])
    assert len(held[0]) == row_bytes and held[0][2] & assembly.WHOLE_TOKENS == (row_bytes == 3 + 2 * 4 + 8) * 0x80
    assert held_calls(held) == [call]


def test_held_rows_are_exact_bytes_until_their_limit_then_grow_in_place():
    # Rows of 11 bytes (a tool call's duration) and 3 (a call with no numbers): 92 * 11 + 4 * 3 = 1024.
    assert EXACT_ROWS == 1024
    below = hold([TOOL_CALL] * 92 + [UNPRICED] * 3)
    assert len(below[0]) == EXACT_ROWS - 3
    below = hold_call(below, TOOL_CALL, TOOL_CALL[:6])
    assert below is not None and type(below[0]) is bytes  # it was short of the limit: still exact
    held = hold([TOOL_CALL] * 92 + [UNPRICED] * 4)
    assert type(held[0]) is bytes and len(held[0]) == EXACT_ROWS and len(held) == 3
    grown = hold_call(held, TOOL_CALL, TOOL_CALL[:6])
    assert grown is not None and type(grown[0]) is bytearray and len(grown[0]) == EXACT_ROWS + 11
    again = hold_call(grown, LLM_CALL, LLM_CALL[:6])  # a new label tuple: a new tuple, the same rows
    assert again is not None and again[0] is grown[0] and again[1:] == (TOOL_CALL[:6], UNPRICED[:6], LLM_CALL[:6])
    assert held_calls(again) == [TOOL_CALL] * 92 + [UNPRICED] * 4 + [TOOL_CALL, LLM_CALL]


def test_call_counts_by_name_keep_order_and_stop_at_the_limit():
    counts = ()
    for name, failed in (("a", False), ("b", True), ("a", True), ("c", False)):
        counts = count_call(counts, name, failed, limit=2)
    assert counts_by_name(counts) == {"a": [2, 1], "b": [1, 1]}
    merged = merge_counts(counts, count_call(count_call((), "c", True, 2), "a", False, 2), limit=3)
    assert counts_by_name(merged) == {"a": [3, 1], "b": [1, 1], "c": [1, 1]}


def load_checkpoint(version: int, names: tuple, packed_trace: tuple) -> RunState | None:
    """A checkpoint of one open trace, as an older format wrote it, written and read back."""
    with sqlite3.connect(":memory:") as connection:
        checkpoint = RunCheckpoint(connection, "runs")
        checkpoint.write(pickle.dumps((version, 0.0, names, [packed_trace], [])))
        return checkpoint.load()


def old_fields(plain: tuple, models: object, tools: object) -> tuple[tuple, tuple]:
    """A group's field names and values as formats 3 to 5 kept them: calls by model and by tool apart."""
    by_name = dict(zip(_PLAIN, plain, strict=True))
    names = (*(name for name in _PLAIN if name != "counts"), "models", "tools")
    return names, (*(by_name[name] for name in names[:-2]), models, tools)


def test_calls_by_model_and_tool_share_one_tuple_models_first_each_within_its_limit():
    counts = ()
    for tool, name, failed in ((True, "search", True), (False, "m1", False), (True, "search", False)):
        counts = count_run_call(counts, tool, name, failed)
    assert counts == (1, "m1", 1, 0, "search", 2, 1)
    for number in range(2, MAX_MODELS_PER_RUN + 2):
        counts = count_run_call(counts, False, f"m{number}", True)
    assert counts[0] == MAX_MODELS_PER_RUN and models_of(counts)[-3:] == (f"m{MAX_MODELS_PER_RUN}", 1, 1)
    assert tools_of(counts) == ("search", 2, 1)
    for number in range(MAX_TOOLS_PER_RUN):
        counts = count_run_call(counts, True, f"t{number}", False)
    assert len(tools_of(counts)) == 3 * MAX_TOOLS_PER_RUN and tools_of(counts)[-3:] == ("t62", 1, 0)
    counts = count_run_call(counts, False, "m1", True, calls=2)  # a known model still counts past the limit
    assert models_of(counts)[:3] == ("m1", 3, 1) and counts[0] == MAX_MODELS_PER_RUN
    merged = merge_run_counts(run_counts(("m1", 1, 0), ()), run_counts(("m2", 2, 1), ("t", 1, 1)))
    assert merged == (2, "m1", 1, 0, "m2", 2, 1, "t", 1, 1)
    assert run_counts((), ()) == () and models_of(()) == () and tools_of(()) == ()


def test_calls_by_model_and_tool_of_a_format_5_checkpoint_load_into_one_tuple():
    trace = TraceState(span_id(10) * 2, 0.0)
    new_group(trace, b"", 0.0)
    trace_id, last_seen, groups, nodes, seen = pack_trace(trace)
    names, plain = old_fields(groups[0][0], ("gpt-4o", 2, 0), ("search", 1, 1))
    state = load_checkpoint(5, names, (trace_id, last_seen, ((plain, -1, None, None, ()),), nodes, seen))
    assert state is not None and state.traces[trace_id].groups[0].counts == (1, "gpt-4o", 2, 0, "search", 1, 1)


def test_a_checkpoint_of_the_previous_format_still_loads():
    """Format 3 kept held calls as Call tuples and counts as dicts of [calls, failed] (or None)."""
    trace = TraceState(span_id(7) * 2, 0.0)
    group = new_group(trace, b"", 0.0)
    trace.set_node(span_id(1), group)
    trace.add_seen(span_id(2))
    trace_id, last_seen, groups, nodes, seen = pack_trace(trace)
    names, plain = old_fields(groups[0][0], {"gpt-4o": (3, 1)}, None)
    old_group = (plain, -1, None, (tuple(LLM_CALL), tuple(TOOL_CALL)), ())
    old = (trace_id, last_seen, (old_group,), nodes, frozenset(seen))
    state = load_checkpoint(3, names, old)
    assert isinstance(state, RunState) and list(state.traces) == [trace_id]
    loaded = state.traces[trace_id].groups[0]
    assert loaded.counts == (1, "gpt-4o", 3, 1)
    assert loaded.calls is not None and held_calls(loaded.calls) == [LLM_CALL, TOOL_CALL]
    assert state.traces[trace_id].has_seen(span_id(2))


def test_held_calls_of_a_format_4_checkpoint_load_as_rows():
    """Format 4 kept every held call as doubles: its labels' position, then an LLM call's five token
    counts, cost and duration (NaN: not given) or a tool call's duration."""
    trace = TraceState(span_id(8) * 2, 0.0)
    new_group(trace, b"", 0.0)
    trace_id, last_seen, groups, nodes, seen = pack_trace(trace)
    numbers = array("d", [0, 1200, 300, 200, math.nan, 0, 0.00575, 1.25, 1, 0.5, 2, *[math.nan] * 7])
    labels = (LLM_CALL[:6], TOOL_CALL[:6], UNPRICED[:6])
    old_group = (groups[0][0], -1, None, (labels, numbers.tobytes()), ())
    state = load_checkpoint(4, _PLAIN, (trace_id, last_seen, (old_group,), nodes, seen))
    assert state is not None
    held = state.traces[trace_id].groups[0].calls
    assert held is not None and held_calls(held) == [LLM_CALL, TOOL_CALL, UNPRICED]
    assert len(held[0]) == (3 + 4 * 4 + 2 * 8) + (3 + 8) + 3


def test_held_calls_of_a_format_6_checkpoint_load_as_they_were():
    """Format 6 kept every number of a held call's row as a double, token counts too."""
    trace = TraceState(span_id(11) * 2, 0.0)
    new_group(trace, b"", 0.0)
    trace_id, last_seen, groups, nodes, seen = pack_trace(trace)
    # LLM_CALL: four token counts (bits 0-2 and 4), cost and duration; TOOL_CALL: its duration.
    rows = struct.pack("<HB6d", 0, 0x77, 1200, 300, 200, 0, 0.00575, 1.25) + struct.pack("<HBd", 1, 0x40, 0.5)
    old_group = (groups[0][0], -1, None, ((LLM_CALL[:6], TOOL_CALL[:6]), rows), ())
    state = load_checkpoint(6, _PLAIN, (trace_id, last_seen, (old_group,), nodes, seen))
    assert state is not None
    held = state.traces[trace_id].groups[0].calls
    assert held is not None and held_calls(held) == [LLM_CALL, TOOL_CALL] and held[0] == rows
    held = hold_call(held, LLM_CALL, LLM_CALL[:6])  # held after the restart: the compact row
    assert held is not None and held_calls(held) == [LLM_CALL, TOOL_CALL, LLM_CALL]
    assert len(held[0]) == len(rows) + 3 + 4 * 4 + 2 * 8


@pytest.mark.parametrize("calls", [None, (LLM_CALL, TOOL_CALL)])
def test_the_current_checkpoint_format_round_trips_held_calls(calls):
    trace = TraceState(span_id(9) * 2, 0.0)
    group = new_group(trace, b"", 0.0)
    if calls:
        group.calls = hold(list(calls))
    with sqlite3.connect(":memory:") as connection:
        checkpoint = RunCheckpoint(connection, "runs")
        checkpoint.write(
            asyncio.run(checkpoint.snapshot(RunState(OrderedDict({trace.trace_id: trace}), OrderedDict())))
        )
        state = checkpoint.load()
    loaded = state.traces[trace.trace_id].groups[0]
    assert (None if loaded.calls is None else held_calls(loaded.calls)) == (None if calls is None else list(calls))


def test_a_checkpoint_of_several_slices_keeps_every_trace_and_not_the_downtime():
    """Open traces in three slices, finished ones in two: all come back in order, each as quiet as it
    was when its slice was packed, not older by the time the service was down."""
    now = time.monotonic()
    opened = [TraceState((number + 1).to_bytes(16, "big"), now - number / 1000) for number in range(2 * SLICE + 1)]
    done = [TraceState((10**6 + number).to_bytes(16, "big"), now - 60) for number in range(SLICE + 1)]
    for trace in (*opened, *done):
        new_group(trace, b"", trace.last_seen)
    state = RunState(
        OrderedDict((t.trace_id, t) for t in opened), OrderedDict((t.trace_id, (t, now - 30)) for t in done)
    )
    with sqlite3.connect(":memory:") as connection:
        checkpoint = RunCheckpoint(connection, "runs")
        checkpoint.write(asyncio.run(checkpoint.snapshot(state)))
        time.sleep(0.5)  # down
        loaded = checkpoint.load()
        after = time.monotonic()
    assert loaded is not None
    assert list(loaded.traces) == [t.trace_id for t in opened]
    assert list(loaded.finished) == [t.trace_id for t in done]
    for number, trace in enumerate(loaded.traces.values()):
        assert number / 1000 <= after - trace.last_seen < number / 1000 + 0.25
    for trace, finished_at in loaded.finished.values():
        assert 60 <= after - trace.last_seen < 60.25 and 30 <= after - finished_at < 30.25


def test_a_trace_that_finishes_while_the_checkpoint_is_taken_is_left_out_if_its_slice_comes_later():
    traces = [TraceState((number + 1).to_bytes(16, "big"), 0.0) for number in range(SLICE + 1)]
    for trace in traces:
        new_group(trace, b"", 0.0)
    state = RunState(OrderedDict((t.trace_id, t) for t in traces), OrderedDict())
    first, last = traces[0].trace_id, traces[-1].trace_id

    async def finish_two_meanwhile(checkpoint: RunCheckpoint) -> bytes:
        taking = asyncio.create_task(checkpoint.snapshot(state))
        await asyncio.sleep(0)  # the first slice is packed; the second waits for its turn
        del state.traces[first], state.traces[last]
        return await taking

    with sqlite3.connect(":memory:") as connection:
        checkpoint = RunCheckpoint(connection, "runs")
        checkpoint.write(asyncio.run(finish_two_meanwhile(checkpoint)))
        loaded = checkpoint.load()
    assert loaded is not None and list(loaded.traces) == [t.trace_id for t in traces[:-1]]


def open_run(index: int) -> ExportTraceServiceRequest:
    """Four LLM calls and two tool calls of a run whose agent span has not arrived."""
    trace_id = index.to_bytes(16, "big")
    root = (index * 64 + 1).to_bytes(8, "big")
    llm = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
    }
    tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}
    spans = [make_span("chat", llm, trace_id=trace_id, parent=root) for _ in range(4)]
    spans += [make_span("execute_tool search", tool, trace_id=trace_id, parent=root) for _ in range(2)]
    return make_request(spans)


def finished_run(index: int) -> ExportTraceServiceRequest:
    trace_id = index.to_bytes(16, "big")
    agent = make_span("invoke_agent a", {"gen_ai.operation.name": "invoke_agent"}, trace_id=trace_id)
    call = make_span("chat", {"gen_ai.operation.name": "chat"}, trace_id=trace_id, parent=agent.span_id)
    return make_request([agent, call])


def runs_processor(**config):
    registry = Registry()
    context = Context(metrics=registry)
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    runs = RUNS.create("runs", RUNS.config_type(**config), context)

    def send(request: ExportTraceServiceRequest) -> None:
        batch = Batch(request, len(request.resource_spans[0].scope_spans[0].spans))
        normalize.process(batch)
        runs.process(batch)

    def evicted(reason: str) -> float:
        family = next(f for f in registry.families if f.name == "agentopz_evicted_runs_total")
        return dict(family.items()).get((reason,), Counter()).value

    return runs, send, evicted


def test_the_memory_budget_evicts_the_oldest_open_runs_and_counts_them():
    runs, send, evicted = runs_processor(max_memory_bytes=2**20)
    for index in range(1, 2001):
        send(open_run(index))
    kept = list(runs.assembler.traces)
    assert 800 < len(kept) < 2000
    assert kept == [index.to_bytes(16, "big") for index in range(2001 - len(kept), 2001)]  # the newest
    assert evicted("memory") == 2000 - len(kept) and evicted("capacity") == 0
    assert runs.assembler.memory == sum(footprint(trace) for trace in runs.assembler.traces.values()) <= 2**20
    # One run less would fit: the budget is used, not left idle.
    assert runs.assembler.memory + footprint(runs.assembler.traces[kept[0]]) > 2**20


def test_over_the_budget_finished_traces_are_forgotten_before_open_runs_are_evicted():
    runs, send, evicted = runs_processor(max_memory_bytes=2**20)
    for index in range(1, 301):
        send(finished_run(index))
    runs.tick(time.monotonic() + 3600)
    assert len(runs.assembler.finished) == 300 and not runs.assembler.traces
    finished = [trace for trace, _ in runs.assembler.finished.values()]
    assert runs.assembler.memory == sum(footprint(trace) + FINISHED_TRACE_BYTES for trace in finished)
    restored = Assembler(runs.config)  # as read from a checkpoint
    restored.restore({}, OrderedDict((t.trace_id, (unpack_trace(pack_trace(t), _PLAIN, 0.0), 0.0)) for t in finished))
    assert restored.memory == runs.assembler.memory
    for index in range(1001, 1901):
        send(open_run(index))
    assert evicted("memory") == 0 and len(runs.assembler.traces) == 900
    assert 0 < len(runs.assembler.finished) < 300  # the oldest went first, to make room
    assert list(runs.assembler.finished)[-1] == (300).to_bytes(16, "big")
    for index in range(1901, 2201):
        send(open_run(index))
    assert not runs.assembler.finished and evicted("memory") == 1200 - len(runs.assembler.traces) > 0


def log_request(trace_number: int, event: str, values: dict) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    log_record = (
        request.resource_logs.add()
        .scope_logs.add()
        .log_records.add(event_name=event, trace_id=trace_number.to_bytes(16, "big"), span_id=span_id(1))
    )
    log_record.attributes.extend(attributes(values))
    return request


def test_content_and_evaluations_waiting_for_their_run_count_in_the_memory_budget():
    """Shed in order: content log records, then evaluations (unmatched), before any open run."""
    budget = 2**20
    assembler = Assembler(RunsConfig(max_memory_bytes=budget))
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), Context(metrics=Registry()))
    content = {"gen_ai.completion": "c" * 5_000}
    evaluation = {"gen_ai.evaluation.name": "tone", "gen_ai.evaluation.explanation": "e" * 1_000}
    for number in range(1, 101):
        assert assembler.process_logs(log_request(number, "gen_ai.content.completion", content), 0.0) == Output()
    for number in range(101, 141):
        assert assembler.process_logs(log_request(number, "gen_ai.evaluation.result", evaluation), 0.0) == Output()
    one_content = TRACE_CONTENT_BYTES + 5_000
    one_evaluation = PENDING_TRACE_BYTES + EVALUATION_BYTES + 1_000
    assert assembler.held_bytes() == 100 * one_content + 40 * one_evaluation and assembler.memory == 0

    sent = 0

    def send(runs: int) -> Output:
        nonlocal sent
        outputs = Output()
        for number in range(sent, sent + runs):
            batch = Batch(open_run(1000 + number), 6)
            normalize.process(batch)
            outputs.extend(assembler.intake(batch, 0.0))
        sent += runs
        return outputs

    assert send(1) == Output()
    per_run = assembler.memory
    # Past the budget by 10 runs: the oldest content goes, as much as makes room.
    out = send((budget - assembler.held_bytes()) // per_run + 10)
    assert out.counts == {} and len(assembler.traces) == sent
    assert budget - one_content < assembler.held_bytes() <= budget
    assert assembler.held_bytes() - assembler.memory - 40 * one_evaluation == assembler._logged_content.bytes > 0
    # Past it by 20 runs more than the content: then the oldest evaluations go, unmatched.
    out = send(assembler._logged_content.bytes // per_run + 20)
    unmatched = out.counts[(UNMATCHED, ())]
    assert out.counts == {(UNMATCHED, ()): unmatched} and 0 < unmatched < 40 and len(assembler.traces) == sent
    assert assembler._logged_content.bytes == 0
    assert assembler.held_bytes() - assembler.memory == (40 - unmatched) * one_evaluation
    assert budget - one_evaluation < assembler.held_bytes() <= budget
    # At last open runs are evicted.
    out = send((40 - unmatched) * one_evaluation // per_run + 5)
    assert assembler.held_bytes() - assembler.memory == 0 < out.counts[(EVICTED_RUNS, (MEMORY,))]
    assert assembler.held_bytes() <= budget


def test_each_span_id_is_in_the_node_map_once_even_when_a_span_names_itself_its_parent():
    assembler = Assembler(RunsConfig())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), Context(metrics=Registry()))
    trace_id = span_id(5) * 2
    tool = make_span("execute_tool t", {"gen_ai.operation.name": "execute_tool"}, trace_id=trace_id)
    tool.parent_span_id = tool.span_id
    child = make_span(
        "execute_tool u", {"gen_ai.operation.name": "execute_tool"}, trace_id=trace_id, parent=tool.span_id
    )
    batch = Batch(make_request([tool, child]), 2)
    normalize.process(batch)
    assembler.intake(batch, 0.0)
    trace = assembler.traces[trace_id]
    assert [span for span, _ in trace.node_items()] == [tool.span_id, child.span_id]
