"""Run metrics through a real Prometheus: queried with PromQL, with trace-id exemplars."""

from __future__ import annotations

import math
import time

import pytest
from support.prometheus import start_prometheus
from support.runs import agent_run, runs_config, wait_runs
from support.sdk_agent import emit_chat, emit_tool, tracer
from support.service import service_body

GPT4O_CALL = 0.00575


@pytest.fixture
def scraped(start_service, tmp_path):
    log_path = tmp_path / "runs.jsonl"
    service = start_service(service_body(runs=runs_config(log_path)))
    service.run_log = log_path
    prometheus = start_prometheus(tmp_path, [f"127.0.0.1:{service.admin_port}"])
    yield service, prometheus
    prometheus.stop()


def test_run_metrics_and_exemplars_in_prometheus(scraped):
    service, prometheus = scraped
    trace_ids = []
    with tracer("grpc", service.grpc_endpoint, service="shop") as t:
        for calls in (1, 3):
            with agent_run(t, "checkout", **{"agentopz.prompt.version": "v2"}) as root:
                for _ in range(calls):
                    emit_chat(t)
                emit_tool(t, "charge")
                trace_ids.append(format(root.get_span_context().trace_id, "032x"))
    wait_runs(service, 2)

    runs = prometheus.wait_for('agentopz_runs_total{agent="checkout",outcome="success",prompt_version="v2"} == 2')
    assert [r["metric"]["service"] for r in runs] == ["shop"]
    [cost] = prometheus.wait_for('agentopz_run_cost_usd_sum{agent="checkout"}')
    assert math.isclose(float(cost["value"][1]), 4 * GPT4O_CALL, rel_tol=1e-9)
    [steps] = prometheus.query('agentopz_run_steps_sum{agent="checkout"}')
    assert float(steps["value"][1]) == 4
    [tokens] = prometheus.query('sum(agentopz_llm_tokens_total{service="shop",token_type="input"})')
    assert float(tokens["value"][1]) == 4 * 1200

    now = time.time()
    deadline = time.monotonic() + 20
    exemplars = []
    while not exemplars and time.monotonic() < deadline:
        data = prometheus.api(
            "query_exemplars",
            query='agentopz_run_cost_usd_bucket{agent="checkout"}',
            start=str(now - 600),
            end=str(now + 60),
        )
        exemplars = [e for series in data for e in series["exemplars"]]
        time.sleep(0.5)
    assert exemplars, "no exemplars scraped"
    assert {e["labels"]["trace_id"] for e in exemplars} <= set(trace_ids)
    by_trace = {e["labels"]["trace_id"]: float(e["value"]) for e in exemplars}
    expensive = trace_ids[1]
    assert expensive in by_trace
    assert math.isclose(by_trace[expensive], 3 * GPT4O_CALL, rel_tol=1e-9)
