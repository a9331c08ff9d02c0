"""Open runs across a restart: the runs processor's state saved in a storage extension's database.

The open traces (with their held root spans) and the recently finished ones are saved in one row per
processor, at shutdown and every `interval_seconds`, and read back at start, so a restart does not
finish in-flight runs early or turn them into `abandoned`.

Each trace is packed into plain values (tuples, lists, bytes, numbers, strings; references between
groups as indexes, held root spans as their protobuf encoding), and each slice of packed traces is
pickled on its own, on the event loop: pickling holds the interpreter lock, so on a worker thread it
stopped the event loop for the whole checkpoint (about a second at 100,000 open runs), and one pickle
of everything costs three times as much as pickles of 500 traces (its memo grows with every object).
A periodic save takes at most a tenth of the event loop's time (pacing.py). Pickling the objects
themselves costs ten times more. A trace is packed as it is when its slice comes; one that finished
in the meantime is left out. Group fields are stored by name, so a checkpoint written before a field
was added still loads (the new field takes its default). Times on the monotonic clock are rebased on
load, so the downtime does not count as quiet time: a run needs its grace period again after a
restart, which gives senders time to deliver what they retried.

The row holds pickles one after another: a header (format, the group field names, how many slices of
open traces follow), then each slice as (the monotonic time it was packed, its items): the slices of
open traces, then those of finished ones (items of (trace, when it finished)). Each slice is rebased
by its own time. Formats before 8 are one pickle of (format, time, names, traces, finished).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import operator
import pickle
import sqlite3
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, fields

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ...pacing import throttled
from ...records import Evaluation
from ...spans import LLM, NO_TOKENS, Call
from .assembly import GROUP_FIELDS, NO_CALLS, Group, HeldCalls, HeldRoot, TraceState, hold_call, new_group, run_counts

log = logging.getLogger("agentopz_otel.runs")

# 8: a pickle per slice of traces after a header (the module's docstring); 7: held calls' token counts
# as 4-byte ints when they fit (a bit of the row's mask says so; rows of formats 5 and 6 read the
# same); 6: a group's calls by model and by tool in one tuple (`counts`); 5: held calls as rows of the
# numbers given; 4: held calls as 8 doubles (LLM) or 2 (tool) a call; 3: groups count calls per model
# and per tool, may hold the input.
FORMAT_VERSION = 8
READABLE_VERSIONS = (3, 4, 5, 6, 7, 8)
SLICE = 500  # traces packed and pickled in one slice of the event loop's time, about 4 ms
_SCHEMA = "CREATE TABLE IF NOT EXISTS run_checkpoint (owner TEXT PRIMARY KEY, saved_at REAL NOT NULL, state BLOB)"
# Group fields that are references, packed apart; every other field is a plain value.
_REFERENCES = ("trace", "merged_into", "root", "calls", "evaluations")
_PLAIN = tuple(name for name in GROUP_FIELDS if name not in _REFERENCES)
_plain_values = operator.attrgetter(*_PLAIN)
# Plain fields holding lists: copied when packed, since the pack is pickled on another thread while
# intake goes on, and lists again when unpacked.
_LISTS = frozenset(name for name in _PLAIN if isinstance(getattr(Group(TraceState(b"", 0.0), b"", 0.0), name), list))
_LIST_POSITIONS = tuple(position for position, name in enumerate(_PLAIN) if name in _LISTS)
_TOP_PARENT = _PLAIN.index("top_parent")  # kept as the id (in memory maybe its entry's number)
_EVALUATION_FIELDS = tuple(field.name for field in fields(Evaluation))


@dataclass
class RunState:
    """Open traces by last activity, and finished ones with when they finished (monotonic)."""

    traces: dict[bytes, TraceState]
    finished: OrderedDict[bytes, tuple[TraceState, float]]


# Formats 3 to 5 kept calls and failed calls by model and by tool apart: flat tuples, in format 3 dicts
# of [calls, failed] (or None).
_COUNTS = ("models", "tools")


def _plain(group: Group) -> tuple:
    copied = list(_plain_values(group))
    for position in _LIST_POSITIONS:
        copied[position] = tuple(copied[position])
    copied[_TOP_PARENT] = group.top_parent_id()
    return tuple(copied)


def _unpacked(name: str, value: object) -> object:
    if name in _LISTS:
        return list(value)  # type: ignore[call-overload]
    if name in _COUNTS and not isinstance(value, tuple):
        return tuple(item for name, pair in (value or {}).items() for item in (name, *pair))  # type: ignore[attr-defined]
    return value


def _format_4_calls(labels: tuple, numbers: bytes) -> list[Call]:
    """Format 4's held calls: per call its labels' position, then an LLM call's five token counts, cost
    and duration, or a tool call's duration, all doubles (NaN: not given)."""
    values = array("d", numbers)
    calls = []
    start = 0
    while start < len(values):
        kept = labels[int(values[start])]
        given = [None if math.isnan(n) else n for n in values[start + 1 : start + (8 if kept[0] == LLM else 2)]]
        if kept[0] == LLM:
            tokens = tuple(None if n is None else int(n) for n in given[:5])
            calls.append(Call(*kept, tokens, given[5], given[6]))
            start += 8
        else:
            calls.append(Call(*kept, NO_TOKENS, None, given[0]))
            start += 2
    return calls


