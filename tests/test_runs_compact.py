"""The compact forms the runs processor keeps per open run: remembered span ids, held calls, call counts."""

from __future__ import annotations

import asyncio
import pickle
import sqlite3
import time
from collections import OrderedDict

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support.otlp_proto import make_request, make_span

from agentopz_otel.components import Context
from agentopz_otel.metrics import Counter, Registry
from agentopz_otel.model import NO_TOKENS, Batch, Call
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.runs import FACTORY as RUNS
from agentopz_otel.processors.runs.assembly import (
    PACKED_SPAN_IDS,
    Group,
    HeldCalls,
    TraceState,
    count_call,
    counts_by_name,
    footprint,
    merge_counts,
)
from agentopz_otel.processors.runs.checkpoint import _PLAIN, RunCheckpoint, RunState, pack_trace


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
    for number in range(1, PACKED_SPAN_IDS + 1):
        trace.add_seen(span_id(number))
    assert isinstance(trace.seen, bytearray) and len(trace.seen) == 8 * PACKED_SPAN_IDS
    trace.add_seen(span_id(PACKED_SPAN_IDS + 1))
    assert isinstance(trace.seen, set)
    assert trace.seen_count() == PACKED_SPAN_IDS + 1
    assert all(trace.has_seen(span_id(n)) for n in range(1, PACKED_SPAN_IDS + 2))
    assert not trace.has_seen(span_id(PACKED_SPAN_IDS + 2))
    trace.forget_seen()
    assert trace.seen_count() == 0 and not trace.has_seen(span_id(1))


LLM_CALL = Call("llm", "svc", None, "openai", "gpt-4o", "ok", (1200, 300, 200, None, 0), 0.00575, 1.25)
UNPRICED = Call("llm", "svc", "inner", "vllm", "llama", "rate_limited", (None,) * 5, None, None)
TOOL_CALL = Call("tool", "svc", None, "", "search", "error", NO_TOKENS, None, 0.5)


def test_held_calls_come_back_exactly_as_they_were_held():
    held = HeldCalls()
    for call in (LLM_CALL, TOOL_CALL, LLM_CALL, UNPRICED):
        held.add(call, call[:6])
    assert held.calls() == [LLM_CALL, TOOL_CALL, LLM_CALL, UNPRICED]
    assert len(held.labels) == 3  # each distinct label tuple once
    assert len(held) == 8 + 2 + 8 + 8  # numbers; a tool call keeps its duration only
    other = HeldCalls()
    other.add(TOOL_CALL, TOOL_CALL[:6])
    held.merge(other)
    assert held.calls()[-1] == TOOL_CALL and len(held.calls()) == 5 and len(held.labels) == 3


def test_call_counts_by_name_keep_order_and_stop_at_the_limit():
    counts = ()
    for name, failed in (("a", False), ("b", True), ("a", True), ("c", False)):
        counts = count_call(counts, name, failed, limit=2)
    assert counts_by_name(counts) == {"a": [2, 1], "b": [1, 1]}
    merged = merge_counts(counts, count_call(count_call((), "c", True, 2), "a", False, 2), limit=3)
    assert counts_by_name(merged) == {"a": [3, 1], "b": [1, 1], "c": [1, 1]}


def test_a_checkpoint_of_the_previous_format_still_loads():
    """Format 3 kept held calls as Call tuples and counts as dicts of [calls, failed] (or None)."""
    trace = TraceState(span_id(7) * 2, 0.0)
    group = Group(trace, b"", 0.0)
    trace.groups.append(group)
    trace.nodes[span_id(1)] = group
    trace.add_seen(span_id(2))
    trace_id, last_seen, groups, nodes, seen = pack_trace(trace)
    plain = list(groups[0][0])
    plain[_PLAIN.index("models")] = {"gpt-4o": (3, 1)}
    plain[_PLAIN.index("tools")] = None
    old_group = (tuple(plain), -1, None, (tuple(LLM_CALL), tuple(TOOL_CALL)), ())
    old = (trace_id, last_seen, (old_group,), nodes, frozenset(seen))
    with sqlite3.connect(":memory:") as connection:
        checkpoint = RunCheckpoint(connection, "runs")
        checkpoint.write(pickle.dumps((3, 0.0, _PLAIN, [old], [])))
        state = checkpoint.load()
    assert isinstance(state, RunState) and list(state.traces) == [trace_id]
    loaded = state.traces[trace_id].groups[0]
    assert counts_by_name(loaded.models) == {"gpt-4o": [3, 1]} and loaded.tools == ()
    assert loaded.calls is not None and loaded.calls.calls() == [LLM_CALL, TOOL_CALL]
    assert state.traces[trace_id].has_seen(span_id(2))


@pytest.mark.parametrize("calls", [None, (LLM_CALL, TOOL_CALL)])
def test_the_current_checkpoint_format_round_trips_held_calls(calls):
    trace = TraceState(span_id(9) * 2, 0.0)
    group = Group(trace, b"", 0.0)
    trace.groups.append(group)
    if calls:
        group.calls = HeldCalls()
        for call in calls:
            group.calls.add(call, call[:6])
    with sqlite3.connect(":memory:") as connection:
        checkpoint = RunCheckpoint(connection, "runs")
        checkpoint.write(
            asyncio.run(checkpoint.snapshot(RunState(OrderedDict({trace.trace_id: trace}), OrderedDict())))
        )
        state = checkpoint.load()
    loaded = state.traces[trace.trace_id].groups[0]
    assert (None if loaded.calls is None else loaded.calls.calls()) == (None if calls is None else list(calls))


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
    for index in range(1, 1001):
        send(open_run(index))
    kept = list(runs.assembler.traces)
    assert 400 < len(kept) < 1000
    assert kept == [index.to_bytes(16, "big") for index in range(1001 - len(kept), 1001)]  # the newest
    assert evicted("memory") == 1000 - len(kept) and evicted("capacity") == 0
    assert runs.assembler.memory == sum(footprint(trace) for trace in runs.assembler.traces.values()) <= 2**20
    # One run less would fit: the budget is used, not left idle.
    assert runs.assembler.memory + footprint(runs.assembler.traces[kept[0]]) > 2**20


def test_over_the_budget_finished_traces_are_forgotten_before_open_runs_are_evicted():
    runs, send, evicted = runs_processor(max_memory_bytes=2**20)
    for index in range(1, 301):
        send(finished_run(index))
    runs.tick(time.monotonic() + 3600)
    assert len(runs.assembler.finished) == 300 and not runs.assembler.traces
    for index in range(1001, 1401):
        send(open_run(index))
    assert evicted("memory") == 0 and len(runs.assembler.traces) == 400
    assert 0 < len(runs.assembler.finished) < 300  # the oldest went first, to make room
    assert list(runs.assembler.finished)[-1] == (300).to_bytes(16, "big")
    for index in range(1401, 1601):
        send(open_run(index))
    assert not runs.assembler.finished and evicted("memory") == 600 - len(runs.assembler.traces) > 0
