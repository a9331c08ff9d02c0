"""Golden cases for run assembly and outcome: spans in (OTLP JSON, tests/golden/runs/<case>.json), run
records out (<case>.expected.json).

The real pipeline processors run in process (normalize, cost, prompt_version, runs) on a fake clock: each
step of a case happens at `at` seconds: a request of spans, a tick that finishes the runs that are done,
or a flush (shutdown). The wall clock (abandoned runs' finish time) is WALL_EPOCH + `at`. `UPDATE_GOLDEN=1` rewrites
the expected files; review them against DESIGN.md before committing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import golden
from support.otlp_json import trace_request

from agentopz_otel.components import Context
from agentopz_otel.metrics import Registry
from agentopz_otel.model import Batch
from agentopz_otel.processors import cost, normalize, prompt_version
from agentopz_otel.processors.runs import RunsConfig, RunsProcessor
from agentopz_otel.records import OUTCOMES, RunFeed, RunRecord

CASES = golden.cases("runs")
WALL_EPOCH = 1_800_000_000.0
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


def counter_values(registry: Registry) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in COUNTERS:
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
    pipeline = [
        module.FACTORY.create(module.FACTORY.type, module.FACTORY.config_type(), context)
        for module in (normalize, cost, prompt_version)
    ]
    runs = RunsProcessor(
        "runs", RunsConfig(**document["config"]), registry, feed, clock=clock.monotonic, wall_clock=clock.wall
    )
    for step in document["steps"]:
        assert step["at"] >= clock.now, "steps go forward in time"
        clock.now = step["at"]
        if "spans" in step:
            request = trace_request(step["spans"])
            batch = Batch(request, sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans))
            for processor in pipeline:
                processor.process(batch)
            runs.process(batch)
        elif step.get("flush"):
            runs.flush()  # what shutdown does without a checkpoint
        else:
            runs.tick(clock.now)
    return {"runs": records, "counters": counter_values(registry)}


def test_the_cases_cover_every_outcome_and_the_assembly_hazards() -> None:
    expected = [json.loads(golden.expected_file(case).read_text()) for case in CASES]
    assert {run["outcome"] for document in expected for run in document["runs"]} == set(OUTCOMES)
    names = {golden.name(case) for case in CASES}
    assert {"out_of_order", "late_span", "sub_agents", "duplicate_spans", "capacity_and_shutdown"} <= names


@pytest.mark.parametrize("case", CASES, ids=golden.name)
def test_golden_runs(case: Path) -> None:
    actual = run_case(golden.load(case))
    assert actual == golden.expected(case, actual)