def _held_calls(packed: tuple, version: int) -> HeldCalls:
    """Formats 4 and 5: (labels, the rows as bytes); format 3: one tuple per call, as `Call`."""
    if version >= 5:
        labels, rows = packed
        return (rows, *labels)
    calls = NO_CALLS
    for call in _format_4_calls(*packed) if version == 4 else [Call(*values) for values in packed]:
        calls = hold_call(calls, call, call[:6]) or calls
    return calls


def pack_trace(trace: TraceState) -> tuple:
    index = {id(group): number for number, group in enumerate(trace.groups)}
    groups = []
    for group in trace.groups:
        root = group.root
        groups.append(
            (
                _plain(group),
                index[id(group.merged_into)] if group.merged_into is not None else -1,
                None
                if root is None
                else (
                    root.resource.SerializeToString(),
                    root.scope.SerializeToString(),
                    root.schema_url,
                    root.span.SerializeToString(),
                ),
                None if group.calls is None else (group.calls[1:], bytes(group.calls[0])),
                tuple(tuple(getattr(e, name) for name in _EVALUATION_FIELDS) for e in group.evaluations),
            )
        )
    nodes = {span_id: index[id(group)] for span_id, group in trace.node_items()}
    return trace.trace_id, trace.last_seen, tuple(groups), nodes, tuple(trace.seen_ids())


def unpack_trace(packed: tuple, names: tuple[str, ...], shift: float, version: int = FORMAT_VERSION) -> TraceState:
    trace_id, last_seen, packed_groups, nodes, seen = packed
    trace = TraceState(trace_id, last_seen + shift)
    for span_id in seen:
        trace.add_seen(span_id)
    known = set(_PLAIN)
    merged = []
    for values, merged_into, root, calls, evaluations in packed_groups:
        group = new_group(trace, b"", 0.0)  # the defaults, for fields the checkpoint does not have
        by_name = dict(zip(names, values, strict=True))
        for name, value in by_name.items():
            if name in known:
                setattr(group, name, _unpacked(name, value))
        if version < 6:
            models, tools = (_unpacked(name, by_name.get(name)) for name in _COUNTS)
            group.counts = run_counts(models, tools)  # type: ignore[arg-type]
        group.last_seen += shift
        group.root_arrived += shift
        if root is not None:
            resource, scope, schema_url, span = root
            group.root = HeldRoot(
                Resource.FromString(resource),
                InstrumentationScope.FromString(scope),
                schema_url,
                Span.FromString(span),
                len(resource) + len(scope) + len(span),
            )
        group.calls = None if calls is None else _held_calls(calls, version)
        group.evaluations = tuple(Evaluation(**dict(zip(_EVALUATION_FIELDS, e, strict=True))) for e in evaluations)
        merged.append(merged_into)
    for group, merged_into in zip(trace.groups, merged, strict=True):
        if merged_into >= 0:
            group.merged_into = trace.groups[merged_into]
    entries = {span_id: trace.set_node(span_id, trace.groups[number]) for span_id, number in nodes.items()}
    if type(trace.ids) is bytearray:  # the parents awaited by their entry's number, as intake keeps them
        for group in trace.groups:
            group.top_parent = entries.get(group.top_parent) or group.top_parent  # type: ignore[call-overload]
    return trace


