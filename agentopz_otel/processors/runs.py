"""Runs: assemble spans into agent runs, decide each run's outcome, record run and in-flight metrics.

A run is the outermost agent span of a trace with everything beneath it; a trace with LLM calls and
no agent span is one run of its root. Spans arrive in any order, so spans are grouped with a small
union-find keyed by span id: a span joins the group of its parent (or of its children, when they
came first). An agent span's group is a run and does not join its parent's group on arrival; when
the run is about to finish, an agent ancestor makes it a sub-agent step of that outer run instead.

Per run only accumulators are kept (counts, tokens, cost, a few model names), plus the root span
itself for the grace period, so it can be forwarded carrying the run totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import itertools
import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_INFO, SEVERITY_NUMBER_WARN
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..components import Context, Factory, InFlightRuns, RunFeed
from ..content import input_text
from ..metrics import Registry
from ..model import AGENT, LLM, OTHER, STATUS_OK, TOOL, UPSTREAM_ERROR_STATUSES, Batch, SpanView, add_attribute
from .normalize import EVALUATION_EVENT, evaluation_from_attributes
from .prompt_version import UNKNOWN_VERSION
from .quality import FAIL, UNKNOWN, Evaluation, FinishedRun, QualityConfig, QualityEvaluator, evaluation_verdict

log = logging.getLogger("agentopz_otel.runs")

SUCCESS = "success"
QUALITY_FAILURE = "quality_failure"
LLM_ERROR = "llm_error"
TOOL_ERROR = "tool_error"
BUDGET_EXCEEDED = "budget_exceeded"
TIMEOUT = "timeout"
ABANDONED = "abandoned"
ERROR = "error"

RUN_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
RUN_COST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50)
RUN_COUNT_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
MAX_MODELS_PER_RUN = 8
FINISH_SLICE = 200  # quiet traces handled between two yields to the event loop
# OTLP Span.flags: bit 8 says whether bit 9 is known, bit 9 that the parent span is remote.
REMOTE_PARENT_FLAGS = 0x300
MAX_TOOLS_PER_RUN = 64
MAX_EVALUATIONS_PER_RUN = 32
SCORE_BUCKETS = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 3, 4, 5, 10)


class RunLimit(BaseModel):
    """Limits for runs of matching agents (glob patterns); the first matching entry applies."""

    model_config = ConfigDict(extra="forbid")

    agent: str = "*"
    service: str = "*"
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    max_duration_seconds: float | None = Field(default=None, gt=0)

    def matches(self, service: str, agent: str) -> bool:
        return fnmatch.fnmatchcase(agent, self.agent) and fnmatch.fnmatchcase(service, self.service)


class RunLogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(default=None, description="JSON lines file; '-' for stdout; unset: no file")
    otlp: bool = Field(default=True, description="also send each record as an OTLP log record to OTLP exporters")


class RunsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: float = Field(default=5.0, gt=0, description="quiet time after the root arrived")
    root_wait_seconds: float = Field(
        default=30.0, gt=0, description="how long a finished agent span waits for a parent that may be an agent"
    )
    abandon_after_seconds: float = Field(
        default=300.0, gt=0, description="quiet time after which a run whose root never came is abandoned"
    )
    late_window_seconds: float = Field(default=300.0, ge=0, description="how long finished runs are remembered")
    max_open_runs: int = Field(default=100_000, ge=1)
    max_spans_per_trace: int = Field(
        default=10_000, ge=1, description="span ids remembered per trace; spans past it skip run assembly"
    )
    tick_seconds: float = Field(default=0.5, gt=0)
    duration_buckets: list[float] = Field(default_factory=lambda: list(RUN_DURATION_BUCKETS))
    cost_buckets: list[float] = Field(default_factory=lambda: list(RUN_COST_BUCKETS))
    limits: list[RunLimit] = Field(default_factory=list)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    run_log: RunLogConfig = Field(default_factory=RunLogConfig)
    slo_file: str | None = Field(
        default=None, description="SLO file whose latency and cost thresholds are added as bucket boundaries"
    )

    @model_validator(mode="after")
    def _slo_buckets(self) -> RunsConfig:
        if self.slo_file:
            from ..slo import cost_thresholds, latency_thresholds, load_spec

            spec = load_spec(self.slo_file)
            self.duration_buckets = sorted({*self.duration_buckets, *latency_thresholds(spec)})
            self.cost_buckets = sorted({*self.cost_buckets, *cost_thresholds(spec)})
        return self


@dataclass
class HeldRoot:
    """The run's root span, held until the run finishes so it can carry the totals."""

    resource: Resource
    scope: InstrumentationScope
    schema_url: str
    span: Span


