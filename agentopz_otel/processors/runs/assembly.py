"""Run assembly: spans grouped by trace into runs with a small union-find keyed by span id.

Spans arrive in any order, so a span joins the group of its parent (or of its children, when they
came first). An agent span's group is a run and does not join its parent's group on arrival; when
the run is about to finish, an agent ancestor makes it a sub-agent step of that outer run instead.

Per run only accumulators are kept (counts, tokens, cost, a few model names), plus the root span
itself for the grace period, so it can be forwarded carrying the run totals.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ...records import Evaluation, RunRecord
from ...spans import LLM, NO_TOKENS, STATUS_OK, TOOL, UPSTREAM_ERROR_STATUSES, Call, SpanView
from ..prompt_version import FROM_FLAG, FROM_NOTHING, UNKNOWN_VERSION

MAX_MODELS_PER_RUN = 8
MAX_TOOLS_PER_RUN = 64
MAX_EVALUATIONS_PER_RUN = 32
# OTLP Span.flags: bit 8 says whether bit 9 is known, bit 9 that the parent span is remote.
REMOTE_PARENT_FLAGS = 0x300


@dataclass
class HeldRoot:
    """The run's root span, held until the run finishes so it can carry the totals."""

    resource: Resource
    scope: InstrumentationScope
    schema_url: str
    span: Span
    size: int = 0  # serialized bytes of the span, its resource and scope: counted in the held-roots budget


