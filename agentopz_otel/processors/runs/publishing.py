"""Publishing finished runs: the run record, the run log (file and OTLP log records), the held root
forwarded with the run totals, and the run and in-flight metrics."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_INFO, SEVERITY_NUMBER_WARN
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ...metrics import Registry
from ...records import OUTCOMES, SUCCESS, InFlightRuns, RunFeed, RunRecord
from ...spans import Batch, add_attribute
from .assembly import Group, HeldRoot
from .settings import RunLogConfig

RUN_COUNT_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
IN_FLIGHT_SLICE = 2_000  # open runs read between two yields to the event loop


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


def add_totals(span: Span, record: RunRecord) -> None:
    """Put the run totals on its root span, never overwriting the user's attributes."""
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


class RunPublisher:
    """Where finished runs go: held roots to the rest of the pipeline, records to the run log,
    the OTLP log exporters and the finished-runs feed."""

    def __init__(self, config: RunLogConfig, feed: RunFeed | None) -> None:
        self.config = config
        self._feed = feed
        self._emit_spans: Callable[[Batch], None] | None = None
        self._emit_logs: Callable[[ExportLogsServiceRequest, int], None] | None = None
        self._run_log: IO[str] | None = None

    def connect(
        self, emit_spans: Callable[[Batch], None], emit_logs: Callable[[ExportLogsServiceRequest, int], None] | None
    ) -> None:
        self._emit_spans = emit_spans
        self._emit_logs = emit_logs

    def open(self) -> None:
        path = self.config.path
        if path == "-":
            self._run_log = sys.stdout
        elif path:
            self._run_log = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (kept open)

    def close(self) -> None:
        if self._run_log is not None and self._run_log is not sys.stdout:
            self._run_log.close()

    def emit_root(self, root: HeldRoot) -> None:
        if self._emit_spans is None:
            return
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add(schema_url=root.schema_url)
        resource_spans.resource.CopyFrom(root.resource)
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.CopyFrom(root.scope)
        scope_spans.spans.append(root.span)
        self._emit_spans(Batch(request, 1))

    def publish(self, records: list[RunRecord]) -> None:
        if self._run_log is not None:
            self._run_log.write("".join(record.to_json() + "\n" for record in records))
        if self._emit_logs is not None and self.config.otlp:
            self._emit_logs(run_log_request(records), len(records))
        if self._feed is not None:
            self._feed.publish(records)


class RunMetrics:
    """Per-run metrics (recorded as runs finish) and the in-flight gauges (refreshed before each scrape)."""

    def __init__(
        self,
        registry: Registry,
        duration_buckets: Sequence[float],
        cost_buckets: Sequence[float],
        open_groups: Callable[[], Iterable[Group]],
    ) -> None:
        self._open_groups = open_groups
        self._runs = registry.metric("agentopz_runs_total")
        self._cost_total = registry.metric("agentopz_run_cost_usd_total")
        self._duration = registry.metric("agentopz_run_duration_seconds", duration_buckets)
        self._cost = registry.metric("agentopz_run_cost_usd", cost_buckets)
        self._steps = registry.metric("agentopz_run_steps", RUN_COUNT_BUCKETS)
        self._tool_calls = registry.metric("agentopz_run_tool_calls", RUN_COUNT_BUCKETS)
        self._last_finished = registry.metric("agentopz_run_last_finished_timestamp_seconds")
        self._in_flight = registry.metric("agentopz_runs_in_flight")
        self._in_flight_cost = registry.metric("agentopz_in_flight_run_max_cost_usd")
        self._in_flight_steps = registry.metric("agentopz_in_flight_run_max_steps")
        self._open_runs = registry.metric("agentopz_open_runs")
        self.checks = registry.metric("agentopz_quality_checks_total")
        registry.before_collect.append(self._refresh_in_flight)

    def record(self, record: RunRecord) -> None:
        labels = (record.service, record.agent, record.prompt_version)
        runs = self._runs.series((*labels, record.outcome))
        if runs.value == 0:
            # The first run of a (service, agent, prompt version): every outcome's series starts at 0,
            # so that increase() over them sees the version's next failure, not only its later ones.
            for outcome in OUTCOMES:
                self._runs.series((*labels, outcome))
                self._cost_total.series((*labels, outcome))
        runs.value += 1
        if record.cost_usd is not None:
            self._cost_total.series((*labels, record.outcome)).value += record.cost_usd
        if record.duration_seconds is not None:
            self._duration.series(labels).observe(record.duration_seconds)
        if record.cost_complete and record.cost_usd is not None:
            self._cost.series(labels).observe_with_exemplar(record.cost_usd, record.trace_id)
        self._steps.series(labels).observe(record.steps)
        self._tool_calls.series(labels).observe(record.tool_calls)
        self._last_finished.series((record.service, record.agent)).value = record.finished_at

    async def _refresh_in_flight(self) -> None:
        # In slices: with 100,000 open runs a whole pass would hold the event loop for a second.
        in_flight: dict[tuple[str, str], InFlightRuns] = {}
        for index, group in enumerate(self._open_groups()):
            if index % IN_FLIGHT_SLICE == IN_FLIGHT_SLICE - 1:
                await asyncio.sleep(0)
            count_in_flight(in_flight, group)
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


def in_flight_runs(groups: Iterable[Group]) -> dict[tuple[str, str], InFlightRuns]:
    """Runs in progress by (service, agent): count, most expensive (with its trace), most steps."""
    found: dict[tuple[str, str], InFlightRuns] = {}
    for group in groups:
        count_in_flight(found, group)
    return found


def count_in_flight(found: dict[tuple[str, str], InFlightRuns], group: Group) -> None:
    if not group.has_work:
        return
    service = group.service or "unknown_service"
    key = (service, group.agent or service)
    entry = found.get(key)
    if entry is None:
        entry = found[key] = InFlightRuns()
    entry.runs += 1
    if group.cost > entry.max_cost_usd or not entry.max_cost_trace_id:
        entry.max_cost_usd = group.cost
        entry.max_cost_trace_id = group.trace.trace_id.hex()
    entry.max_steps = max(entry.max_steps, group.steps)