class Group:
    """Accumulators for one run (or for spans whose run is not known yet)."""

    __slots__ = (
        "agent",
        "cache_read_tokens",
        "cache_write_tokens",
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
        self.prompt_version: str | None = None
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

    def add(self, view: SpanView) -> None:
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
            if self.prompt_version is None and view.prompt_version not in (None, UNKNOWN_VERSION):
                self.prompt_version = view.prompt_version
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
        self.prompt_version = self.prompt_version or other.prompt_version
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
    __slots__ = ("groups", "last_seen", "nodes", "trace_id")

    def __init__(self, trace_id: bytes, now: float) -> None:
        self.trace_id = trace_id
        self.nodes: dict[bytes, Group] = {}  # span id (arrived, or awaited as a parent) -> group
        self.groups: list[Group] = []
        self.last_seen = now

    def node(self, span_id: bytes) -> Group | None:
        group = self.nodes.get(span_id)
        return group.find() if group is not None else None


@dataclass
class RunRecord:
    """A finished run: what the run log writes and the quality checks receive."""

    trace_id: str
    root_span_id: str
    service: str
    agent: str
    prompt_version: str
    outcome: str
    started_at: float
    finished_at: float
    duration_seconds: float | None
    cost_usd: float | None
    cost_complete: bool
    tokens: dict[str, int]
    steps: int
    llm_calls: int
    llm_errors: int
    tool_calls: int
    tool_errors: int
    sub_agents: int
    models: list[str]
    # Per model and per tool: [calls, failed calls] (at most MAX_MODELS_PER_RUN and MAX_TOOLS_PER_RUN names).
    calls_by_model: dict[str, list[int]] = field(default_factory=dict)
    calls_by_tool: dict[str, list[int]] = field(default_factory=dict)
    quality_verdict: str = UNKNOWN
    failed_checks: list[str] = field(default_factory=list)
    limit_exceeded: str | None = None
    # The start of the run's input, only when an extension displays content (Context.run_input_chars).
    input_start: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), sort_keys=True)


def decide_outcome(group: Group, record: RunRecord, limit: RunLimit | None, quality_verdict: str) -> str:
    """Exactly one outcome per run, most specific cause first."""
    if group.root is None and not group.root_span_id:
        return ABANDONED
    if limit is not None:
        if limit.max_cost_usd is not None and group.cost > limit.max_cost_usd:
            record.limit_exceeded = "max_cost_usd"
            return BUDGET_EXCEEDED
        if limit.max_steps is not None and group.steps > limit.max_steps:
            record.limit_exceeded = "max_steps"
            return BUDGET_EXCEEDED
        duration = record.duration_seconds
        if limit.max_duration_seconds is not None and duration is not None and duration > limit.max_duration_seconds:
            record.limit_exceeded = "max_duration_seconds"
            return TIMEOUT
    if group.failed:
        # The failure closest to the end explains it: a recovered earlier error does not.
        if group.last_llm_error and group.last_llm_error >= group.last_tool_error:
            return LLM_ERROR
        if group.last_tool_error:
            return TOOL_ERROR
        return ERROR
    if quality_verdict == FAIL:
        return QUALITY_FAILURE
    return SUCCESS


def run_log_request(records: list[RunRecord]) -> ExportLogsServiceRequest:
    """The run log as OTLP log records: one per run, linked to its trace, grouped by service."""
    request = ExportLogsServiceRequest()
    by_service: dict[str, Any] = {}
    for record in records:
        scope_logs = by_service.get(record.service)
        if scope_logs is None:
            resource_logs = request.resource_logs.add()
            add_attribute(resource_logs.resource.attributes, "service.name", record.service)
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name = "agentopz_otel.runs"
            by_service[record.service] = scope_logs
        log_record = scope_logs.log_records.add(
            time_unix_nano=min(int(record.finished_at * 1e9), 2**64 - 1),
            observed_time_unix_nano=time.time_ns(),
            severity_number=SEVERITY_NUMBER_INFO if record.outcome == SUCCESS else SEVERITY_NUMBER_WARN,
            severity_text="INFO" if record.outcome == SUCCESS else "WARN",
            trace_id=bytes.fromhex(record.trace_id),
            span_id=bytes.fromhex(record.root_span_id) if record.root_span_id else b"",
            event_name="agentopz.run",
        )
        log_record.body.string_value = record.to_json()
        for key, value in (
            ("gen_ai.agent.name", record.agent),
            ("agentopz.prompt.version", record.prompt_version),
            ("agentopz.run.outcome", record.outcome),
            ("agentopz.run.steps", record.steps),
            ("agentopz.run.tool_calls", record.tool_calls),
            ("agentopz.quality.verdict", record.quality_verdict),
        ):
            add_attribute(log_record.attributes, key, value)
        if record.cost_usd is not None and record.cost_complete:
            add_attribute(log_record.attributes, "agentopz.cost.usd", record.cost_usd)
    return request