@dataclass(slots=True)
class Output:
    """What one call into the Assembler produced, in the order it happened."""

    records: list[RunRecord] = field(default_factory=list)  # finished runs
    # Root spans to forward: a finished run's with its record (its totals go onto the span), the rest as
    # they came (record None).
    roots: list[tuple[HeldRoot, RunRecord | None]] = field(default_factory=list)
    # Held calls released to the call metrics, with the agent of their run (None: each call's own).
    calls: list[tuple[list[Call], str | None]] = field(default_factory=list)
    counts: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)  # (metric, labels) -> increment
    scores: list[tuple[tuple[str, ...], float]] = field(default_factory=list)  # agentopz_evaluation_score

    def count(self, metric: str, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        key = (metric, labels)
        self.counts[key] = self.counts.get(key, 0) + amount

    def extend(self, other: Output) -> None:
        self.records += other.records
        self.roots += other.roots
        self.calls += other.calls
        for (metric, labels), amount in other.counts.items():
            self.count(metric, labels, amount)
        self.scores += other.scores


# Calls and failed calls by name, flat: (name, calls, failed, name, calls, failed, ...).
CallCounts = tuple

# A call's labels: kind, service, the call's own agent, provider, model or tool, status.
CallLabels = tuple[str, str, str | None, str, str, str]
# A held call's row: its labels' position among the run's label tuples, a mask of the numbers the span
# gave (bits 0-4 an LLM call's five token counts, 5 its cost, 6 its duration), then those numbers:
# doubles, but token counts as 4-byte unsigned ints when all of them fit (bit 7 of the mask).
_ROW = struct.Struct("<HB")
_TOKENS = 5
_COST, _DURATION = 1 << 5, 1 << 6
WHOLE_TOKENS = 0x80
_MAX_WHOLE = 2**32 - 1
# A row's whole layout by its mask, for packing and unpacking it in one call.
_ROWS = [
    struct.Struct(f"<HB{(mask & 0x1F).bit_count()}{'I' if mask & WHOLE_TOKENS else 'd'}{(mask & 0x60).bit_count()}d")
    for mask in range(256)
]
_GIVEN = [tuple(bit for bit in range(7) if mask & 1 << bit) for mask in range(256)]  # the numbers' places
MAX_CALL_LABELS = 2**16  # label tuples a run's held calls may use; past it, calls count as they come


# A run's held calls, made anew for each call held so that it is exactly its size: (rows, then each
# distinct label tuple once, tuples shared between runs). A row holds only the numbers its span gave
# (3 bytes, 4 a token count and 8 another number: 19 bytes for an LLM call with two token counts and a
# duration).
HeldCalls = tuple
NO_CALLS: HeldCalls = (b"",)
# Rows past it grow in place in a bytearray (with its spare room): copying them whole for each call held
# would take time growing with the square of a run's calls.
EXACT_ROWS = 1024


def hold_call(calls: HeldCalls, call: Call, labels: CallLabels) -> HeldCalls | None:
    """`calls` and `call` (whose first six fields are `labels`); None when the run has too many label
    tuples to hold it."""
    try:
        position = calls.index(labels, 1) - 1
    except ValueError:
        position = len(calls) - 1
        if position >= MAX_CALL_LABELS:
            return None
        calls = (*calls, labels)
    mask = 0
    given: list[float] = []
    if call.kind == LLM:
        whole = WHOLE_TOKENS
        for bit, count in enumerate(call.tokens):
            if count is not None:
                mask |= 1 << bit
                given.append(count)
                if type(count) is not int or not 0 <= count <= _MAX_WHOLE:
                    whole = 0
        if mask:
            mask |= whole
        if call.cost is not None:
            mask |= _COST
            given.append(call.cost)
    if call.duration is not None:
        mask |= _DURATION
        given.append(call.duration)
    row = _ROWS[mask].pack(position, mask, *given)
    rows = calls[0]
    if type(rows) is bytearray:
        rows += row
        return calls
    return (bytearray(rows) + row if len(rows) >= EXACT_ROWS else rows + row, *calls[1:])


def merge_held(calls: HeldCalls, other: HeldCalls) -> HeldCalls:
    for call in held_calls(other):
        calls = hold_call(calls, call, call[:6]) or calls
    return calls


def held_calls(calls: HeldCalls) -> list[Call]:
    rows = calls[0]
    found = []
    start = 0
    end = len(rows)
    while start < end:
        layout = _ROWS[rows[start + 2]]
        position, mask, *numbers = layout.unpack_from(rows, start)
        start += layout.size
        values: list[float | None] = [None] * 7
        for bit, number in zip(_GIVEN[mask], numbers, strict=True):
            values[bit] = number
        labels = calls[position + 1]
        if labels[0] == LLM:
            tokens = tuple(None if n is None else int(n) for n in values[:_TOKENS])
            found.append(Call(*labels, tokens, values[5], values[6]))
        else:
            found.append(Call(*labels, NO_TOKENS, None, values[6]))
    return found


# Group fields most groups never set, kept in side records made on the first write of another value:
# a slot costs 8 bytes in every group. Those set when a run's root span arrives (an open run is mostly
# waiting for it: its agent span ends last), and those rarely set at all. The defaults are assigned one
# by one (a loop of setattr made a group's first root span cost more than the rest of its intake).


class RootFields:
    __slots__ = ("end_time", "failed", "named", "parent_id", "root", "root_arrived", "root_span_id", "start_time")

    def __init__(self) -> None:
        self.end_time = 0
        self.failed = False
        self.named = False  # run group: its agent span named the agent (not only by the span's own name)
        self.parent_id = b""  # run group: the agent span's parent
        self.root: HeldRoot | None = None
        self.root_arrived = 0.0
        self.root_span_id = b""
        self.start_time = 0


class RareFields:
    __slots__ = (
        "cache_read_tokens",
        "cache_write_tokens",
        "evaluations",
        "input",
        "last_llm_error",
        "last_tool_error",
        "llm_errors",
        "output",
        "output_from_agent",
        "reasoning_tokens",
        "sub_agents",
        "targeting_key",
        "tool_errors",
        "unpriced_calls",
    )

    def __init__(self) -> None:
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.evaluations: tuple[Evaluation, ...] = ()
        # (rank, start of the run's input): the agent span's input (rank 0) beats the earliest LLM call's.
        self.input: tuple[int, str] | None = None
        self.last_llm_error = 0
        self.last_tool_error = 0
        self.llm_errors = 0
        self.output: tuple[str, str] | None = None
        self.output_from_agent = False
        self.reasoning_tokens = 0
        self.sub_agents = 0
        self.targeting_key: str | None = None  # of the run's first flag evaluation that names one
        self.tool_errors = 0
        self.unpriced_calls = 0


# Read-only stand-ins for a group's missing side records: code reading many of their fields at once
# takes `group.rooted or NO_ROOT` and reads plain slots instead of going through the descriptors.
NO_ROOT = RootFields()
NO_RARE = RareFields()
ROOT_FIELDS = {name: getattr(NO_ROOT, name) for name in RootFields.__slots__}
RARE_FIELDS = {name: getattr(NO_RARE, name) for name in RareFields.__slots__}
DEFAULTS: dict[type, dict[str, Any]] = {RootFields: ROOT_FIELDS, RareFields: RARE_FIELDS}


class _Side:
    """A Group field kept in one of the group's side records (the slot `record`, made as `kind`)."""

    __slots__ = ("default", "kind", "name", "record")

    def __init__(self, record: str, kind: type[RootFields] | type[RareFields]) -> None:
        self.record = record
        self.kind = kind

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.default = DEFAULTS[self.kind][name]

    def __get__(self, group: Group | None, owner: type | None = None) -> Any:
        side = getattr(group, self.record)
        return self.default if side is None else getattr(side, self.name)

    def __set__(self, group: Group, value: Any) -> None:
        side = getattr(group, self.record)
        if side is None:
            if value == self.default:
                return
            side = self.kind()
            setattr(group, self.record, side)
        setattr(side, self.name, value)


def _rooted() -> Any:
    return _Side("rooted", RootFields)


def _rare() -> Any:
    return _Side("rare", RareFields)


class Group:
    """Accumulators for one run (or for spans whose run is not known yet)."""

    __slots__ = (
        "agent",
        "agent_known",
        "calls",
        "cost",
        "counts",
        "final_call_end",
        "finish_reason",
        "finished",
        "input_tokens",
        "is_run",
        "last_seen",
        "llm_calls",
        "merged_into",
        "output_tokens",
        "prompt_version",
        "rare",
        "rooted",
        "service",
        "steps",
        "tool_calls",
        "top_parent",
        "trace",
        "version_rank",
    )
    end_time: int = _rooted()
    failed: bool = _rooted()
    named: bool = _rooted()
    parent_id: bytes = _rooted()
    root_arrived: float = _rooted()
    root_span_id: bytes = _rooted()
    start_time: int = _rooted()
    cache_read_tokens: int = _rare()
    cache_write_tokens: int = _rare()
    evaluations: tuple[Evaluation, ...] = _rare()
    input: tuple[int, str] | None = _rare()
    last_llm_error: int = _rare()
    last_tool_error: int = _rare()
    llm_errors: int = _rare()
    output: tuple[str, str] | None = _rare()
    output_from_agent: bool = _rare()
    reasoning_tokens: int = _rare()
    root: HeldRoot | None = _rooted()
    sub_agents: int = _rare()
    targeting_key: str | None = _rare()
    tool_errors: int = _rare()
    unpriced_calls: int = _rare()

    def __init__(self, trace: TraceState, top_parent: bytes, now: float) -> None:
        self.trace = trace
        # Loose group: the parent id of its topmost span (b"" = trace root), or while the trace's id table
        # is packed, the number of the id's entry there (the id is in the table anyway; a number below 257
        # is shared, an id would be a bytes object of 41 bytes). Read as an id with `top_parent_id`.
        self.top_parent: bytes | int = top_parent
        self.merged_into: Group | None = None
        self.rooted: RootFields | None = None
        self.rare: RareFields | None = None
        self.is_run = False
        self.finished = False
        self.service = ""
        self.agent: str | None = None
        # The run's agent can no longer change: its calls count in the call metrics as they come.
        self.agent_known = False
        # Calls held back from the call metrics until the agent of their run is known.
        self.calls: HeldCalls | None = None
        self.prompt_version: str | None = None
        self.version_rank = FROM_NOTHING  # where prompt_version came from (prompt_version.FROM_*)
        self.last_seen = now
        self.cost = 0.0
        self.input_tokens = 0
        self.output_tokens = 0
        self.llm_calls = 0
        self.steps = 0
        self.tool_calls = 0
        # Calls and failed calls by model and by tool in one flat tuple (`RunCounts`): a dict of lists took
        # 300 bytes a run more, two tuples a header more; the empty tuple is shared.
        self.counts: RunCounts = ()
        self.finish_reason: str | None = None
        self.final_call_end = 0

    def root_fields(self) -> RootFields:
        """The side record of root fields, made if need be: for writing several at once."""
        if self.rooted is None:
            self.rooted = RootFields()
        return self.rooted

    def arrive(self, span_id: bytes, view: SpanView, now: float) -> None:
        """The group's root span has come: `span_id`, described by `view`."""
        rooted = self.root_fields()
        rooted.root_span_id = span_id
        rooted.failed = view.status != STATUS_OK
        rooted.start_time = view.span.start_time_unix_nano
        rooted.end_time = view.end_time
        rooted.root_arrived = now

    def top_parent_id(self) -> bytes:
        """The id of the parent its topmost span waits for (b"": the trace root), read back from the
        trace's id table when `top_parent` numbers its entry there."""
        top_parent = self.top_parent
        if type(top_parent) is int:
            start = (top_parent - 1) * ID_ENTRY
            return bytes(self.trace.ids[start : start + SPAN_ID_BYTES])  # type: ignore[index]
        return top_parent  # type: ignore[return-value]

    def find(self) -> Group:
        group = self
        while group.merged_into is not None:
            group = group.merged_into
        return group

    @property
    def has_work(self) -> bool:
        return self.llm_calls > 0 or self.tool_calls > 0 or self.is_run

    def offer_version(self, version: str | None, rank: int, replace_equal: bool = False) -> None:
        """Keep the most authoritative prompt version offered: an explicit attribute, then a flag's variant,
        then the instructions' hash; among equals the first (or, with replace_equal, the newest)."""
        if version not in (None, UNKNOWN_VERSION) and (
            rank < self.version_rank or (replace_equal and rank == self.version_rank)
        ):
            self.prompt_version = version
            self.version_rank = rank

    def absorb(self, other: Group) -> None:
        """Take over `other`'s accumulators (other is a subtree of this group)."""
        for name in (
            "cost",
            "unpriced_calls",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "llm_calls",
            "llm_errors",
            "steps",
            "sub_agents",
            "tool_calls",
            "tool_errors",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_llm_error = max(self.last_llm_error, other.last_llm_error)
        self.last_tool_error = max(self.last_tool_error, other.last_tool_error)
        self.counts = merge_run_counts(self.counts, other.counts)
        if self.targeting_key is None:
            self.targeting_key = other.targeting_key
        self.evaluations = (*self.evaluations, *other.evaluations)[:MAX_EVALUATIONS_PER_RUN]
        if other.final_call_end > self.final_call_end:
            self.final_call_end = other.final_call_end
            self.finish_reason = other.finish_reason
            if not self.output_from_agent and other.output is not None:
                self.output = other.output
        if self.agent is None and not self.is_run:
            self.agent = other.agent
        if other.calls:
            self.calls = merge_held(self.calls, other.calls) if self.calls else other.calls
            other.calls = None
        self.offer_version(other.prompt_version, other.version_rank)
        if other.input is not None and (self.input is None or other.input[0] < self.input[0]):
            self.input = other.input
        self.service = self.service or other.service
        self.last_seen = max(self.last_seen, other.last_seen)
        other.merged_into = self
        other.root = None


def add_span(group: Group, view: SpanView) -> None:
    """Count a span in its group (a function, not a Group method: compiled, it reads the view through
    SpanView's C struct, assembly.pxd)."""
    # Fields in side records are read and written only when the span has something for them: each
    # access goes through a descriptor.
    if view.flag_version is not None:
        group.offer_version(view.flag_version, FROM_FLAG)
    if view.targeting_key is not None and group.targeting_key is None:
        group.targeting_key = view.targeting_key
    if view.agent and group.agent is None:
        group.agent = view.agent
    if not group.service:
        group.service = view.service
    if view.kind == LLM:
        group.llm_calls += 1
        group.steps += 1
        if view.cost is not None:
            group.cost += view.cost
        elif view.cost_source is not None:
            group.unpriced_calls += 1
        group.input_tokens += view.input_tokens or 0
        group.output_tokens += view.output_tokens or 0
        if view.cache_read_tokens:
            group.cache_read_tokens += view.cache_read_tokens
        if view.cache_write_tokens:
            group.cache_write_tokens += view.cache_write_tokens
        if view.reasoning_tokens:
            group.reasoning_tokens += view.reasoning_tokens
        if view.status in UPSTREAM_ERROR_STATUSES:
            group.llm_errors += 1
            group.last_llm_error = max(group.last_llm_error, view.end_time)
        elif view.status != STATUS_OK:
            group.llm_errors += 1
        if view.model:
            group.counts = count_run_call(group.counts, False, view.model, view.status != STATUS_OK)
        group.offer_version(view.prompt_version, view.prompt_version_from)
        if view.end_time >= group.final_call_end:
            group.final_call_end = view.end_time
            group.finish_reason = view.finish_reason
            if view.output is not None and (group.rare is None or not group.rare.output_from_agent):
                group.output = view.output
    elif view.kind == TOOL:
        group.tool_calls += 1
        if view.tool:
            group.counts = count_run_call(group.counts, True, view.tool, view.status != STATUS_OK)
        if view.status != STATUS_OK:
            group.tool_errors += 1
            group.last_tool_error = max(group.last_tool_error, view.end_time)


# Every field of a group by name, as a checkpoint keeps them (side records are how they are held).
GROUP_FIELDS = (*(name for name in Group.__slots__ if name not in ("rare", "rooted")), *ROOT_FIELDS, *RARE_FIELDS)


def _counted(counts: tuple, index: int, calls: int, failed: bool) -> tuple:
    """`counts` with `calls` more calls of the name at `index`, `failed` of them failed (through a list:
    cheaper than slicing the tuple around the two numbers)."""
    found = list(counts)
    found[index + 1] += calls
    found[index + 2] += int(failed)
    return tuple(found)


def count_call(counts: CallCounts, name: str, failed: bool, limit: int, calls: int = 1) -> CallCounts:
    """`counts` with `calls` more calls of `name` (`failed` of them failed); at most `limit` names."""
    try:
        index = 3 * counts[::3].index(name)
    except ValueError:
        if len(counts) >= 3 * limit:
            return counts
        return (*counts, name, calls, int(failed))
    return _counted(counts, index, calls, failed)


def merge_counts(counts: CallCounts, other: CallCounts, limit: int) -> CallCounts:
    for index in range(0, len(other), 3):
        counts = count_call(counts, other[index], other[index + 2], limit, other[index + 1])
    return counts


def counts_by_name(counts: CallCounts) -> dict[str, list[int]]:
    """{name: [calls, failed calls]}, in the order the names came."""
    return {counts[index]: [counts[index + 1], counts[index + 2]] for index in range(0, len(counts), 3)}


# A run's calls by model and by tool in one flat tuple: how many models, then (model, calls, failed) for
# each, then (tool, calls, failed) for each; () for none.
RunCounts = tuple


def models_of(counts: RunCounts) -> CallCounts:
    return counts[1 : 1 + 3 * counts[0]] if counts else ()


def tools_of(counts: RunCounts) -> CallCounts:
    return counts[1 + 3 * counts[0] :] if counts else ()


def run_counts(models: CallCounts, tools: CallCounts) -> RunCounts:
    return (len(models) // 3, *models, *tools) if models or tools else ()


def count_run_call(counts: RunCounts, tool: bool, name: str, failed: bool, calls: int = 1) -> RunCounts:
    """`counts` with `calls` more calls of the model or tool `name`; at most MAX_MODELS_PER_RUN models and
    MAX_TOOLS_PER_RUN tools (made in one tuple: this runs for every call)."""
    models = counts[0] if counts else 0
    start, end = (1 + 3 * models, len(counts)) if tool else (1, 1 + 3 * models)
    try:
        index = counts.index(name, start, end)  # (only names are strings: a match is a name's place)
    except ValueError:
        if end - start >= 3 * (MAX_TOOLS_PER_RUN if tool else MAX_MODELS_PER_RUN):
            return counts
        if tool:
            return (models, *counts[1:], name, calls, int(failed)) if counts else (0, name, calls, int(failed))
        return (models + 1, *counts[1:end], name, calls, int(failed), *counts[end:])
    return _counted(counts, index, calls, failed)


def merge_run_counts(counts: RunCounts, other: RunCounts) -> RunCounts:
    for tool, found in ((False, models_of(other)), (True, tools_of(other))):
        for index in range(0, len(found), 3):
            counts = count_run_call(counts, tool, found[index], found[index + 2], found[index + 1])
    return counts


SPAN_ID_BYTES = 8
MEMORY_UNIT = 16  # a trace's share of the estimate is kept in units of this many bytes (TraceState.units)
# Memory an open or finished trace holds, as measured with tracemalloc (bench/open_runs_memory.py): the
# estimate the runs processor keeps under runs.max_memory_bytes. Content and root spans count by size.
TRACE_BYTES = 337  # the trace, its entry in the processor's map, its id, its group list, its id table's header
GROUP_BYTES = 240  # a group with its own token counts
# A finished trace's entry in the late window (the ordered map, its (trace, time) pair) beside an open one's.
FINISHED_TRACE_BYTES = 64
# A group's side records, when made; the root's with its span id and times.
ROOT_FIELDS_BYTES = 200
RARE_FIELDS_BYTES = 150
CALL_COUNTS_BYTES = 40  # a group's calls by model or by tool, beside 8 bytes a field
NODE_BYTES = 110  # a span id in the node map once it is a dict, with the id itself
SET_SPAN_ID_BYTES = 90  # a remembered span id once a trace keeps them in a set
HELD_CALLS_BYTES = 105  # a run's held calls beside their rows: the tuple, the header of the rows
HELD_ROOT_BYTES = 600  # a held root's resource and scope copies and wrappers, beside 2x its encoded size
EVALUATION_BYTES = 400  # an evaluation held with its run or waiting for it, beside its explanation
# Span ids a trace knows, received (remembered so a span sent again counts once) or awaited as a parent
# (the node map: span id -> its group), in one table of 9-byte entries found with bytes.find: the id,
# then a tag whose top bit says it was received and whose low 7 bits number its group in the trace's
# groups plus one (0: not in the node map; LLM calls have no children and stay out of it). A set and a
# dict cost ~90 and ~110 bytes an id, and the many small traces are what count, so the table moves to
# them (`SpanIds`) only past PACKED_IDS entries or a group numbered past what the tag holds.
PACKED_IDS = 128
ID_ENTRY = SPAN_ID_BYTES + 1
SEEN_TAG = 0x80
_PACKED_GROUPS = SEEN_TAG - 1
# What `TraceState.receive` found of a span id.
NEW_ID, KNOWN_ID, RECEIVED_ID = 0, 1, 2
# bytes.translate deletion tables: what is left of a table's tags counts its nodes, its received ids.
_NOT_NODE = bytes((0, SEEN_TAG))
_NOT_SEEN = bytes(range(SEEN_TAG))


def _find(packed: bytearray, span_id: bytes) -> int:
    """Where `span_id`'s entry starts in the packed table; -1 if it is not there."""
    index = packed.find(span_id)
    while index >= 0:
        if index % ID_ENTRY == 0:  # a match across two entries is no match
            return index
        index = packed.find(span_id, index + 1)
    return -1


class SpanIds:
    """A trace's span ids past the packed table: the node map and the received ids apart."""

    __slots__ = ("nodes", "seen")

    def __init__(self, nodes: dict[bytes, Group], seen: set[bytes]) -> None:
        self.nodes = nodes
        self.seen = seen


# A trace's groups are a tuple made anew for each group while it has at most this many (most traces have
# one: a tuple of one is 16 bytes less than a list), then a list, so that a trace with many groups does
# not copy them all for each.
TUPLE_GROUPS = 4


class TraceState:
    __slots__ = ("groups", "ids", "last_seen", "trace_id", "units")

    def __init__(self, trace_id: bytes, now: float) -> None:
        self.trace_id = trace_id
        self.ids: bytearray | SpanIds = bytearray()  # see PACKED_IDS
        self.groups: tuple[Group, ...] | list[Group] = ()  # see TUPLE_GROUPS
        self.last_seen = now
        # Its share of RunsProcessor's memory estimate when it was last taken, in MEMORY_UNITs: a number
        # of bytes would be an int object of 32 bytes of its own, a number below 257 is shared.
        self.units = 0

    def _unpack(self) -> SpanIds:
        ids = self.ids
        if isinstance(ids, SpanIds):
            return ids
        for group in self.groups:  # entry numbers mean nothing past the packed table
            group.top_parent = group.top_parent_id()
        self.ids = unpacked = SpanIds(dict(self.node_items()), set(self.seen_ids()))
        return unpacked

    def node(self, span_id: bytes) -> Group | None:
        ids = self.ids
        if type(ids) is not bytearray:
            group = ids.nodes.get(span_id)
        else:
            position = ids.find(span_id)
            if position < 0:
                return None
            if position % ID_ENTRY:  # found across two entries: look on
                position = _find(ids, span_id)
                if position < 0:
                    return None
            number = ids[position + SPAN_ID_BYTES] & _PACKED_GROUPS
            if not number:
                return None
            group = self.groups[number - 1]
        if group is None:
            return None
        while group.merged_into is not None:
            group = group.merged_into
        return group

    def set_node(self, span_id: bytes, group: Group) -> int:
        """`span_id` belongs to `group`; the number of its entry in the packed table (from 1), or 0 once
        the table is unpacked."""
        ids = self.ids
        if type(ids) is bytearray:
            groups = self.groups
            number = len(groups) if groups[-1] is group else groups.index(group) + 1
            if number <= _PACKED_GROUPS:
                position = ids.find(span_id)
                if position >= 0 and (position % ID_ENTRY == 0 or (position := _find(ids, span_id)) >= 0):
                    tag = position + SPAN_ID_BYTES
                    ids[tag] = ids[tag] & SEEN_TAG | number
                    return position // ID_ENTRY + 1
                if len(ids) < PACKED_IDS * ID_ENTRY:
                    ids += span_id
                    ids.append(number)
                    return len(ids) // ID_ENTRY
        self._unpack().nodes[span_id] = group
        return 0

    def node_items(self) -> list[tuple[bytes, Group]]:
        ids = self.ids
        if type(ids) is not bytearray:
            return list(ids.nodes.items())
        return [
            (bytes(ids[start : start + SPAN_ID_BYTES]), self.groups[(ids[start + SPAN_ID_BYTES] & _PACKED_GROUPS) - 1])
            for start in range(0, len(ids), ID_ENTRY)
            if ids[start + SPAN_ID_BYTES] & _PACKED_GROUPS
        ]

    def entry_count(self) -> int:
        """An upper bound of node_count, cheap: the packed table's entries (every id it knows)."""
        ids = self.ids
        return len(ids) // ID_ENTRY if type(ids) is bytearray else len(ids.nodes)

    def node_count(self) -> int:
        ids = self.ids
        if type(ids) is not bytearray:
            return len(ids.nodes)
        return len(ids[SPAN_ID_BYTES::ID_ENTRY].translate(None, _NOT_NODE))

    def ids_bytes(self) -> int:
        ids = self.ids
        if type(ids) is bytearray:
            return len(ids)
        return len(ids.nodes) * NODE_BYTES + len(ids.seen) * SET_SPAN_ID_BYTES

    def has_seen(self, span_id: bytes) -> bool:
        ids = self.ids
        if type(ids) is not bytearray:
            return span_id in ids.seen
        position = ids.find(span_id)
        if position < 0:
            return False
        if position % ID_ENTRY:
            position = _find(ids, span_id)
            if position < 0:
                return False
        return ids[position + SPAN_ID_BYTES] >= SEEN_TAG

    def receive(self, span_id: bytes) -> int:
        """`has_seen` and `add_seen` in one search of the table: RECEIVED_ID when `span_id` was received
        before; else it is marked received, NEW_ID when that made its entry (it is in no group), KNOWN_ID
        when it had one (awaited as a parent: `node` knows its group)."""
        ids = self.ids
        if type(ids) is bytearray:
            position = ids.find(span_id)  # (mostly not there: `_find` only when found)
            if position >= 0 and (position % ID_ENTRY == 0 or (position := _find(ids, span_id)) >= 0):
                tag = position + SPAN_ID_BYTES
                if ids[tag] >= SEEN_TAG:
                    return RECEIVED_ID
                ids[tag] |= SEEN_TAG
                return KNOWN_ID
            if len(ids) < PACKED_IDS * ID_ENTRY:
                ids += span_id
                ids.append(SEEN_TAG)
                return NEW_ID
        seen = self._unpack().seen
        if span_id in seen:
            return RECEIVED_ID
        seen.add(span_id)
        return KNOWN_ID

    def add_seen(self, span_id: bytes) -> None:
        self.receive(span_id)

    def seen_count(self) -> int:
        ids = self.ids
        if type(ids) is not bytearray:
            return len(ids.seen)
        return len(ids[SPAN_ID_BYTES::ID_ENTRY].translate(None, _NOT_SEEN))

    def seen_ids(self) -> list[bytes]:
        ids = self.ids
        if type(ids) is not bytearray:
            return list(ids.seen)
        return [
            bytes(ids[start : start + SPAN_ID_BYTES])
            for start in range(0, len(ids), ID_ENTRY)
            if ids[start + SPAN_ID_BYTES] >= SEEN_TAG
        ]

    def forget_ids(self) -> None:
        self.ids = bytearray()


def footprint(trace: TraceState) -> int:
    """Estimated bytes `trace` holds, to the nearest MEMORY_UNIT: see TRACE_BYTES."""
    size = TRACE_BYTES + trace.ids_bytes()
    for group in trace.groups:
        size += GROUP_BYTES
        if group.counts:
            size += CALL_COUNTS_BYTES + 8 * len(group.counts)
        if group.calls is not None:
            size += HELD_CALLS_BYTES + len(group.calls[0])
        rooted = group.rooted
        if rooted is not None:
            size += ROOT_FIELDS_BYTES
            if rooted.root is not None:
                size += HELD_ROOT_BYTES + 2 * rooted.root.span.ByteSize()
        rare = group.rare
        if rare is not None:
            size += RARE_FIELDS_BYTES
            if rare.output is not None:
                size += len(rare.output[1])
            if rare.input is not None:
                size += len(rare.input[1])
            size += sum(map(evaluation_bytes, rare.evaluations))
    return (size + MEMORY_UNIT // 2) // MEMORY_UNIT * MEMORY_UNIT


def evaluation_bytes(evaluation: Evaluation) -> int:
    return EVALUATION_BYTES + len(evaluation.explanation or "")


def unfinished(trace: TraceState) -> list[Group]:
    return [g for g in trace.groups if g.merged_into is None and not g.finished]


def new_group(trace: TraceState, top_parent: bytes, now: float) -> Group:
    group = Group(trace, top_parent, now)
    groups = trace.groups
    if type(groups) is list:
        groups.append(group)
    elif len(groups) < TUPLE_GROUPS:
        trace.groups = (*groups, group)
    else:
        trace.groups = [*groups, group]
    return group


def known_top_level(group: Group) -> bool:
    """A run that can no longer turn out to be nested in another: its agent span is the trace root,
    or every span above it has arrived and none of them is an agent."""
    if not group.parent_id:
        return True
    parent = group.trace.node(group.parent_id)
    return parent is not None and not parent.is_run and not parent.top_parent


def outer_run(group: Group, now: float, root_wait_seconds: float) -> Group | bool | None:
    """For a run group: the enclosing run (nested agent), None if top-level, True to keep waiting."""
    parent_id = group.parent_id
    if not parent_id:
        return None
    parent = group.trace.node(parent_id)
    if parent is None or (not parent.is_run and parent.top_parent):
        # The parent (or the top of its subtree) has not arrived: it might be an outer agent.
        return True if now - group.root_arrived < root_wait_seconds else None
    return parent if parent.is_run else None
