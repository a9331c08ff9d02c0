"""Run assembly: spans grouped by trace into runs with a small union-find keyed by span id.

Spans arrive in any order, so a span joins the group of its parent (or of its children, when they
came first). An agent span's group is a run and does not join its parent's group on arrival; when
the run is about to finish, an agent ancestor makes it a sub-agent step of that outer run instead.

Per run only accumulators are kept (counts, tokens, cost, a few model names), plus the root span
itself for the grace period, so it can be forwarded carrying the run totals.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ...model import LLM, STATUS_OK, TOOL, UPSTREAM_ERROR_STATUSES, Call, SpanView
from ...records import Evaluation
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


class Group:
    """Accumulators for one run (or for spans whose run is not known yet)."""

    __slots__ = (
        "agent",
        "agent_known",
        "cache_read_tokens",
        "cache_write_tokens",
        "calls",
        "cost",
        "end_time",
        "evaluations",
        "failed",
        "final_call_end",
        "finish_reason",
        "finished",
        "input",
        "input_tokens",
        "is_run",
        "last_llm_error",
        "last_seen",
        "last_tool_error",
        "llm_calls",
        "llm_errors",
        "merged_into",
        "models",
        "named",
        "output",
        "output_from_agent",
        "output_tokens",
        "parent_id",
        "prompt_version",
        "reasoning_tokens",
        "root",
        "root_arrived",
        "root_span_id",
        "service",
        "start_time",
        "steps",
        "sub_agents",
        "tool_calls",
        "tool_errors",
        "tools",
        "top_parent",
        "trace",
        "unpriced_calls",
        "version_rank",
    )

    def __init__(self, trace: TraceState, top_parent: bytes, now: float) -> None:
        self.trace = trace
        self.top_parent = top_parent  # loose group: parent id of its topmost span (b"" = trace root)
        self.merged_into: Group | None = None
        self.is_run = False
        self.finished = False
        self.root: HeldRoot | None = None
        self.root_arrived = 0.0
        self.root_span_id = b""
        self.parent_id = b""  # run group: the agent span's parent
        self.service = ""
        self.agent: str | None = None
        self.named = False  # run group: its agent span named the agent (not only by the span's own name)
        # The run's agent can no longer change: its calls count in the call metrics as they come.
        self.agent_known = False
        # Calls held back from the call metrics until the agent of their run is known.
        self.calls: list[Call] | None = None
        self.prompt_version: str | None = None
        self.version_rank = FROM_NOTHING  # where prompt_version came from (prompt_version.FROM_*)
        self.failed = False
        self.start_time = 0
        self.end_time = 0
        self.last_seen = now
        self.cost = 0.0
        self.unpriced_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
        self.llm_calls = 0
        self.llm_errors = 0
        self.steps = 0
        self.sub_agents = 0
        self.tool_calls = 0
        self.tool_errors = 0
        self.last_llm_error = 0
        self.last_tool_error = 0
        # Calls and failed calls by model and by tool; None until the first tool call, so runs
        # without tools cost nothing for them (the empty evaluations tuple is shared likewise).
        self.models: dict[str, list[int]] = {}
        self.tools: dict[str, list[int]] | None = None
        self.evaluations: tuple[Evaluation, ...] = ()
        self.output: tuple[str, str] | None = None
        self.output_from_agent = False
        # (rank, start of the run's input): the agent span's input (rank 0) beats the earliest LLM call's.
        self.input: tuple[int, str] | None = None
        self.finish_reason: str | None = None
        self.final_call_end = 0

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

    def add(self, view: SpanView) -> None:
        if view.flag_version is not None:
            self.offer_version(view.flag_version, FROM_FLAG)
        if view.agent and self.agent is None:
            self.agent = view.agent
        if not self.service:
            self.service = view.service
        if view.kind == LLM:
            self.llm_calls += 1
            self.steps += 1
            if view.cost is not None:
                self.cost += view.cost
            elif view.cost_source is not None:
                self.unpriced_calls += 1
            self.input_tokens += view.input_tokens or 0
            self.output_tokens += view.output_tokens or 0
            self.cache_read_tokens += view.cache_read_tokens or 0
            self.cache_write_tokens += view.cache_write_tokens or 0
            self.reasoning_tokens += view.reasoning_tokens or 0
            if view.status in UPSTREAM_ERROR_STATUSES:
                self.llm_errors += 1
                self.last_llm_error = max(self.last_llm_error, view.end_time)
            elif view.status != STATUS_OK:
                self.llm_errors += 1
            if view.model:
                _count_call(self.models, view.model, view.status != STATUS_OK, MAX_MODELS_PER_RUN)
            self.offer_version(view.prompt_version, view.prompt_version_from)
            if view.end_time >= self.final_call_end:
                self.final_call_end = view.end_time
                self.finish_reason = view.finish_reason
                if view.output is not None and not self.output_from_agent:
                    self.output = view.output
        elif view.kind == TOOL:
            self.tool_calls += 1
            if view.tool:
                if self.tools is None:
                    self.tools = {}
                _count_call(self.tools, view.tool, view.status != STATUS_OK, MAX_TOOLS_PER_RUN)
            if view.status != STATUS_OK:
                self.tool_errors += 1
                self.last_tool_error = max(self.last_tool_error, view.end_time)

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
        _merge_calls(self.models, other.models, MAX_MODELS_PER_RUN)
        if other.tools:
            if self.tools is None:
                self.tools = {}
            _merge_calls(self.tools, other.tools, MAX_TOOLS_PER_RUN)
        self.evaluations = (*self.evaluations, *other.evaluations)[:MAX_EVALUATIONS_PER_RUN]
        if other.final_call_end > self.final_call_end:
            self.final_call_end = other.final_call_end
            self.finish_reason = other.finish_reason
            if not self.output_from_agent and other.output is not None:
                self.output = other.output
        if self.agent is None and not self.is_run:
            self.agent = other.agent
        if other.calls:
            if self.calls:
                self.calls.extend(other.calls)
            else:
                self.calls = other.calls
            other.calls = None
        self.offer_version(other.prompt_version, other.version_rank)
        if other.input is not None and (self.input is None or other.input[0] < self.input[0]):
            self.input = other.input
        self.service = self.service or other.service
        self.last_seen = max(self.last_seen, other.last_seen)
        other.merged_into = self
        other.root = None


def _count_call(calls: dict[str, list[int]], name: str, failed: bool, limit: int) -> None:
    counts = calls.get(name)
    if counts is None:
        if len(calls) >= limit:
            return
        counts = calls[name] = [0, 0]
    counts[0] += 1
    counts[1] += failed


def _merge_calls(calls: dict[str, list[int]], other: dict[str, list[int]], limit: int) -> None:
    for name, (count, failed) in other.items():
        counts = calls.get(name)
        if counts is None:
            if len(calls) >= limit:
                continue
            counts = calls[name] = [0, 0]
        counts[0] += count
        counts[1] += failed


class TraceState:
    __slots__ = ("groups", "last_seen", "nodes", "seen", "trace_id")

    def __init__(self, trace_id: bytes, now: float) -> None:
        self.trace_id = trace_id
        self.nodes: dict[bytes, Group] = {}  # span id (arrived, or awaited as a parent) -> group
        self.seen: set[bytes] = set()  # ids of the spans received, so a span sent again counts once
        self.groups: list[Group] = []
        self.last_seen = now

    def node(self, span_id: bytes) -> Group | None:
        group = self.nodes.get(span_id)
        return group.find() if group is not None else None


def unfinished(trace: TraceState) -> list[Group]:
    return [g for g in trace.groups if g.merged_into is None and not g.finished]


def new_group(trace: TraceState, top_parent: bytes, now: float) -> Group:
    group = Group(trace, top_parent, now)
    trace.groups.append(group)
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
