"""End to end: runs sent by the OpenTelemetry SDK -> agentopz -> Prometheus with generated SLO rules ->
Alertmanager with the shipped routing -> the on-call webhook and PagerDuty get the page with its runbook."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest
from opentelemetry import trace
from support.alertmanager import alertmanager_config, running_alertmanager
from support.prometheus import start_prometheus
from support.sdk_agent import emit_chat, tracer
from support.service import service_body

from agentopz_otel.slo import load_spec, render_rules

# A latency SLO whose threshold (7.5s) is not a default bucket boundary: the runs processor adds it
# from slo_file. min_runs 1 so a handful of runs is enough traffic.
SLO_SPEC = """
slos:
  - name: e2e-latency
    match: {service: e2e-svc, agent: e2e-agent}
    objective: 99
    sli: {kind: latency, threshold_seconds: 7.5}
    min_runs: 1
"""


@pytest.fixture
def alertmanager(tmp_path, recorder):
    with running_alertmanager(tmp_path, alertmanager_config(tmp_path, recorder)) as url:
        yield url


def timed_run(t: trace.Tracer, agent: str, seconds: float) -> None:
    """One run whose root span lasts `seconds` (explicit start and end times), with one LLM call."""
    end = time.time_ns()
    root = t.start_span(
        f"invoke_agent {agent}",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent},
        start_time=end - int(seconds * 1e9),
    )
    with trace.use_span(root, end_on_exit=False):
        emit_chat(t)
    root.end(end_time=end)


def alertmanager_alerts(url: str, alertname: str) -> list[dict]:
    query = urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=5) as response:
        return json.load(response)


def test_slow_runs_page_through_prometheus_and_alertmanager(tmp_path, start_service, recorder, alertmanager):
    spec_path = tmp_path / "slos.yaml"
    spec_path.write_text(SLO_SPEC)
    rules = tmp_path / "slo-rules.yaml"
    rules.write_text(render_rules(load_spec(spec_path), spec_path.name))
    runs = {"grace_seconds": 0.4, "tick_seconds": 0.1, "root_wait_seconds": 1.0, "slo_file": str(spec_path)}
    service = start_service(service_body(runs=runs))
    prometheus = start_prometheus(
        tmp_path, [f"127.0.0.1:{service.admin_port}"], [rules], alertmanager=alertmanager.removeprefix("http://")
    )
    try:
        labels = 'service="e2e-svc",agent="e2e-agent"'
        with tracer("grpc", service.grpc_endpoint, service="e2e-svc") as t:
            # One fast run creates the histogram series; Prometheus must see them before the slow
            # runs, since rate() ignores what a series held when it first appeared.
            timed_run(t, "e2e-agent", 1.0)
            assert service.wait_for("agentopz_run_duration_seconds_count", 1, agent="e2e-agent") == 1
            assert 'le="7.5"' in service.metrics_text()  # the SLO threshold is a bucket boundary
            assert prometheus.wait_for(
                f"count_over_time(agentopz_run_duration_seconds_count{{{labels}}}[1m]) >= 2", timeout=20
            )
            for _ in range(3):
                timed_run(t, "e2e-agent", 10.0)
        assert service.wait_for("agentopz_run_duration_seconds_count", 4, agent="e2e-agent") == 4

        def is_page(body: dict) -> bool:
            return any(alert["labels"].get("alertname") == "AgentLatencySLOBurn" for alert in body["alerts"])

        headers, body = recorder.wait_for("/webhook", is_page, timeout=45)
        summary = "Agent e2e-agent (e2e-svc) is burning the e2e-latency error budget fast (100.0x the sustainable rate)"
        assert headers["authorization"] == "Bearer e2e-token"
        assert (body["receiver"], body["status"]) == ("oncall-webhook", "firing")
        assert body["groupLabels"] == {"alertname": "AgentLatencySLOBurn", "service": "e2e-svc", "agent": "e2e-agent"}
        [alert] = body["alerts"]
        assert alert["status"] == "firing"
        assert alert["labels"] == {
            "alertname": "AgentLatencySLOBurn",
            "severity": "page",
            "slo": "e2e-latency",
            "service": "e2e-svc",
            "agent": "e2e-agent",
        }
        assert alert["annotations"]["runbook_url"] == "http://localhost:9464/runbooks/AgentLatencySLOBurn"
        assert alert["annotations"]["summary"] == summary

        _, event = recorder.wait_for("/pagerduty", lambda body: True, timeout=15)
        assert (event["routing_key"], event["event_action"]) == ("e2e-routing-key", "trigger")
        assert event["payload"]["summary"] == summary
        assert event["links"] == [{"href": "http://localhost:9464/runbooks/AgentLatencySLOBurn", "text": "Runbook"}]

        # The slow burn fires too (1d and 2h), as a ticket; the page inhibits it, so Slack gets nothing.
        states = {}
        deadline = time.monotonic() + 15
        while states.get("ticket") != "suppressed" and time.monotonic() < deadline:
            found = alertmanager_alerts(alertmanager, "AgentLatencySLOBurn")
            states = {a["labels"]["severity"]: a["status"]["state"] for a in found}
            time.sleep(0.5)
        assert states == {"page": "active", "ticket": "suppressed"}
        assert "/slack" not in recorder.paths()
    finally:
        prometheus.stop()
