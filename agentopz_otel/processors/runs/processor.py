"""The runs processor: the shell around the `Assembler` (assembler.py), which makes every decision.

It holds the processor's config, runs the finishing ticker and the checkpoint on the event loop, and
routes what the Assembler reports: finished runs to the run log, the feed and the run metrics, root
spans (with the run totals) to the rest of the pipeline, released calls to the exporters' call
metrics, counters to the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from ...components import Context, Factory, Storage
from ...metrics import Registry
from ...pacing import paced, ticks
from ...records import InFlightRuns, RunFeed
from ...spans import Batch, Call
from .assembler import (
    DUPLICATE_SPANS,
    EVICTED_RUNS,
    LATE_SPANS,
    QUALITY_CHECKS,
    SHUTDOWN,
    UNASSEMBLED_SPANS,
    UNHELD_ROOTS,
    Assembler,
)
from .assembly import Output
from .checkpoint import RunCheckpoint, RunState
from .evaluations import EVALUATIONS, SCORE_BUCKETS, UNMATCHED
from .publishing import RunMetrics, RunPublisher, add_totals, in_flight_runs
from .settings import RunsConfig

log = logging.getLogger("agentopz_otel.runs")

FINISH_SLICE = 200  # quiet traces finished in one slice (pacing.py), about 3 ms
# The share of the event loop a periodic checkpoint takes at most: saving 100,000 open runs takes
# about a second of CPU, so about ten seconds.
CHECKPOINT_SHARE = 0.1
# The counters an Output's `counts` may name.
COUNTED = (
    DUPLICATE_SPANS,
    EVICTED_RUNS,
    LATE_SPANS,
    QUALITY_CHECKS,
    UNASSEMBLED_SPANS,
    UNHELD_ROOTS,
    EVALUATIONS,
    UNMATCHED,
)

__all__ = ["FACTORY", "RunsConfig", "RunsProcessor"]


class RunsProcessor:
    def __init__(
        self,
        component_id: str,
        config: RunsConfig,
        registry: Registry,
        feed: RunFeed | None = None,
        storage: Storage | None = None,
        input_chars: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.id = component_id
        # Injectable so tests can drive grace periods and timeouts without sleeping.
        self._clock = clock
        self._wall_clock = wall_clock
        self.config = config
        self.assembler = Assembler(config, input_chars)
        self._storage = storage
        self._checkpoint: RunCheckpoint | None = None
        self._checkpoint_task: asyncio.Task | None = None
        self._tick_task: asyncio.Task | None = None
        self._publisher = RunPublisher(config.run_log, feed)
        self._metrics = RunMetrics(registry, config.duration_buckets, config.cost_buckets, self.assembler.open_groups)
        self._counters = {name: registry.metric(name) for name in COUNTED}
        self._scores = registry.metric("agentopz_evaluation_score", SCORE_BUCKETS)
        # Root spans are held until their run finishes only to be forwarded carrying the run totals:
        # the pipeline turns this off when no exporter reads the spans (service.Pipeline).
        self.enrich_spans = True
        self._emit_calls: Callable[[list[Call], str | None], None] | None = None

    # -- wiring --------------------------------------------------------------------------------

    def connect(
        self,
        emit_spans: Callable[[Batch], None],
        emit_logs: Callable[[ExportLogsServiceRequest, int], None] | None,
        emit_calls: Callable[[list[Call], str | None], None] | None = None,
    ) -> None:
        """Where finished runs go: their root spans to the rest of the pipeline, their records to log
        exporters; calls held until their run's agent was known go to the exporters' call metrics."""
        self._publisher.connect(emit_spans, emit_logs)
        self._emit_calls = emit_calls

    def _route(self, out: Output) -> None:
        """Send on what the Assembler reported."""
        for root, record in out.roots:
            if record is not None:
                add_totals(root.span, record)
            self._publisher.emit_root(root)
        if self._emit_calls is not None:
            for calls, agent in out.calls:
                self._emit_calls(calls, agent)
        for (name, labels), amount in out.counts.items():
            self._counters[name].series(labels).value += amount
        for labels, score in out.scores:
            self._scores.series(labels).observe(score)
        for record in out.records:
            self._metrics.record(record)
        if out.records:
            self._publisher.publish(out.records)

    async def start(self) -> None:
        self._publisher.open()
        if self._storage is not None:
            self._checkpoint = RunCheckpoint(self._storage.connect(self.id), self.id)
            state = self._checkpoint.load()
            if state is not None:
                self.assembler.restore(state.traces, state.finished)
                open_runs = sum(1 for _ in self.assembler.open_groups())
                log.info("%s: %d open runs restored from the checkpoint", self.id, open_runs)
            self._checkpoint_task = asyncio.create_task(self._checkpointer())
        self._tick_task = asyncio.create_task(self._ticker())

    async def shutdown(self, timeout: float) -> None:
        for task in (self._tick_task, self._checkpoint_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._checkpoint is not None:
            # Open runs stay open: the next start picks them up where they are.
            await self._checkpoint.save(self._state())
            open_runs = sum(1 for _ in self.assembler.open_groups())
            log.info("%s: %d open runs saved for the next start", self.id, open_runs)
        else:
            self.flush()
        self._publisher.close()

    def _state(self) -> RunState:
        return RunState(self.assembler.traces, self.assembler.finished)

    async def _checkpointer(self) -> None:
        assert self._checkpoint is not None and self.config.checkpoint is not None
        async for _ in ticks(self.config.checkpoint.interval_seconds):
            await self._checkpoint.save(self._state(), CHECKPOINT_SHARE)

    async def _ticker(self) -> None:
        tick = self.config.tick_seconds
        async for _ in ticks(tick):
            try:
                quiet = self.assembler.quiet_traces(self._clock())
                async for start in paced(range(0, len(quiet), FINISH_SLICE), tick):
                    traces = quiet[start : start + FINISH_SLICE]
                    self._route(self.assembler.finish_quiet(traces, self._clock(), self._wall_clock()))
                self._route(self.assembler.expire(self._clock()))
            except Exception:
                log.exception("finishing runs failed; continuing")

    # -- data ----------------------------------------------------------------------------------

    def process(self, batch: Batch) -> None:
        self._route(self.assembler.intake(batch, self._clock(), self.enrich_spans))

    def process_logs(self, request: ExportLogsServiceRequest) -> None:
        """Evaluation results and content events sent as log records."""
        self._route(self.assembler.process_logs(request, self._clock()))

    def tick(self, now: float) -> None:
        """Finish every run that is done."""
        self._route(self.assembler.tick(now, self._wall_clock()))

    def in_flight(self) -> dict[tuple[str, str], InFlightRuns]:
        """Runs in progress by (service, agent), for `Context.in_flight`."""
        return in_flight_runs(self.assembler.open_groups())

    def flush(self) -> None:
        """At shutdown: finish every run whose root arrived; count the rest as evicted."""
        out = self.assembler.flush(self._clock(), self._wall_clock())
        self._route(out)
        lost = out.counts.get((EVICTED_RUNS, (SHUTDOWN,)), 0)
        if lost:
            log.warning(
                "%s: %d runs waiting for their root at shutdown are lost (runs.checkpoint would keep them)",
                self.id,
                lost,
            )


def _create(component_id: str, config: RunsConfig, context: Context) -> RunsProcessor:
    storage = (
        context.extension(config.checkpoint.storage, Storage, f"processor {component_id}: checkpoint.storage")
        if config.checkpoint is not None
        else None
    )
    processor = RunsProcessor(
        component_id, config, context.metrics, context.finished_runs, storage, context.run_input_chars
    )
    context.in_flight.append(processor.in_flight)
    return processor


FACTORY = Factory(type="runs", kind="processor", config_type=RunsConfig, create=_create, requires=("normalize",))
