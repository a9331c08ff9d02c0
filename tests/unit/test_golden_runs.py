"""Golden cases for run assembly and outcome: spans in (OTLP JSON, tests/golden/runs/<case>.json), run
records out (<case>.expected.json).

The real pipeline processors run in process (normalize, cost, prompt_version, runs) on a fake clock: each
step of a case happens at `at` seconds: a request of spans, a tick that finishes the runs that are done,
or a flush (shutdown). Out come the run records published, a few counters, the per-call metrics (whose
`agent` label is the agent of the call's run) and the run roots forwarded with the attributes added.
The wall clock (abandoned runs' finish time) is WALL_EPOCH + `at`. A case's `config` is the runs
processor's; `processors` may give the others' by type. `UPDATE_GOLDEN=1` rewrites
the expected files; review them against DESIGN.md before committing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from support import golden
from support.otlp_json import plain, trace_request

from agentopz_otel.components import Context
from agentopz_otel.exporters.prometheus import PrometheusExporter
from agentopz_otel.metrics import Registry
from agentopz_otel.model import Batch
from agentopz_otel.processors import cost, normalize, prompt_version
from agentopz_otel.processors.runs import RunsConfig, RunsProcessor
from agentopz_otel.records import OUTCOMES, RunFeed, RunRecord

CASES = golden.cases("runs")
WALL_EPOCH = 1_800_000_000.0
CALL_METRICS = ("agentopz_llm_calls_total", "agentopz_llm_tokens_total", "agentopz_tool_calls_total")
COUNTERS = (
    "agentopz_late_spans_total",
    "agentopz_duplicate_spans_total",
    "agentopz_evicted_runs_total",
    "agentopz_unassembled_spans_total",
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_EPOCH + self.now


def published(at: float, record: RunRecord) -> dict[str, Any]:
    fields = dict(record.__dict__)
    if fields["cost_usd"] is not None:
        fields["cost_usd"] = round(fields["cost_usd"], 9)  # sums of float prices: compare to the nano-dollar
    return {"published_at": at, **fields}


def spans_of(batch: Batch) -> list[Span]:
    return [span for r in batch.request.resource_spans for s in r.scope_spans for span in s.spans]


def forwarded_root(at: float, span: Span) -> dict[str, Any]:
    """A run's root span as forwarded when its run finished: the attributes this service added."""
    added = {kv.key: plain(kv.value) for kv in span.attributes if kv.key.startswith("agentopz.")}
    return {"forwarded_at": at, "span": span.name, "attributes": added}


def counter_values(registry: Registry, names: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in names:
        family = registry.metric(name)
        if family.labelnames:
            values[name] = {",".join(labels): series.value for labels, series in family.items()}
        else:
            values[name] = family.series(()).value
    return values


def run_case(document: dict[str, Any]) -> dict[str, Any]:
    registry = Registry()
    context = Context(metrics=registry)
    clock = FakeClock()
    feed = RunFeed()
    records: list[dict[str, Any]] = []
    feed.subscribe(lambda finished: records.extend(published(clock.now, record) for record in finished))
    configs = document.get("processors", {})
    pipeline = [
        factory.create(factory.type, factory.config_type(**configs.get(factory.type, {})), context)
        for factory in (normalize.FACTORY, cost.FACTORY, prompt_version.FACTORY)
    ]
    runs = RunsProcessor(
        "runs", RunsConfig(**document["config"]), registry, feed, clock=clock.monotonic, wall_clock=clock.wall
    )
    exporter = PrometheusExporter(registry)
    roots: list[dict[str, Any]] = []

    def forward(batch: Batch) -> None:  # what the runs processor hands to the rest of the pipeline
        exporter.export(batch)
        roots.extend(forwarded_root(clock.now, span) for span in spans_of(batch))

    runs.connect(forward, lambda request, count: None, exporter.export_calls)
    for step in document["steps"]:
        assert step["at"] >= clock.now, "steps go forward in time"
        clock.now = step["at"]
        if "spans" in step:
            request = trace_request(step["spans"])
            batch = Batch(request, 0)
            batch.span_count = len(spans_of(batch))
            for processor in pipeline:
                processor.process(batch)
            runs.process(batch)
            exporter.export(batch)
        elif step.get("flush"):
            runs.flush()  # what shutdown does without a checkpoint
        else:
            runs.tick(clock.now)
    return {
        "runs": records,
        "counters": counter_values(registry, COUNTERS),
        "call_metrics": counter_values(registry, CALL_METRICS),
        "forwarded_roots": roots,
    }


def test_the_cases_cover_every_outcome_and_the_assembly_hazards() -> None:
    expected = [json.loads(golden.expected_file(case).read_text()) for case in CASES]
    assert {run["outcome"] for document in expected for run in document["runs"]} == set(OUTCOMES)
    names = {golden.name(case) for case in CASES}
    assert {"out_of_order", "late_span", "sub_agents", "duplicate_spans", "capacity_and_shutdown"} <= names


@pytest.mark.parametrize("case", CASES, ids=golden.name)
def test_golden_runs(case: Path) -> None:
    actual = run_case(golden.load(case))
    assert actual == golden.expected(case, actual)
