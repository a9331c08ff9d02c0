"""The Assembler: the runs processor's decisions as plain code over data, on an injected clock.

It takes span views (`intake`) and log records (`process_logs`) with the time they came, finishes
the runs that are done when asked (`tick`, `flush`), and keeps everything within its budgets
(open runs, memory, remembered span ids, held root bytes). It runs no task, touches no metric and
does no I/O: each call returns what happened as an `Output` (finished run records, root spans to
forward, held calls released with their run's agent, counter increments), which the processor
(`processor.RunsProcessor`) routes to the run log, the pipeline and the metrics.

A run is the outermost agent span of a trace with everything beneath it; a trace with LLM calls and
no agent span is one run of its root. How spans are grouped is in `assembly`, how an outcome is
decided in `outcome`, how evaluations find their run in `evaluations`.

Per-call metrics carry the agent of the call's run, decided in one place (`_route_call`): a call
whose run's agent is known is labelled with it and counted by the exporters as it passes; one whose
run's agent is not known yet is marked so the exporters skip it and held, then released in
`Output.calls` once the agent is known or the run finishes; a span received again (same trace and
span id) while its id is remembered is counted nowhere.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ...content import input_text
from ...records import SUCCESS, RunRecord
from ...spans import AGENT, LLM, OTHER, TOOL, Batch, SpanView, call_of
from ..prompt_version import UNKNOWN_VERSION
from ..quality import FinishedRun, QualityEvaluator, Verdict
from .assembly import (
    FINISHED_TRACE_BYTES,
    ID_ENTRY,
    MEMORY_UNIT,
    NEW_ID,
    NO_CALLS,
    NO_RARE,
    NO_ROOT,
    RECEIVED_ID,
    REMOTE_PARENT_FLAGS,
    CallLabels,
    Group,
    HeldRoot,
    Output,
    TraceState,
    add_span,
    counts_by_name,
    footprint,
    held_calls,
    hold_call,
    known_top_level,
    models_of,
    new_group,
    outer_run,
    tools_of,
    unfinished,
)
from .evaluations import EvaluationRouter
from .logged_content import LoggedContent
from .outcome import RunLimit, decide_outcome
from .settings import RunsConfig

# Counters the Assembler reports in `Output.counts` (declared in telemetry.yaml).
DUPLICATE_SPANS = "agentopz_duplicate_spans_total"
LATE_SPANS = "agentopz_late_spans_total"
UNASSEMBLED_SPANS = "agentopz_unassembled_spans_total"
UNHELD_ROOTS = "agentopz_unheld_run_roots_total"
EVICTED_RUNS = "agentopz_evicted_runs_total"
QUALITY_CHECKS = "agentopz_quality_checks_total"
# agentopz_evicted_runs_total{reason}: the open-run cap, the memory budget, the service stopping.
CAPACITY = "capacity"
MEMORY = "memory"
SHUTDOWN = "shutdown"
# Distinct names and label tuples of held calls shared across runs; past it, sharing starts over.
MAX_SHARED_NAMES = 4096
MAX_SHARED_LABELS = 4096
EVICT_CHUNK = 256  # oldest open traces looked up at once when evicting


def finish_run(
    group: Group, abandoned: bool, wall_now: float, quality: QualityEvaluator, limit: RunLimit | None
) -> tuple[RunRecord, Verdict]:
    """The record of a run that is done, with its quality verdict and outcome (the verdict's per-check
    results are for agentopz_quality_checks_total)."""
    service = group.service or "unknown_service"
    agent = group.agent or service
    models, tools = models_of(group.counts), tools_of(group.counts)
    rooted = group.rooted or NO_ROOT
    rare = group.rare or NO_RARE
    duration = (rooted.end_time - rooted.start_time) / 1e9 if rooted.root_span_id and not abandoned else None
    if duration is not None and duration < 0:
        duration = None
    record = RunRecord(
        trace_id=group.trace.trace_id.hex(),
        root_span_id=rooted.root_span_id.hex(),
        service=service,
        agent=agent,
        prompt_version=group.prompt_version or UNKNOWN_VERSION,
        outcome=SUCCESS,
        started_at=rooted.start_time / 1e9 if rooted.start_time else 0.0,
        finished_at=rooted.end_time / 1e9 if rooted.end_time else wall_now,
        duration_seconds=duration,
        cost_usd=group.cost if group.llm_calls else 0.0,
        cost_complete=rare.unpriced_calls == 0,
        tokens={
            "input": group.input_tokens,
            "output": group.output_tokens,
            "cache_read": rare.cache_read_tokens,
            "cache_write": rare.cache_write_tokens,
            "reasoning": rare.reasoning_tokens,
        },
        steps=group.steps,
        llm_calls=group.llm_calls,
        llm_errors=rare.llm_errors,
        tool_calls=group.tool_calls,
        tool_errors=rare.tool_errors,
        sub_agents=rare.sub_agents,
        models=list(models[::3]),
        calls_by_model=counts_by_name(models),
        calls_by_tool=counts_by_name(tools),
        input_start=rare.input[1] if rare.input is not None else None,
        scores={e.name: float(e.score) for e in rare.evaluations if e.score is not None},
        targeting_key=rare.targeting_key,
    )
    if abandoned:
        group.root_span_id = b""
    verdict = quality.judge(
        FinishedRun(
            service=service,
            agent=agent,
            prompt_version=record.prompt_version,
            steps=group.steps,
            llm_calls=group.llm_calls,
            tool_calls=group.tool_calls,
            tool_errors=rare.tool_errors,
            cost_usd=record.cost_usd if record.cost_complete else None,
            duration_seconds=duration,
            tools=frozenset(tools[::3]),
            finish_reason=group.finish_reason,
            output_source=rare.output,
        ),
        rare.evaluations,
    )
    record.quality_verdict = verdict.verdict
    record.failed_checks = verdict.failed_checks
    record.outcome = decide_outcome(group, record, limit, verdict.verdict)
    return record, verdict


class Assembler:
    def __init__(self, config: RunsConfig, input_chars: int = 0) -> None:
        self.config = config
        self._input_chars = input_chars
        self._quality = QualityEvaluator(config.quality)
        # By last activity, oldest first: a plain dict, moved to the end by taking out and putting back
        # (an OrderedDict's links cost ~40 bytes an open run).
        self.traces: dict[bytes, TraceState] = {}
        # Traces whose runs all finished, kept for late_window_seconds so late spans are recognised.
        self.finished: OrderedDict[bytes, tuple[TraceState, float]] = OrderedDict()
        self._evaluations = EvaluationRouter(
            config.quality.evaluations, config.max_open_runs, config.abandon_after_seconds, self._find_trace
        )
        self._logged_content = LoggedContent(config.abandon_after_seconds, config.quality.max_output_chars)
        self.memory = 0  # estimated bytes held by open and finished traces (runs.max_memory_bytes)
        self._remembered = 0  # span ids received, remembered by open and finished traces
        self._held_root_bytes = 0  # HeldRoot.size of every root held, against max_held_root_bytes
        self._call_labels: dict[tuple, CallLabels] = {}
        self._names: dict[str, str] = {}
        # Where the call in progress writes what happened (set by each public method).
        self._out = Output()
        # The open trace of the last span taken in the intake in progress, and its id.
        self._recent_id: bytes | None = None
        self._recent: TraceState | None = None

    def _start(self) -> Output:
        self._out = Output()
        return self._out

    # -- state ---------------------------------------------------------------------------------

    def restore(self, traces: dict[bytes, TraceState], finished: OrderedDict[bytes, tuple[TraceState, float]]) -> None:
        """Take over open and finished traces read from a checkpoint."""
        self.traces, self.finished = dict(traces), finished
        every = [*traces.values(), *(trace for trace, _ in finished.values())]
        self._remembered = sum(trace.seen_count() for trace in every)
        self._held_root_bytes = sum(g.root.size for trace in every for g in trace.groups if g.root)
        for trace in traces.values():
            self._measure(trace)
        for trace, _ in finished.values():
            self._measure(trace, FINISHED_TRACE_BYTES)

    def _find_trace(self, trace_id: bytes) -> TraceState | None:
        """An open trace, or a finished one still in the late window."""
        trace = self.traces.get(trace_id)
        if trace is None and trace_id in self.finished:
            trace = self.finished[trace_id][0]
        return trace

    def open_groups(self) -> Iterator[Group]:
        # Over a copy: the in-flight gauges read it in slices, with intake running in between.
        for trace in list(self.traces.values()):
            yield from unfinished(trace)

    def process_logs(self, request: ExportLogsServiceRequest, now: float) -> Output:
        """Evaluation results sent as log records, matched to their run by span or response id; content
        events sent as log records, kept for their trace's run."""
        out = self._start()
        self._evaluations.process_logs(request, now, out)
        self._logged_content.process_logs(request, now)
        if self.held_bytes() > self.config.max_memory_bytes:
            self._shed()
        return out

    # -- span intake ---------------------------------------------------------------------------

    def intake(self, batch: Batch, now: float, hold_roots: bool = True) -> Output:
        """Account the batch's spans; with `hold_roots`, move run roots out of the request until their
        run finishes (to be forwarded with its totals)."""
        out = self._start()
        self._recent_id = None
        if len(self._names) >= MAX_SHARED_NAMES:  # past it, sharing starts over (a batch adds 4 a span at most)
            self._names.clear()
        held: list[SpanView] = []
        # Traces with GenAI work in this batch: their other spans (an HTTP root listed first) count too.
        # A flag evaluation (the prompt version a run was served) counts too: it often ends first.
        genai = {view.trace_id for view in batch.views if view.kind != OTHER or view.flag_version is not None}
        for view in batch.views:
            if self._take(view, now, genai):
                held.append(view)
        self._recent_id, self._recent = None, None
        if held and hold_roots:
            self._hold_roots(batch, held)
        for trace_id in {view.trace_id for view in batch.views}:
            trace = self.traces.get(trace_id)
            if trace is not None:
                self._measure(trace)
        if len(self.traces) > self.config.max_open_runs:
            self._evict(CAPACITY)
        if self.held_bytes() > self.config.max_memory_bytes:
            self._shed()
        return out

    def held_bytes(self) -> int:
        """Estimated memory of everything held, against runs.max_memory_bytes: open and finished traces,
        pending evaluations and remembered response ids, content sent as log records."""
        return self.memory + self._evaluations.bytes + self._logged_content.bytes

    def _measure(self, trace: TraceState, extra: int = 0) -> None:
        units = (footprint(trace) + extra) // MEMORY_UNIT
        self.memory += (units - trace.units) * MEMORY_UNIT
        trace.units = units

    def _shed(self) -> None:
        """Over the memory budget: forget the oldest finished traces, then content and evaluations still
        waiting for their run, then evict the oldest open runs."""
        budget = self.config.max_memory_bytes
        while self.held_bytes() > budget and self.finished:
            self._forget(self.finished.popitem(last=False)[1][0])
        if self.held_bytes() > budget:
            self._logged_content.shed(self.held_bytes() - budget)
        if self.held_bytes() > budget:
            self._evaluations.shed(self.held_bytes() - budget, self._out)
        if self.held_bytes() > budget:
            self._evict(MEMORY)

    def _take(self, view: SpanView, now: float, genai: set[bytes]) -> bool:
        """Account one span; True when it is a run root to hold back until the run finishes."""
        if view.output is not None and len(view.output[1]) > self.config.quality.max_output_chars:
            view.output = None  # too large to hold until the run ends: content checks say unknown
        if view.evaluation_target is not None:
            self._evaluations.evaluate_target(view, now, self._out)
            return False
        trace_id = view.trace_id
        span_id = view.span_id
        counted = view.kind != OTHER or view.evaluations  # the spans that count in a metric
        found = None  # what `TraceState.receive` found of the span's id, once it is remembered
        if trace_id == self._recent_id:
            # The trace of the span before (senders send a trace's spans together): open, at the end of
            # the map and stamped `now` already. Nothing removes an open trace during an intake.
            trace = self._recent
            assert trace is not None
            if counted and self._remembered < self.config.max_remembered_span_ids:
                # (`_remember`'s common case, inline: looked up once for the copy check and to remember it)
                found = trace.receive(span_id)
                if found == RECEIVED_ID:
                    self._out.count(DUPLICATE_SPANS)
                    self._route_call(view, None)
                    return False
                self._remembered += 1
            elif trace.has_seen(span_id):
                self._out.count(DUPLICATE_SPANS)
                self._route_call(view, None)
                return False
        else:
            trace = self.traces.get(trace_id)
            known = trace or self.finished.get(trace_id, (None,))[0]
            if known is not None and known.has_seen(span_id):
                self._out.count(DUPLICATE_SPANS)
                self._route_call(view, None)
                return False
            if trace is None:
                lingering = self.finished.pop(trace_id, None)
                if lingering is not None:
                    trace = lingering[0]
                elif trace_id not in genai:
                    return False  # a span of a trace with no GenAI work (yet): nothing to assemble
                else:
                    trace = TraceState(trace_id, now)
                trace.last_seen = now
                self.traces[trace_id] = trace
                pending = self._evaluations.take_pending(trace_id)
                if pending:
                    view.evaluations = [*(view.evaluations or ()), *pending]
            else:
                del self.traces[trace_id]
                self.traces[trace_id] = trace
                trace.last_seen = now
            self._recent_id, self._recent = trace_id, trace
        if counted:
            if found is None:  # (not remembered above)
                if self._remembered < self.config.max_remembered_span_ids:  # (`_remember`'s common case)
                    found = trace.receive(span_id)
                    self._remembered += 1
                else:
                    self._remember(trace, span_id)
            # Names a run keeps (service, agent, model, tool): one string for all runs, not one per span.
            # Their number is bounded once a batch (`intake`).
            names = self._names
            view.service = names.setdefault(view.service, view.service)
            view.model = names.setdefault(view.model, view.model)
            if view.agent is not None:
                view.agent = names.setdefault(view.agent, view.agent)
            if view.tool is not None:
                view.tool = names.setdefault(view.tool, view.tool)
        parent_id = view.parent_span_id
        limit = self.config.max_spans_per_trace
        ids = trace.ids  # (entry_count, inline: this runs for every span; the exact count only near the limit)
        if (
            len(ids) // ID_ENTRY if type(ids) is bytearray else len(ids.nodes)
        ) >= limit and trace.node_count() >= limit:
            self._out.count(UNASSEMBLED_SPANS)
            return False
        # Children that arrived first created a group under this id (none if its entry was made just now).
        own = None if found == NEW_ID else trace.node(span_id)
        if own is not None and own.finished:
            self._late_span(own, view)  # includes an agent span delivered again after its run finished
            return False
        if view.kind == AGENT:
            group = own if own is not None and not own.is_run else None
            if group is None:
                group = new_group(trace, b"", now)
                if own is not None:  # a run already sits under this id: cannot happen for valid traces
                    self._merge(group, own)
            if group.root is not None:  # a local root held below this agent goes on as it came
                self._emit_root(group.root)
                group.root = None
            group.is_run = True
            group.arrive(span_id, view, now)
            rooted = group.root_fields()
            rooted.parent_id = parent_id
            rooted.named = view.agent is not None and not view.agent_is_span_name
            group.agent = view.agent or group.agent
            group.service = view.service
            # The agent's own version beats its calls' of the same rank.
            group.offer_version(view.prompt_version, view.prompt_version_from, replace_equal=True)
            if view.targeting_key:
                group.targeting_key = view.targeting_key
            group.last_seen = now
            if view.output is not None:
                group.output = view.output
                group.output_from_agent = True
            if self._input_chars and view.input is not None:
                self._keep_input(group, view.input, 0)
            if view.evaluations:
                self._evaluations.attach(group, view.evaluations, self._out)
            trace.set_node(span_id, group)
            self._settle(group)
            return True
        if parent_id:
            group = trace.node(parent_id)
            if group is None:
                group = own or new_group(trace, parent_id, now)
                group.top_parent = trace.set_node(parent_id, group) or parent_id
            elif own is not None and own is not group:
                if group.finished:
                    self._late_span(group, view)
                    self._close(own, group.agent)  # children that came in time belong to the finished run
                    return False
                self._merge(group, own)
        else:
            group = own or new_group(trace, b"", now)
            group.top_parent = b""
        if group.finished:
            self._late_span(group, view)
            return False
        if view.kind != LLM:  # LLM calls have no children: keep the node map small
            trace.set_node(span_id, group)
        elif view.response_id:
            self._evaluations.remember_response(view.response_id, trace_id)
        add_span(group, view)
        if self._input_chars and view.input is not None and view.kind == LLM:
            self._keep_input(group, view.input, 1 + view.span.start_time_unix_nano)
        if view.evaluations:
            self._evaluations.attach(group, view.evaluations, self._out)
        group.last_seen = now
        if group.agent_known:  # (the common case of `_route_call`, inline)
            if view.kind == LLM or view.kind == TOOL:
                view.agent = group.agent
        else:
            self._route_call(view, group)
        remote_parent = view.span.flags & REMOTE_PARENT_FLAGS == REMOTE_PARENT_FLAGS
        if not parent_id or (remote_parent and group.top_parent_id() == parent_id):
            # The trace root, or the top of this process's part of it (its parent is remote): the
            # root of a run if the trace has no agent span.
            group.arrive(span_id, view, now)
            return True
        return False

    def _late_span(self, group: Group, view: SpanView) -> None:
        self._out.count(LATE_SPANS)
        self._route_call(view, group)
        if view.evaluations:
            self._evaluations.attach(group, view.evaluations, self._out)

    def _route_call(self, view: SpanView, group: Group | None) -> None:
        """The call metrics of an LLM or tool span: counted nowhere (a duplicate, `group` None), with the
        finished run's agent (a late call), with its run's agent as it passes when that is known, else
        held in its run until it is (`_release`)."""
        if view.kind != LLM and view.kind != TOOL:
            return
        if group is None:
            view.skip_call_metrics = True
            return
        if group.finished:
            if group.agent_known:
                view.agent = group.agent
            return
        if not group.agent_known:
            self._settle(group)
        if group.agent_known:
            view.agent = group.agent
            return
        view.skip_call_metrics = True
        call = call_of(view)
        labels = call[:6]
        # One tuple of label strings for all runs' calls alike (each span's strings are its own copies).
        shared = self._call_labels.get(labels)
        if shared is None:
            if len(self._call_labels) >= MAX_SHARED_LABELS:
                self._call_labels.clear()
            shared = self._call_labels[labels] = labels
        held = hold_call(group.calls or NO_CALLS, call, shared)
        if held is None:
            view.skip_call_metrics = False  # too many label tuples in this run: it counts as it comes
        else:
            group.calls = held

    def _remember(self, trace: TraceState, span_id: bytes) -> None:
        """Keep the span's id, within the budget: the oldest finished traces make room first."""
        if self._remembered >= self.config.max_remembered_span_ids:
            if not self.finished or not self.config.max_remembered_span_ids:
                return  # open traces hold the whole budget (or there is none): a copy would count again
            self._forget(self.finished.popitem(last=False)[1][0])
        trace.add_seen(span_id)
        self._remembered += 1

    def _forget(self, trace: TraceState) -> None:
        self.memory -= trace.units * MEMORY_UNIT
        trace.units = 0
        self._remembered -= trace.seen_count()
        # A trace and its groups refer to each other. Emptied, it is freed by reference counting at
        # once: the cyclic GC, tuned to run rarely (service.py), would let finished traces pile up.
        trace.forget_ids()
        trace.groups = ()

    def _settle(self, group: Group) -> None:
        """A run whose agent can no longer change (named by its agent span, not inside another run)
        releases its held calls now, and its later calls count as they come."""
        if group.is_run and group.named and known_top_level(group):
            group.agent_known = True
            self._release(group, group.agent)

    def _release(self, group: Group, agent: str | None) -> None:
        """Held calls to the call metrics, with the agent of their run (None: each call's own, as
        outside any run)."""
        calls, group.calls = group.calls, None
        if calls:
            self._out.calls.append((held_calls(calls), agent))

    def _merge(self, into: Group, other: Group) -> None:
        """`other` is a subtree of `into`: its span, if held as a local root, goes on as it came."""
        if other.root is not None:
            self._emit_root(other.root)
        into.absorb(other)

    def _emit_root(self, root: HeldRoot, record: RunRecord | None = None) -> None:
        self._held_root_bytes -= root.size
        self._out.roots.append((root, record))

    def _hold_roots(self, batch: Batch, roots: list[SpanView]) -> None:
        """Move root spans out of the request; they are forwarded when their run finishes, or at once
        (as they came) when the held roots have reached their byte budget."""
        budget = self.config.max_held_root_bytes
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
                    group = self.traces[view.trace_id].node(view.span_id)
                    if group is None or group.finished:
                        continue
                    size = span.ByteSize() + resource_spans.resource.ByteSize() + scope_spans.scope.ByteSize()
                    if self._held_root_bytes + size > budget:
                        self._out.count(UNHELD_ROOTS)
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
                    group.root = HeldRoot(resource, scope, resource_spans.schema_url, copy, size)
                    self._held_root_bytes += size
                    del spans[index]
                    batch.span_count -= 1

    # -- finishing -----------------------------------------------------------------------------

    def _nest_sub_agents(self, trace: TraceState, now: float) -> None:
        """Fold runs whose ancestor is another run into it, as sub-agent steps."""
        for group in unfinished(trace):
            if group.is_run and isinstance(outer := outer_run(group, now, self.config.root_wait_seconds), Group):
                if outer.finished:
                    self._out.count(LATE_SPANS)
                    self._close(group, outer.agent)
                    continue
                self._merge(outer, group)
                if not outer.named and (group.named or outer.agent is None) and group.agent:
                    # A wrapper without a name of its own (a workflow span): the run is the named agent's.
                    outer.agent, outer.named = group.agent, group.named
                elif not (group.agent == outer.agent and group.parent_id == outer.root_span_id):
                    # (An agent span directly inside one of the same agent, as OpenLLMetry's LangGraph
                    # workflow span inside invoke_agent, is that agent, not a sub-agent.)
                    outer.sub_agents += 1

    def tick(self, now: float, wall_now: float) -> Output:
        """Finish every run that is done, then forget what has expired."""
        out = self.finish_quiet(self.quiet_traces(now), now, wall_now)
        out.extend(self.expire(now))
        return out

    def quiet_traces(self, now: float) -> list[TraceState]:
        """Traces with no new span for the grace period (the dict is ordered by activity)."""
        grace = self.config.grace_seconds
        return list(itertools.takewhile(lambda trace: now - trace.last_seen >= grace, self.traces.values()))

    def finish_quiet(self, traces: list[TraceState], now: float, wall_now: float) -> Output:
        """Finish the runs of `traces` (from `quiet_traces`, perhaps a slice of them) that are done."""
        out = self._start()
        grace = self.config.grace_seconds
        finished: list[tuple[Group, bool]] = []
        quiet: list[TraceState] = []
        for trace in traces:
            if self.traces.get(trace.trace_id) is not trace or now - trace.last_seen < grace:
                continue  # retired, evicted or active again since the slice was taken
            quiet.append(trace)
            self._nest_sub_agents(trace, now)
            has_run = any(g.is_run for g in trace.groups)
            for group in unfinished(trace):
                if now - group.last_seen < grace:
                    continue
                if group.is_run:
                    if outer_run(group, now, self.config.root_wait_seconds) is None:
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
        for group, abandoned in finished:
            self._finish(group, abandoned, wall_now)
        for trace in quiet:
            if not unfinished(trace):
                self._retire(trace, now)
        return out

    def expire(self, now: float) -> Output:
        """Forget evaluations that never found their run, and finished traces past the late window."""
        out = self._start()
        self._evaluations.expire(now, out)
        self._logged_content.expire(now)
        window = self.config.late_window_seconds
        while self.finished and (
            now - next(iter(self.finished.values()))[1] > window or len(self.finished) > self.config.max_open_runs
        ):
            self._forget(self.finished.popitem(last=False)[1][0])
        return out

    def _retire(self, trace: TraceState, now: float) -> None:
        del self.traces[trace.trace_id]
        if self.config.late_window_seconds:
            self.finished[trace.trace_id] = (trace, now)
            self._measure(trace, FINISHED_TRACE_BYTES)  # its content and held root are gone
        else:
            self._forget(trace)

    def _close(self, group: Group, agent: str | None = None) -> None:
        """Finish a group that is not a run; its held root (a plain trace root) is forwarded unchanged,
        its held calls count with `agent` (the finished run they turned out to be part of) or their own."""
        group.finished = True
        self._release(group, agent)
        if group.root is not None:
            self._emit_root(group.root)
            group.root = None
        # Finished groups are remembered for late spans only: drop what is no longer needed.
        if group.rare is not None:
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

    def _finish(self, group: Group, abandoned: bool, wall_now: float) -> None:
        self._logged_content.apply(group)
        service = group.service or "unknown_service"
        record, verdict = finish_run(
            group, abandoned, wall_now, self._quality, self._limit(service, group.agent or service)
        )
        out = self._out
        labels = (record.service, record.agent, record.prompt_version)
        for check, check_verdict in verdict.results:
            out.count(QUALITY_CHECKS, (*labels, check, check_verdict))
        self._evaluations.count(record.service, record.agent, record.prompt_version, group.evaluations, out)
        group.agent = record.agent
        group.agent_known = True
        group.prompt_version = record.prompt_version
        group.service = record.service
        out.records.append(record)
        if group.root is not None:
            self._emit_root(group.root, record)
            group.root = None
        self._close(group, record.agent)

    def _evict(self, reason: str) -> None:
        """Drop the oldest open traces while over the open-run cap (`capacity`) or the memory budget
        (`memory`); their held roots go on as they came, their held calls count with what is known."""
        traces = self.traces

        def over() -> bool:
            if reason == CAPACITY:
                return len(traces) > self.config.max_open_runs
            return self.held_bytes() > self.config.max_memory_bytes

        while traces and over():
            # The oldest, a chunk at a time: a dict finds its first entry past the ones deleted before
            # it, so taking them one by one would scan those again for each.
            for trace_id in list(itertools.islice(traces, EVICT_CHUNK)):
                if not over():
                    return
                trace = traces.pop(trace_id)
                for group in unfinished(trace):
                    if group.has_work:
                        self._out.count(EVICTED_RUNS, (reason,))
                    if group.root is not None:
                        self._emit_root(group.root)
                    self._release(group, group.agent if group.is_run else None)
                self._forget(trace)

    def flush(self, now: float, wall_now: float) -> Output:
        """At shutdown: finish every run whose root arrived; count the rest as evicted (`shutdown`)."""
        out = self._start()
        far_future = now + 10 * (self.config.grace_seconds + self.config.root_wait_seconds)
        for trace in self.traces.values():
            self._nest_sub_agents(trace, far_future)
            has_run = any(g.is_run for g in trace.groups)
            for group in unfinished(trace):
                if group.is_run or (group.root_span_id and group.llm_calls and not has_run):
                    self._finish(group, False, wall_now)
                    continue
                if group.has_work:
                    out.count(EVICTED_RUNS, (SHUTDOWN,))
                self._close(group)
            self._forget(trace)
        self.traces.clear()
        return out
