"""Evaluation routing: external verdicts (span attributes and events, EVALUATOR spans, OTLP log
records) matched to the run they judge by trace and span id, or by the judged call's response id."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from ...records import Evaluation
from ...semconv.events import EVALUATION_EVENT, evaluation_from_attributes
from ...spans import SpanView
from ..prompt_version import UNKNOWN_VERSION
from ..quality import EvaluationRule, evaluation_verdict
from .assembly import MAX_EVALUATIONS_PER_RUN, Group, Output, TraceState, evaluation_bytes

SCORE_BUCKETS = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 3, 4, 5, 10)
EVALUATIONS = "agentopz_evaluations_total"
UNMATCHED = "agentopz_evaluations_unmatched_total"
# Estimated memory, for runs.max_memory_bytes: a remembered response id beside its length, and a trace's
# entry among the pending evaluations beside theirs.
RESPONSE_BYTES = 180
PENDING_TRACE_BYTES = 250


class EvaluationRouter:
    """Attaches evaluations to open runs, counts them (into the caller's `Output`), and holds those whose
    trace has not come yet."""

    def __init__(
        self,
        rules: dict[str, EvaluationRule],
        max_held: int,
        hold_seconds: float,
        find_trace: Callable[[bytes], TraceState | None],
    ) -> None:
        self._rules = rules
        self._max_held = max_held
        self._hold_seconds = hold_seconds
        self._find_trace = find_trace
        self._responses: OrderedDict[str, bytes] = OrderedDict()  # gen_ai.response.id -> trace id
        # Evaluations that arrived before any span of their trace: trace id -> (arrival, evaluations).
        self._pending: OrderedDict[bytes, tuple[float, list[Evaluation]]] = OrderedDict()
        self.bytes = 0  # estimated memory of both

    def remember_response(self, response_id: str, trace_id: bytes) -> None:
        held = len(self._responses)
        self._responses[response_id] = trace_id
        if len(self._responses) > held:  # a new id (one seen before only points elsewhere)
            self.bytes += RESPONSE_BYTES + len(response_id)
        if len(self._responses) > self._max_held:
            self.bytes -= RESPONSE_BYTES + len(self._responses.popitem(last=False)[0])

    def take_pending(self, trace_id: bytes) -> list[Evaluation]:
        """Evaluations held for a trace whose first span has just come."""
        pending = self._pending.pop(trace_id, None)
        if pending is None:
            return []
        self._forget(pending[1])
        return pending[1]

    def _forget(self, evaluations: list[Evaluation]) -> None:
        self.bytes -= PENDING_TRACE_BYTES + sum(map(evaluation_bytes, evaluations))

    def _drop_oldest(self, out: Output) -> None:
        """The oldest trace's pending evaluations go unmatched."""
        evaluations = self._pending.popitem(last=False)[1][1]
        self._forget(evaluations)
        out.count(UNMATCHED, (), len(evaluations))

    def shed(self, excess: int, out: Output) -> int:
        """Drop the oldest pending evaluations, then the oldest response ids, until `excess` bytes are
        free (or nothing is left); the bytes freed."""
        before = self.bytes
        while self._pending and before - self.bytes < excess:
            self._drop_oldest(out)
        while self._responses and before - self.bytes < excess:
            self.bytes -= RESPONSE_BYTES + len(self._responses.popitem(last=False)[0])
        return before - self.bytes

    def attach(self, group: Group, evaluations: Sequence[Evaluation], out: Output) -> None:
        """Evaluations of an open run count with it; a finished run's are counted but change nothing."""
        group = group.find()
        if group.finished:
            self.count(group.service, group.agent or group.service, group.prompt_version, evaluations, out)
        else:
            group.evaluations = (*group.evaluations, *evaluations)[:MAX_EVALUATIONS_PER_RUN]

    def count(
        self, service: str, agent: str, prompt_version: str | None, evaluations: Sequence[Evaluation], out: Output
    ) -> None:
        labels = (service, agent, prompt_version or UNKNOWN_VERSION)
        for evaluation in evaluations:
            out.count(EVALUATIONS, (*labels, evaluation.name, evaluation_verdict(evaluation, self._rules)))
            if evaluation.score is not None:
                out.scores.append(((*labels, evaluation.name), evaluation.score))

    def process_logs(self, request: ExportLogsServiceRequest, now: float, out: Output) -> None:
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
                    self._route([evaluation], log_record.trace_id, log_record.span_id, evaluation.response_id, now, out)

    def evaluate_target(self, view: SpanView, now: float, out: Output) -> None:
        """An evaluator span linked to the span it judged, possibly in another trace."""
        if view.evaluations:
            trace_id, span_id = view.evaluation_target  # type: ignore[misc]
            self._route(view.evaluations, trace_id, span_id, None, now, out)

    def expire(self, now: float, out: Output) -> None:
        """Forget evaluations that never found their run."""
        while self._pending and now - next(iter(self._pending.values()))[0] > self._hold_seconds:
            self._drop_oldest(out)

    def _route(
        self,
        evaluations: list[Evaluation],
        trace_id: bytes,
        span_id: bytes,
        response_id: str | None,
        now: float,
        out: Output,
    ) -> None:
        group = self._evaluated_run(trace_id, span_id, response_id)
        if group is not None:
            self.attach(group, evaluations, out)
        elif len(trace_id) == 16:
            for evaluation in evaluations:
                self._hold_evaluation(trace_id, evaluation, now, out)
        else:
            out.count(UNMATCHED, (), len(evaluations))

    def _hold_evaluation(self, trace_id: bytes, evaluation: Evaluation, now: float, out: Output) -> None:
        """Keep an evaluation whose trace has not been seen yet (the judge can be faster than the spans)."""
        pending = self._pending.get(trace_id)
        if pending is None:
            pending = self._pending[trace_id] = (now, [])
            self.bytes += PENDING_TRACE_BYTES
        if len(pending[1]) < MAX_EVALUATIONS_PER_RUN:
            pending[1].append(evaluation)
            self.bytes += evaluation_bytes(evaluation)
        while len(self._pending) > self._max_held:
            self._drop_oldest(out)

    def _evaluated_run(self, trace_id: bytes, span_id: bytes, response_id: str | None) -> Group | None:
        if not trace_id and response_id:
            trace_id = self._responses.get(response_id, b"")
        trace = self._find_trace(trace_id)
        if trace is None:
            return None
        group = trace.node(span_id) if span_id else None
        if group is not None:
            return group
        # The evaluated span is an LLM call (not kept in the node map): its trace's run.
        runs = [g for g in trace.groups if g.merged_into is None and (g.is_run or g.llm_calls)]
        return runs[0] if runs else None