class RunsProcessor:
    def __init__(
        self,
        component_id: str,
        config: RunsConfig,
        registry: Registry,
        feed: RunFeed | None = None,
        input_chars: int = 0,
    ) -> None:
        self.id = component_id
        self.config = config
        self._feed = feed
        self._input_chars = input_chars
        self._quality = QualityEvaluator(config.quality)
        self._responses: OrderedDict[str, bytes] = OrderedDict()  # gen_ai.response.id -> trace id
        # Evaluations that arrived before any span of their trace: trace id -> (arrival, evaluations).
        self._pending: OrderedDict[bytes, tuple[float, list[Evaluation]]] = OrderedDict()
        self._traces: OrderedDict[bytes, TraceState] = OrderedDict()  # by last activity, oldest first
        # Traces whose runs all finished, kept for late_window_seconds so late spans are recognised.
        self._finished: OrderedDict[bytes, tuple[TraceState, float]] = OrderedDict()
        self._emit_spans: Callable[[Batch], None] | None = None
        self._emit_logs: Callable[[ExportLogsServiceRequest, int], None] | None = None
        self._tick_task: asyncio.Task | None = None
        self._run_log: IO[str] | None = None
        labels = ("service", "agent", "prompt_version")
        self._runs = registry.counter("agentopz_runs_total", "Finished agent runs by outcome.", (*labels, "outcome"))
        self._duration = registry.histogram(
            "agentopz_run_duration_seconds", "Run duration (root span).", labels, config.duration_buckets
        )
        self._cost = registry.histogram(
            "agentopz_run_cost_usd",
            "Cost of runs whose every LLM call was priced; exemplars carry trace ids.",
            labels,
            config.cost_buckets,
        )
        self._steps = registry.histogram("agentopz_run_steps", "LLM steps per run.", labels, RUN_COUNT_BUCKETS)
        self._tool_calls = registry.histogram(
            "agentopz_run_tool_calls", "Tool calls per run.", labels, RUN_COUNT_BUCKETS
        )
        self._last_finished = registry.gauge(
            "agentopz_run_last_finished_timestamp_seconds",
            "When a run of the agent last finished.",
            ("service", "agent"),
        )
        self._in_flight = registry.gauge("agentopz_runs_in_flight", "Runs in progress.", ("service", "agent"))
        self._in_flight_cost = registry.gauge(
            "agentopz_in_flight_run_max_cost_usd", "Largest running cost of a run in progress.", ("service", "agent")
        )
        self._in_flight_steps = registry.gauge(
            "agentopz_in_flight_run_max_steps", "Most LLM steps of a run in progress.", ("service", "agent")
        )
        self._open_runs = registry.gauge(
            "agentopz_open_runs", "Runs held in memory (in flight or in their grace period)."
        )
        self._evicted = registry.counter(
            "agentopz_evicted_runs_total",
            "Runs dropped before finishing: the open-run cap was reached (capacity) or the service stopped (shutdown).",
            ("reason",),
            bounded=False,
        )
        self._unassembled = registry.counter(
            "agentopz_unassembled_spans_total",
            "Spans left out of run assembly because their trace reached runs.max_spans_per_trace.",
        )
        self._late = registry.counter(
            "agentopz_late_spans_total", "Spans that arrived after their run finished (not in run metrics)."
        )
        self._checks = registry.counter(
            "agentopz_quality_checks_total",
            "Quality check verdicts on finished runs (pass, fail, unknown, error).",
            (*labels, "check", "verdict"),
        )
        self._evaluations = registry.counter(
            "agentopz_evaluations_total",
            "Evaluator verdicts (gen_ai.evaluation.result, annotations), including those after the run finished.",
            (*labels, "evaluation", "verdict"),
        )
        self._scores = registry.histogram(
            "agentopz_evaluation_score", "Evaluator scores.", (*labels, "evaluation"), SCORE_BUCKETS
        )
        self._unmatched = registry.counter(
            "agentopz_evaluations_unmatched_total", "Evaluations whose run could not be found."
        )
        registry.before_collect.append(self._refresh_in_flight)

    # -- wiring --------------------------------------------------------------------------------

    def connect(
        self, emit_spans: Callable[[Batch], None], emit_logs: Callable[[ExportLogsServiceRequest, int], None]
    ) -> None:
        """Where finished runs go: their root spans to the rest of the pipeline, their records to log exporters."""
        self._emit_spans = emit_spans
        self._emit_logs = emit_logs

    async def start(self) -> None:
        path = self.config.run_log.path
        if path == "-":
            self._run_log = sys.stdout
        elif path:
            self._run_log = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (kept open)
        self._tick_task = asyncio.create_task(self._ticker())

    async def shutdown(self, timeout: float) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        self.flush()
        if self._run_log is not None and self._run_log is not sys.stdout:
            self._run_log.close()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_seconds)
            try:
                # Finish runs in slices so a burst of finished runs does not stall the receivers.
                now = time.monotonic()
                quiet = self._quiet_traces(now)
                for start in range(0, len(quiet), FINISH_SLICE):
                    self._finish_quiet(quiet[start : start + FINISH_SLICE], now)
                    await asyncio.sleep(0)
                self._expire(now)
            except Exception:
                log.exception("finishing runs failed; continuing")

    # -- span intake ---------------------------------------------------------------------------

    def process(self, batch: Batch) -> None:
        now = time.monotonic()
        held: list[SpanView] = []
        # Traces with GenAI work in this batch: their other spans (an HTTP root listed first) count too.
        genai = {view.trace_id for view in batch.views if view.kind != OTHER}
        for view in batch.views:
            if self._take(view, now, genai):
                held.append(view)
        if held:
            self._hold_roots(batch, held)
        if len(self._traces) > self.config.max_open_runs:
            self._evict()

    def _take(self, view: SpanView, now: float, genai: set[bytes]) -> bool:
        """Account one span; True when it is a run root to hold back until the run finishes."""
        if view.output is not None and len(view.output[1]) > self.config.quality.max_output_chars:
            view.output = None  # too large to hold until the run ends: content checks say unknown
        if view.evaluation_target is not None:
            self._evaluate_target(view)
            return False
        trace_id = view.trace_id
        trace = self._traces.get(trace_id)
        if trace is None:
            lingering = self._finished.pop(trace_id, None)
            if lingering is not None:
                trace = lingering[0]
            elif trace_id not in genai:
                return False  # a span of a trace with no GenAI work (yet): nothing to assemble
            else:
                trace = TraceState(trace_id, now)
            trace.last_seen = now
            self._traces[trace_id] = trace
            pending = self._pending.pop(trace_id, None)
            if pending is not None:
                view.evaluations = [*(view.evaluations or ()), *pending[1]]
        else:
            self._traces.move_to_end(trace_id)
            trace.last_seen = now
        span_id = view.span_id
        parent_id = view.parent_span_id
        if len(trace.nodes) >= self.config.max_spans_per_trace:
            self._unassembled.series(()).value += 1
            return False
        own = trace.node(span_id)  # children that arrived first created a group under this id
        if own is not None and own.finished:
            self._late_span(own, view)  # includes an agent span delivered again after its run finished
            return False
        if view.kind == AGENT:
            group = own if own is not None and not own.is_run else None
            if group is None:
                group = self._new_group(trace, b"", now)
                if own is not None:  # a run already sits under this id: cannot happen for valid traces
                    self._merge(group, own)
            if group.root is not None:  # a local root held below this agent goes on as it came
                self._emit_root(group.root)
                group.root = None
            group.is_run = True
            group.root_span_id = span_id
            group.parent_id = parent_id
            group.root_arrived = now
            group.agent = view.agent or group.agent
            group.service = view.service
            if view.prompt_version not in (None, UNKNOWN_VERSION):  # the agent's own version beats its calls'
                group.prompt_version = view.prompt_version
            group.failed = view.status != STATUS_OK
            group.start_time = view.span.start_time_unix_nano
            group.end_time = view.end_time
            group.last_seen = now
            if view.output is not None:
                group.output = view.output
                group.output_from_agent = True
            if self._input_chars and view.input is not None:
                self._keep_input(group, view.input, 0)
            if view.evaluations:
                self._attach(group, view.evaluations)
            trace.nodes[span_id] = group
            return True
        if parent_id:
            group = trace.node(parent_id)
            if group is None:
                group = own or self._new_group(trace, parent_id, now)
                group.top_parent = parent_id
                trace.nodes[parent_id] = group
            elif own is not None and own is not group:
                if group.finished:
                    self._late_span(group, view)
                    self._close(own)  # children that came in time belong to the finished run
                    return False
                self._merge(group, own)
        else:
            group = own or self._new_group(trace, b"", now)
            group.top_parent = b""
        if group.finished:
            self._late_span(group, view)
            return False
        if view.kind != LLM:  # LLM calls have no children: keep the node map small
            trace.nodes[span_id] = group
        elif view.response_id:
            self._remember_response(view.response_id, trace_id)
        group.add(view)
        if self._input_chars and view.input is not None and view.kind == LLM:
            self._keep_input(group, view.input, 1 + view.span.start_time_unix_nano)
        if view.evaluations:
            self._attach(group, view.evaluations)
        group.last_seen = now
        if group.is_run and view.agent is None:
            view.agent = group.agent  # call metrics get the run's agent when it is already known
        remote_parent = view.span.flags & REMOTE_PARENT_FLAGS == REMOTE_PARENT_FLAGS
        if not parent_id or (remote_parent and group.top_parent == parent_id):
            # The trace root, or the top of this process's part of it (its parent is remote): the
            # root of a run if the trace has no agent span.
            group.root_span_id = span_id
            group.failed = view.status != STATUS_OK
            group.start_time = view.span.start_time_unix_nano
            group.end_time = view.end_time
            group.root_arrived = now
            return True
        return False

    def _late_span(self, group: Group, view: SpanView) -> None:
        self._late.series(()).value += 1
        if view.evaluations:
            self._attach(group, view.evaluations)

    def _remember_response(self, response_id: str, trace_id: bytes) -> None:
        self._responses[response_id] = trace_id
        if len(self._responses) > self.config.max_open_runs:
            self._responses.popitem(last=False)

    def _attach(self, group: Group, evaluations: Sequence[Evaluation]) -> None:
        """Evaluations of an open run count with it; a finished run's are counted but change nothing."""
        group = group.find()
        if group.finished:
            self._count_evaluations(group.service, group.agent or group.service, group.prompt_version, evaluations)
        else:
            group.evaluations = (*group.evaluations, *evaluations)[:MAX_EVALUATIONS_PER_RUN]

    def _count_evaluations(
        self, service: str, agent: str, prompt_version: str | None, evaluations: Sequence[Evaluation]
    ) -> None:
        labels = (service, agent, prompt_version or UNKNOWN_VERSION)
        for evaluation in evaluations:
            verdict = evaluation_verdict(evaluation, self.config.quality.evaluations)
            self._evaluations.series((*labels, evaluation.name, verdict)).value += 1
            if evaluation.score is not None:
                self._scores.series((*labels, evaluation.name)).observe(evaluation.score)

    def process_logs(self, request: ExportLogsServiceRequest) -> None:
        """Evaluation results sent as log records, matched to their run by span or response id."""
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for log_record in scope_logs.log_records:
                    if log_record.event_name != EVALUATION_EVENT and not any(
                        kv.key == "event.name" and kv.value.string_value == EVALUATION_EVENT
                        for kv in log_record.attributes
                    ):
                        continue
                    evaluation = evaluation_from_attributes(log_record.attributes)
                    if evaluation is None:
                        continue
                    self._route([evaluation], log_record.trace_id, log_record.span_id, evaluation.response_id)

    def _evaluate_target(self, view: SpanView) -> None:
        """An evaluator span linked to the span it judged, possibly in another trace."""
        if view.evaluations:
            trace_id, span_id = view.evaluation_target  # type: ignore[misc]
            self._route(view.evaluations, trace_id, span_id, None)

    def _route(self, evaluations: list[Evaluation], trace_id: bytes, span_id: bytes, response_id: str | None) -> None:
        group = self._evaluated_run(trace_id, span_id, response_id)
        if group is not None:
            self._attach(group, evaluations)
        elif len(trace_id) == 16:
            for evaluation in evaluations:
                self._hold_evaluation(trace_id, evaluation)
        else:
            self._unmatched.series(()).value += len(evaluations)

    def _hold_evaluation(self, trace_id: bytes, evaluation: Evaluation) -> None:
        """Keep an evaluation whose trace has not been seen yet (the judge can be faster than the spans)."""
        _, waiting = self._pending.setdefault(trace_id, (time.monotonic(), []))
        if len(waiting) < MAX_EVALUATIONS_PER_RUN:
            waiting.append(evaluation)
        while len(self._pending) > self.config.max_open_runs:
            self._unmatched.series(()).value += len(self._pending.popitem(last=False)[1][1])

    def _evaluated_run(self, trace_id: bytes, span_id: bytes, response_id: str | None) -> Group | None:
        if not trace_id and response_id:
            trace_id = self._responses.get(response_id, b"")
        trace = self._traces.get(trace_id)
        if trace is None and trace_id in self._finished:
            trace = self._finished[trace_id][0]
        if trace is None:
            return None
        group = trace.node(span_id) if span_id else None
        if group is not None:
            return group
        # The evaluated span is an LLM call (not kept in the node map): its trace's run.
        runs = [g for g in trace.groups if g.merged_into is None and (g.is_run or g.llm_calls)]
        return runs[0] if runs else None

    def _merge(self, into: Group, other: Group) -> None:
        """`other` is a subtree of `into`: its span, if held as a local root, goes on as it came."""
        if other.root is not None:
            self._emit_root(other.root)
        into.absorb(other)

    @staticmethod
    def _new_group(trace: TraceState, top_parent: bytes, now: float) -> Group:
        group = Group(trace, top_parent, now)
        trace.groups.append(group)
        return group

    def _hold_roots(self, batch: Batch, roots: list[SpanView]) -> None:
        """Move root spans out of the request; they are forwarded when their run finishes."""
        by_id = {(view.trace_id, view.span_id): view for view in roots}
        for resource_spans in batch.request.resource_spans:
            resource: Resource | None = None
            for scope_spans in resource_spans.scope_spans:
                scope: InstrumentationScope | None = None
                spans = scope_spans.spans
                for index in range(len(spans) - 1, -1, -1):
                    span = spans[index]
                    view = by_id.get((span.trace_id, span.span_id))
                    if view is None:
                        continue
                    group = self._traces[view.trace_id].node(view.span_id)
                    if group is None or group.finished:
                        continue
                    # Copies, once per resource and scope: a reference into the request would keep the
                    # whole request's memory alive for as long as the run is open.
                    if resource is None:
                        resource = Resource()
                        resource.CopyFrom(resource_spans.resource)
                    if scope is None:
                        scope = InstrumentationScope()
                        scope.CopyFrom(scope_spans.scope)
                    copy = Span()
                    copy.CopyFrom(span)
                    group.root = HeldRoot(resource, scope, resource_spans.schema_url, copy)
                    del spans[index]
                    batch.span_count -= 1

    # -- finishing -----------------------------------------------------------------------------

    def _outer_run(self, group: Group, now: float) -> Group | bool | None:
        """For a run group: the enclosing run (nested agent), None if top-level, True to keep waiting."""
        parent_id = group.parent_id
        if not parent_id:
            return None
        parent = group.trace.node(parent_id)
        if parent is None or (not parent.is_run and parent.top_parent):
            # The parent (or the top of its subtree) has not arrived: it might be an outer agent.
            return True if now - group.root_arrived < self.config.root_wait_seconds else None
        return parent if parent.is_run else None

    @staticmethod
    def _unfinished(trace: TraceState) -> list[Group]:
        return [g for g in trace.groups if g.merged_into is None and not g.finished]

    def _nest_sub_agents(self, trace: TraceState, now: float) -> None:
        """Fold runs whose ancestor is another run into it, as sub-agent steps."""
        for group in self._unfinished(trace):
            if group.is_run and isinstance(outer := self._outer_run(group, now), Group):
                if outer.finished:
                    self._late.series(()).value += 1
                    self._close(group)
                    continue
                self._merge(outer, group)
                outer.steps += 1
                outer.sub_agents += 1

    def tick(self, now: float) -> None:
        """Finish every run that is done."""
        self._finish_quiet(self._quiet_traces(now), now)
        self._expire(now)

    def _quiet_traces(self, now: float) -> list[TraceState]:
        """Traces with no new span for the grace period (the dict is ordered by activity)."""
        grace = self.config.grace_seconds
        return list(itertools.takewhile(lambda trace: now - trace.last_seen >= grace, self._traces.values()))

    def _finish_quiet(self, traces: list[TraceState], now: float) -> None:
        grace = self.config.grace_seconds
        finished: list[tuple[Group, bool]] = []
        quiet: list[TraceState] = []
        for trace in traces:
            if self._traces.get(trace.trace_id) is not trace or now - trace.last_seen < grace:
                continue  # retired, evicted or active again since the slice was taken
            quiet.append(trace)
            self._nest_sub_agents(trace, now)
            has_run = any(g.is_run for g in trace.groups)
            for group in self._unfinished(trace):
                if now - group.last_seen < grace:
                    continue
                if group.is_run:
                    if self._outer_run(group, now) is None:
                        finished.append((group, False))
                elif group.top_parent and group.root_span_id:  # a local root; its parent is remote
                    if now - group.root_arrived >= self.config.root_wait_seconds:
                        if group.llm_calls and not has_run:
                            finished.append((group, False))
                        else:
                            self._close(group)
                elif group.top_parent:  # its root has not come
                    if now - group.last_seen >= self.config.abandon_after_seconds:
                        if group.has_work:
                            finished.append((group, True))
                        else:
                            self._close(group)  # e.g. spans under a parent in a service not sending here
                elif group.llm_calls and not has_run:  # LLM calls and no agent span: a run of the root
                    finished.append((group, False))
                else:
                    self._close(group)  # the trace root's own subtree, outside any run
        records = [self._finish(group, abandoned, time.time()) for group, abandoned in finished]
        for trace in quiet:
            if not self._unfinished(trace):
                self._retire(trace, now)
        if records:
            self._publish(records)

    def _expire(self, now: float) -> None:
        """Forget evaluations that never found their run, and finished traces past the late window."""
        while self._pending and now - next(iter(self._pending.values()))[0] > self.config.abandon_after_seconds:
            self._unmatched.series(()).value += len(self._pending.popitem(last=False)[1][1])
        window = self.config.late_window_seconds
        while self._finished and (
            now - next(iter(self._finished.values()))[1] > window or len(self._finished) > self.config.max_open_runs
        ):
            self._finished.popitem(last=False)

    def _retire(self, trace: TraceState, now: float) -> None:
        del self._traces[trace.trace_id]
        if self.config.late_window_seconds:
            self._finished[trace.trace_id] = (trace, now)

    def _close(self, group: Group) -> None:
        """Finish a group that is not a run; its held root (a plain trace root) is forwarded unchanged."""
        group.finished = True
        if group.root is not None:
            self._emit_root(group.root)
            group.root = None
        # Finished groups are remembered for late spans only: drop what is no longer needed.
        group.output = None
        group.input = None
        group.evaluations = ()

    def _limit(self, service: str, agent: str) -> RunLimit | None:
        return next((limit for limit in self.config.limits if limit.matches(service, agent)), None)

    def _keep_input(self, group: Group, source: tuple[str, str], rank: int) -> None:
        if group.input is not None and group.input[0] <= rank and rank:
            return
        text = input_text(source)
        if text:
            group.input = (rank, text[: self._input_chars])

    def _finish(self, group: Group, abandoned: bool, wall_now: float) -> RunRecord:
        service = group.service or "unknown_service"
        agent = group.agent or service
        duration = (group.end_time - group.start_time) / 1e9 if group.root_span_id and not abandoned else None
        if duration is not None and duration < 0:
            duration = None
        record = RunRecord(
            trace_id=group.trace.trace_id.hex(),
            root_span_id=group.root_span_id.hex(),
            service=service,
            agent=agent,
            prompt_version=group.prompt_version or UNKNOWN_VERSION,
            outcome=SUCCESS,
            started_at=group.start_time / 1e9 if group.start_time else 0.0,
            finished_at=group.end_time / 1e9 if group.end_time else wall_now,
            duration_seconds=duration,
            cost_usd=group.cost if group.llm_calls else 0.0,
            cost_complete=group.unpriced_calls == 0,
            tokens={
                "input": group.input_tokens,
                "output": group.output_tokens,
                "cache_read": group.cache_read_tokens,
                "cache_write": group.cache_write_tokens,
                "reasoning": group.reasoning_tokens,
            },
            steps=group.steps,
            llm_calls=group.llm_calls,
            llm_errors=group.llm_errors,
            tool_calls=group.tool_calls,
            tool_errors=group.tool_errors,
            sub_agents=group.sub_agents,
            models=list(group.models),
            calls_by_model={model: list(counts) for model, counts in group.models.items()},
            calls_by_tool={tool: list(counts) for tool, counts in (group.tools or {}).items()},
            input_start=group.input[1] if group.input is not None else None,
        )
        if abandoned:
            group.root_span_id = b""
        verdict = self._quality.judge(
            FinishedRun(
                service=service,
                agent=agent,
                prompt_version=record.prompt_version,
                steps=group.steps,
                llm_calls=group.llm_calls,
                tool_calls=group.tool_calls,
                tool_errors=group.tool_errors,
                cost_usd=record.cost_usd if record.cost_complete else None,
                duration_seconds=duration,
                tools=frozenset(group.tools or ()),
                finish_reason=group.finish_reason,
                output_source=group.output,
            ),
            group.evaluations,
        )
        record.quality_verdict = verdict.verdict
        record.failed_checks = verdict.failed_checks
        record.outcome = decide_outcome(group, record, self._limit(service, agent), verdict.verdict)
        labels = (service, agent, record.prompt_version)
        for check, check_verdict in verdict.results:
            self._checks.series((*labels, check, check_verdict)).value += 1
        self._count_evaluations(service, agent, record.prompt_version, group.evaluations)
        group.agent = agent
        group.prompt_version = record.prompt_version
        group.service = service
        self._record_metrics(record)
        if group.root is not None:
            self._add_totals(group.root.span, record)
        self._close(group)
        return record

    def _record_metrics(self, record: RunRecord) -> None:
        labels = (record.service, record.agent, record.prompt_version)
        self._runs.series((*labels, record.outcome)).value += 1
        if record.duration_seconds is not None:
            self._duration.series(labels).observe(record.duration_seconds)
        if record.cost_complete and record.cost_usd is not None:
            self._cost.series(labels).observe_with_exemplar(record.cost_usd, record.trace_id)
        self._steps.series(labels).observe(record.steps)
        self._tool_calls.series(labels).observe(record.tool_calls)
        self._last_finished.series((record.service, record.agent)).value = record.finished_at

    @staticmethod
    def _add_totals(span: Span, record: RunRecord) -> None:
        present = {kv.key for kv in span.attributes}
        totals: list[tuple[str, Any]] = [
            ("agentopz.run.outcome", record.outcome),
            ("agentopz.run.steps", record.steps),
            ("agentopz.run.tool_calls", record.tool_calls),
            ("agentopz.quality.verdict", record.quality_verdict),
            ("agentopz.quality.failed_checks", record.failed_checks),
            ("agentopz.prompt.version", record.prompt_version),
        ]
        if record.cost_complete:
            totals.append(("agentopz.cost.usd", record.cost_usd))
        for key, value in totals:
            if key not in present:
                add_attribute(span.attributes, key, value)
        if record.outcome != SUCCESS and span.status.code != Status.STATUS_CODE_ERROR and not span.status.message:
            span.status.message = f"agentopz run outcome: {record.outcome}"

    def _emit_root(self, root: HeldRoot) -> None:
        if self._emit_spans is None:
            return
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add(schema_url=root.schema_url)
        resource_spans.resource.CopyFrom(root.resource)
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.CopyFrom(root.scope)
        scope_spans.spans.append(root.span)
        self._emit_spans(Batch(request, 1))

    def _publish(self, records: list[RunRecord]) -> None:
        if self._run_log is not None:
            self._run_log.write("".join(record.to_json() + "\n" for record in records))
        if self._emit_logs is not None and self.config.run_log.otlp:
            self._emit_logs(run_log_request(records), len(records))
        if self._feed is not None:
            self._feed.publish(records)

    def _evict(self) -> None:
        while len(self._traces) > self.config.max_open_runs:
            _, trace = self._traces.popitem(last=False)
            for group in self._unfinished(trace):
                if group.has_work:
                    self._evicted.series(("capacity",)).value += 1
                if group.root is not None:
                    self._emit_root(group.root)

    def flush(self) -> None:
        """At shutdown: finish every run whose root arrived; count the rest as evicted."""
        far_future = time.monotonic() + 10 * (self.config.grace_seconds + self.config.root_wait_seconds)
        records = []
        for trace in self._traces.values():
            self._nest_sub_agents(trace, far_future)
            has_run = any(g.is_run for g in trace.groups)
            for group in self._unfinished(trace):
                if group.is_run or (group.root_span_id and group.llm_calls and not has_run):
                    records.append(self._finish(group, False, time.time()))
                    continue
                if group.has_work:
                    self._evicted.series(("shutdown",)).value += 1
                    log.warning("run of trace %s still in flight at shutdown", trace.trace_id.hex())
                self._close(group)
        self._traces.clear()
        if records:
            self._publish(records)

    # -- gauges --------------------------------------------------------------------------------

    def in_flight(self) -> dict[tuple[str, str], InFlightRuns]:
        """Runs in progress by (service, agent): count, most expensive, most steps."""
        found: dict[tuple[str, str], InFlightRuns] = {}
        for trace in self._traces.values():
            for group in self._unfinished(trace):
                if not group.has_work:
                    continue
                service = group.service or "unknown_service"
                key = (service, group.agent or service)
                entry = found.get(key)
                if entry is None:
                    entry = found[key] = InFlightRuns()
                entry.runs += 1
                if group.cost > entry.max_cost_usd or not entry.max_cost_trace_id:
                    entry.max_cost_usd = group.cost
                    entry.max_cost_trace_id = trace.trace_id.hex()
                entry.max_steps = max(entry.max_steps, group.steps)
        return found

    def _refresh_in_flight(self) -> None:
        in_flight = self.in_flight()
        for family in (self._in_flight, self._in_flight_cost, self._in_flight_steps):
            for _, series in family.items():
                series.value = 0
        # Keys past the cardinality caps share the `other` series: add up and take maxima there.
        for key, entry in in_flight.items():
            self._in_flight.series(key).value += entry.runs
            cost_series = self._in_flight_cost.series(key)
            cost_series.value = max(cost_series.value, entry.max_cost_usd)
            steps_series = self._in_flight_steps.series(key)
            steps_series.value = max(steps_series.value, entry.max_steps)
        self._open_runs.series(()).value = sum(entry.runs for entry in in_flight.values())


def _create(component_id: str, config: RunsConfig, context: Context) -> RunsProcessor:
    processor = RunsProcessor(component_id, config, context.metrics, context.finished_runs, context.run_input_chars)
    context.in_flight.append(processor.in_flight)
    return processor


FACTORY = Factory(type="runs", kind="processor", config_type=RunsConfig, create=_create, requires=("normalize",))
