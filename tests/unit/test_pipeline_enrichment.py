"""Spans are enriched only when an exporter of the pipeline reads them; the run log is built as OTLP log
records only when an exporter takes logs. The metrics are the same either way."""

from __future__ import annotations

import json

from support.otlp_proto import make_request, make_span, span_attributes

from agentopz_otel.config import parse_config
from agentopz_otel.service import Service
from agentopz_otel.spans import Batch

ENRICHMENT = {"agentopz.cost.usd", "agentopz.cost.source", "agentopz.prompt.version"}


def pipeline(*exporters: str):
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:0"}}}},
        "processors": {"normalize": {}, "cost": {}, "prompt_version": {}, "runs": {}},
        "exporters": {
            "prometheus": {},
            "otlp/backend": {"endpoint": "http://127.0.0.1:1", "protocol": "grpc"},
        },
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["normalize", "cost", "prompt_version", "runs"],
                    "exporters": list(exporters),
                }
            }
        },
    }
    service = Service(parse_config(json.dumps(config)))
    return service, service.pipelines[0]


def agent_trace():
    trace_id = bytes(range(1, 17))
    root = make_span(
        "invoke_agent helper",
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"},
        trace_id=trace_id,
    )
    call = make_span(
        "chat gpt-4o",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 100,
        },
        trace_id=trace_id,
        parent=root.span_id,
    )
    return make_request([root, call], service="svc")


def consume(pipe) -> Batch:
    batch = Batch(agent_trace(), 2)
    pipe.consume(batch)
    return batch


def test_with_only_prometheus_spans_are_left_as_they_came_and_roots_are_not_held():
    service, pipe = pipeline("prometheus")
    runs = pipe.processors[3]
    assert [p.enrich_spans for p in pipe.processors[1:]] == [False, False, False]
    batch = consume(pipe)
    spans = list(batch.request.resource_spans[0].scope_spans[0].spans)
    assert [s.name for s in spans] == ["invoke_agent helper", "chat gpt-4o"]  # the root stays in the request
    assert all(not ENRICHMENT & span_attributes(span).keys() for span in spans)
    assert batch.span_count == 2
    # The views carry the enrichment all the same: the call metrics count it.
    call = batch.views[1]
    assert (call.cost_source, round(call.cost, 6)) == ("catalog", 0.0035)
    runs.tick(10**9)
    text = service.metrics.snapshot()
    runs_total = next(f for f in text if f.name == "agentopz_runs_total")
    assert dict(runs_total.series)[("svc", "helper", "unknown", "success")] == 1
    cost = next(f for f in text if f.name == "agentopz_llm_cost_usd_total")
    assert [(labels, round(value, 6)) for labels, value in cost.series] == [
        (("svc", "helper", "openai", "gpt-4o"), 0.0035)
    ]


def test_an_exporter_that_reads_spans_gets_them_enriched_and_the_root_with_the_run_totals():
    _, pipe = pipeline("prometheus", "otlp/backend")
    runs = pipe.processors[3]
    assert [p.enrich_spans for p in pipe.processors[1:]] == [True, True, True]
    batch = consume(pipe)
    spans = list(batch.request.resource_spans[0].scope_spans[0].spans)
    assert [s.name for s in spans] == ["chat gpt-4o"]  # the root is held until its run finishes
    assert batch.span_count == 1
    attributes = span_attributes(spans[0])
    assert (attributes["agentopz.cost.source"], round(attributes["agentopz.cost.usd"], 6)) == ("catalog", 0.0035)
    assert attributes["agentopz.prompt.version"] == "unknown"
    held = []
    runs.connect(lambda batch: held.append(batch), None)
    runs.tick(10**9)
    [root] = [s for b in held for rs in b.request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert span_attributes(root)["agentopz.run.outcome"] == "success"


def test_the_run_log_becomes_otlp_log_records_only_for_an_exporter_that_takes_them():
    _, pipe = pipeline("prometheus")
    assert pipe.processors[3]._publisher._emit_logs is None
    _, pipe = pipeline("prometheus", "otlp/backend")
    assert pipe.processors[3]._publisher._emit_logs == pipe.export_logs
