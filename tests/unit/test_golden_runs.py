"""Golden cases for run assembly and outcome: spans in (OTLP JSON, tests/golden/runs/<case>.json), run
records out (<case>.expected.json).

The real pipeline processors (normalize, cost, prompt_version) make the views; the runs processor's
`Assembler` is driven directly, on a fake clock: each step of a case happens at `at` seconds: a request of
spans, a tick that finishes the runs that are done, or a flush (shutdown). Out come the run records, a
few counters, the per-call metrics (whose `agent` label is the agent of the call's run, counted by the real
Prometheus exporter from the views and the released calls) and the run roots forwarded with the
attributes added.
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

from agentopz_otel import catalogue
from agentopz_otel.components import Context
from agentopz_otel.exporters.prometheus import PrometheusExporter
from agentopz_otel.metrics import Registry
from agentopz_otel.processors import cost, normalize, prompt_version
from agentopz_otel.processors.runs import RunsConfig
from agentopz_otel.processors.runs.assembler import Assembler
from agentopz_otel.processors.runs.assembly import Output
from agentopz_otel.processors.runs.publishing import add_totals
from agentopz_otel.records import OUTCOMES, RunRecord
from agentopz_otel.spans import Batch

CASES = golden.cases("runs")
WALL_EPOCH = 1_800_000_000.0
CALL_METRICS = ("agentopz_llm_calls_total", "agentopz_llm_tokens_total", "agentopz_tool_calls_total")
COUNTERS = (
    "agentopz_late_spans_total",
    "agentopz_duplicate_spans_total",
    "agentopz_evicted_runs_total",
    "agentopz_unassembled_spans_total",
)


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


def metric_values(registry: Registry, names: tuple[str, ...]) -> dict[str, Any]:
    return {
        name: {",".join(labels): series.value for labels, series in registry.metric(name).items()} for name in names
    }


def run_case(document: dict[str, Any]) -> dict[str, Any]:
    registry = Registry()
    context = Context(metrics=registry)
    configs = document.get("processors", {})
    pipeline = [
        factory.create(factory.type, factory.config_type(**configs.get(factory.type, {})), context)
        for factory in (normalize.FACTORY, cost.FACTORY, prompt_version.FACTORY)
    ]
    assembler = Assembler(RunsConfig(**document["config"]))
    exporter = PrometheusExporter(registry)
    records: list[dict[str, Any]] = []
    roots: list[dict[str, Any]] = []
    counts: dict[str, dict[str, float]] = {name: {} for name in COUNTERS}
    now = 0.0

    def route(out: Output) -> None:  # what the runs processor does with the Assembler's output
        records.extend(published(now, record) for record in out.records)
        for root, record in out.roots:
            if record is not None:
                add_totals(root.span, record)
            roots.append(forwarded_root(now, root.span))
        for calls, agent in out.calls:
            exporter.export_calls(calls, agent)
        for (name, labels), amount in out.counts.items():
            if name in counts:
                key = ",".join(labels)
                counts[name][key] = counts[name].get(key, 0.0) + amount

    for step in document["steps"]:
        assert step["at"] >= now, "steps go forward in time"
        now = step["at"]
        if "spans" in step:
            request = trace_request(step["spans"])
            batch = Batch(request, 0)
            batch.span_count = len(spans_of(batch))
            for processor in pipeline:
                processor.process(batch)
            route(assembler.intake(batch, now))
            exporter.export(batch)
        elif step.get("flush"):
            route(assembler.flush(now, WALL_EPOCH + now))  # what shutdown does without a checkpoint
        else:
            route(assembler.tick(now, WALL_EPOCH + now))
    return {
        "runs": records,
        # A family without labels shows its one value (0 when nothing was counted).
        "counters": {
            name: values if catalogue.metric(name).labels else values.get("", 0.0) for name, values in counts.items()
        },
        "call_metrics": metric_values(registry, CALL_METRICS),
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