class RunCheckpoint:
    def __init__(self, connection: sqlite3.Connection, owner: str) -> None:
        self._connection = connection
        self._owner = owner
        connection.execute(_SCHEMA)

    def load(self) -> RunState | None:
        """The saved state, rebased to this process's clock; None when there is none or it is unreadable."""
        row = self._connection.execute("SELECT state FROM run_checkpoint WHERE owner = ?", (self._owner,)).fetchone()
        if row is None or row[0] is None:
            return None
        try:
            stream = io.BytesIO(row[0])
            version, *head = pickle.load(stream)
            if version not in READABLE_VERSIONS:
                raise ValueError(f"format {version}, not {FORMAT_VERSION}")
            if version < 8:
                saved_monotonic, names, traces, finished = head
                open_slices, slices = 1, iter([(saved_monotonic, traces), (saved_monotonic, finished)])
            else:
                names, open_slices = head
                slices = iter(lambda: pickle.load(stream) if stream.tell() < len(row[0]) else None, None)
            now = time.monotonic()
            state = RunState({}, OrderedDict())
            for number, (packed_at, items) in enumerate(slices):
                shift = now - packed_at
                if number < open_slices:
                    for packed in items:
                        trace = unpack_trace(packed, names, shift, version)
                        state.traces[trace.trace_id] = trace
                else:
                    for packed, finished_at in items:
                        trace = unpack_trace(packed, names, shift, version)
                        state.finished[trace.trace_id] = (trace, finished_at + shift)
        except Exception as error:  # written by another version of the code, or damaged
            log.warning("%s: the run checkpoint cannot be read (%s); starting without it", self._owner, error)
            return None
        return state

    async def snapshot(self, state: RunState, share: float = 1.0) -> bytes:
        """Pack and pickle every trace a slice at a time, taking at most `share` of the event loop."""
        open_traces = list(state.traces.items())
        finished = list(state.finished.items())
        open_slices = range(0, len(open_traces), SLICE)
        slices = [(True, start) for start in open_slices] + [(False, start) for start in range(0, len(finished), SLICE)]
        pickles = [pickle.dumps((FORMAT_VERSION, _PLAIN, len(open_slices)), pickle.HIGHEST_PROTOCOL)]
        async for is_open, start in throttled(slices, share):
            if is_open:
                items = [pack_trace(t) for i, t in open_traces[start : start + SLICE] if state.traces.get(i) is t]
            else:
                items = [
                    (pack_trace(entry[0]), entry[1])
                    for i, entry in finished[start : start + SLICE]
                    if state.finished.get(i) is entry
                ]
            # Its own time: the downtime counted on load is from when the slice was packed.
            pickles.append(pickle.dumps((time.monotonic(), items), pickle.HIGHEST_PROTOCOL))
        return b"".join(pickles)

    def write(self, blob: bytes) -> None:
        self._connection.execute(
            "INSERT INTO run_checkpoint (owner, saved_at, state) VALUES (?, ?, ?) "
            "ON CONFLICT (owner) DO UPDATE SET saved_at = excluded.saved_at, state = excluded.state",
            (self._owner, time.time(), blob),
        )

    async def save(self, state: RunState, share: float = 1.0) -> None:
        """Save `state`, taking at most `share` of the event loop (at shutdown all of it)."""
        try:
            blob = await self.snapshot(state, share)
            await asyncio.to_thread(self.write, blob)
        except (sqlite3.Error, pickle.PicklingError) as error:
            log.warning("%s: saving the run checkpoint failed: %s", self._owner, error)
