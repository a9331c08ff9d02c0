"""Runs per second finished by the runs processor, with and without a JSON-schema check on every run.

.venv/bin/python bench/quality_checks.py --runs 20000
"""

from __future__ import annotations

import argparse
import json
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentopz_otel.components import Context
from agentopz_otel.fleet import agent_attributes, otlp_attributes, usage_attributes
from agentopz_otel.metrics import Registry
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.runs import FACTORY as RUNS
from agentopz_otel.spans import Batch

SCHEMA = {
    "type": "object",
    "required": ["answer", "confidence", "sources"],
    "properties": {
        "answer": {"type": "string", "minLength": 1},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "sources": {"type": "array", "items": {"type": "string"}},
    },
}


def run_request(index: int) -> ExportTraceServiceRequest:
    answer = {"answer": f"answer {index}", "confidence": 0.9, "sources": ["kb/1", "kb/2"]}
    output = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": json.dumps(answer)}]}])
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(otlp_attributes({"service.name": "bench"}))
    spans = resource_spans.scope_spans.add().spans
    trace_id = (index + 1).to_bytes(16, "big")
    root_id = (index * 8 + 1).to_bytes(8, "big")
    for call in range(3):
        span = spans.add(trace_id=trace_id, span_id=(index * 8 + 2 + call).to_bytes(8, "big"), parent_span_id=root_id)
        span.start_time_unix_nano, span.end_time_unix_nano = 1 + call, 2 + call
        chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", **usage_attributes(1000, 200)}
        span.attributes.extend(otlp_attributes({**chat, "gen_ai.output.messages": output}))
    root = spans.add(trace_id=trace_id, span_id=root_id)
    root.start_time_unix_nano, root.end_time_unix_nano = 0, 10
    root.attributes.extend(otlp_attributes(agent_attributes("support")))
    return request


def finish_rate(runs: int, checks: list[dict]) -> float:
    context = Context(metrics=Registry())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    config = {"max_open_runs": runs, "quality": {"checks": [{"agent": "*", "checks": checks}]} if checks else {}}
    processor = RUNS.create("runs", RUNS.config_type.model_validate(config), context)
    for index in range(runs):
        request = run_request(index)
        batch = Batch(request, 4)
        normalize.process(batch)
        processor.process(batch)
    started = time.perf_counter()
    processor.tick(time.monotonic() + 3600)  # every run is past its grace period: finish them all
    elapsed = time.perf_counter() - started
    finished = context.metrics.families[
        next(i for i, f in enumerate(context.metrics.families) if f.name == "agentopz_runs_total")
    ]
    assert sum(series.value for _, series in finished.items()) == runs
    return runs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    args = parser.parse_args()
    without = finish_rate(args.runs, [])
    with_schema = finish_rate(args.runs, [{"type": "json_schema", "schema": SCHEMA}])
    print(f"runs finished per second, no checks:            {without:,.0f}")
    print(f"runs finished per second, JSON-schema check:    {with_schema:,.0f}")
    print(f"cost of the check per run:                      {1e6 / with_schema - 1e6 / without:,.1f} us")


if __name__ == "__main__":
    main()
