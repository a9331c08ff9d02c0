"""Probes end to end: the service probes an agent that is not there -> a real Prometheus evaluates
the shipped AgentUnreachable rule on /metrics -> a real Alertmanager with the shipped routing pages
PagerDuty and the on-call webhook with the runbook."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import ROOT
from support.alertmanager import alertmanager_config, running_alertmanager
from support.processes import free_port
from support.prometheus import start_prometheus
from support.service import service_body

ALERT_RULES = ROOT / "alert-rules" / "agentopz-alerts.yaml"
RUNBOOK = "http://localhost:9464/runbooks/AgentUnreachable"


def rules_without_wait(tmp_path: Path) -> Path:
    """The shipped rules with AgentUnreachable's `for: 2m` removed: compressed time, same expression."""
    text = ALERT_RULES.read_text()
    start = text.index("      - alert: AgentUnreachable\n")
    wait = text.index("        for: 2m\n", start)
    assert wait < text.index("      - alert:", start + 1)
    path = tmp_path / "agentopz-alerts.yaml"
    path.write_text(text[:wait] + text[wait + len("        for: 2m\n") :])
    return path


@pytest.mark.timeout(180)
def test_an_unreachable_agent_pages_with_its_runbook(start_service, tmp_path, recorder):
    probes = {
        "probes": [
            {"agent": "gone", "url": f"http://127.0.0.1:{free_port()}/chat", "interval_seconds": 1},
            {"agent": "self", "url": "http://127.0.0.1:{admin_port}/healthz", "interval_seconds": 1},
        ]
    }
    body = service_body(extensions={"probes": probes}).replace("{{admin_port}}", "{admin_port}")
    service = start_service(body)
    with running_alertmanager(tmp_path, alertmanager_config(tmp_path, recorder)) as alertmanager:
        prometheus = start_prometheus(
            tmp_path,
            [f"127.0.0.1:{service.admin_port}"],
            [rules_without_wait(tmp_path)],
            alertmanager.removeprefix("http://"),
        )
        try:

            def is_page(body: dict) -> bool:
                return any(alert["labels"].get("alertname") == "AgentUnreachable" for alert in body["alerts"])

            headers, page = recorder.wait_for("/webhook", is_page, timeout=90)
            assert headers["authorization"] == "Bearer e2e-token"
            assert (page["receiver"], page["status"]) == ("oncall-webhook", "firing")
            assert page["groupLabels"] == {"alertname": "AgentUnreachable", "agent": "gone"}
            [alert] = page["alerts"]
            assert alert["labels"] == {"alertname": "AgentUnreachable", "severity": "page", "agent": "gone"}
            assert alert["annotations"]["summary"] == "Agent gone fails its probes"
            assert "the most frequent reason was connect_error." in alert["annotations"]["description"]
            assert alert["annotations"]["runbook_url"] == RUNBOOK

            _, event = recorder.wait_for("/pagerduty", lambda body: True, timeout=15)
            assert (event["routing_key"], event["event_action"]) == ("e2e-routing-key", "trigger")
            assert event["payload"]["summary"] == "Agent gone fails its probes"
            assert event["links"] == [{"href": RUNBOOK, "text": "Runbook"}]
            # The agent that answers (the service's own /healthz) never pages.
            assert prometheus.query('ALERTS{alertname="AgentUnreachable",agent="self"}') == []
            assert prometheus.query('agentopz_probe_success{agent="self"}')[0]["value"][1] == "1"
        finally:
            prometheus.stop()
