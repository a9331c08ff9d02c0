"""Rollouts and alerting end to end, in compressed time, on real components: a test agent picks its prompt
version per run over OpenFeature (OFREP provider) and exports its runs with the OpenTelemetry SDK; a
real Prometheus evaluates the shipped alert rules and a real Alertmanager routes with the shipped
alertmanager.yml, to the service's alertmanager_webhook and to PagerDuty and the on-call webhook."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from openfeature import api
from support import ROOT
from support.admin_api import Admin
from support.alertmanager import WEBHOOK_TOKEN, alertmanager_config, running_alertmanager
from support.canary import AGENT, FAST_RUNS, MAX_RUN_SECONDS, VERSIONS, Agent, run_until, wait_state
from support.prometheus import start_prometheus
from support.sdk_agent import tracer
from support.service import service_body

ALERT_RULES = ROOT / "alert-rules" / "agentopz-alerts.yaml"
RUNBOOKS = "http://localhost:9464/runbooks"


@pytest.fixture
def openfeature_domain():
    yield
    api.clear_providers()


def rollout_service(start_service, tmp_path, analysis: dict):
    token_file = tmp_path / "webhook-token"
    token_file.write_text(WEBHOOK_TOKEN)
    extensions = {
        "storage": {"path": str(tmp_path / "state.sqlite")},
        "rollouts": {},
        "canary_analysis": analysis,
        "alertmanager_webhook": {"auth": {"token_file": str(token_file)}},
    }
    service = start_service(service_body(runs=FAST_RUNS, extensions=extensions))
    admin = Admin(service.admin_url)
    admin.define(AGENT, VERSIONS, "v1")
    admin.start(AGENT, "v2", [5, 25, 50, 100], reason="new prompt")
    return service, admin


@pytest.mark.timeout(240)
def test_an_automatic_rollback_pages_with_its_runbook(start_service, tmp_path, recorder, openfeature_domain):
    analysis = {"interval_seconds": 0.3, "defaults": {"max_run_seconds": MAX_RUN_SECONDS}}
    service, admin = rollout_service(start_service, tmp_path, analysis)
    config = alertmanager_config(tmp_path, recorder, f"{service.admin_url}/api/v1/alertmanager")
    with running_alertmanager(tmp_path, config) as alertmanager:
        prometheus = start_prometheus(
            tmp_path, [f"127.0.0.1:{service.admin_port}"], [ALERT_RULES], alertmanager.removeprefix("http://")
        )
        try:
            # The rollback counter is scraped at 0 first, so that increase() sees the rollback.
            assert prometheus.wait_for(
                f'agentopz_rollout_actions_total{{agent="{AGENT}",action="rollback",actor="analysis"}} == 0'
            )
            agent = Agent(service.admin_url, {"v1": 1, "v2": 3})  # 10% against 30%: 3x the failures
            with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
                runs = run_until(agent, lambda failed: run_tracer, lambda: decided(admin), 4000)
                assert wait_state(service, "rolled_back")["weight"] == 0
                evaluations_before = service.value("agentopz_flag_evaluations_total", agent=AGENT, prompt_version="v2")
                served_before = dict(agent.runs)
                for _ in range(100):
                    agent.run(lambda failed: run_tracer)
            # Traffic is back on the baseline: in the flag evaluations and in the runs per version.
            assert agent.runs["v2"] == served_before["v2"] and agent.runs["v1"] == served_before["v1"] + 100
            assert service.value("agentopz_flag_evaluations_total", agent=AGENT, prompt_version="v2") == (
                evaluations_before
            )
            assert service.wait_for("agentopz_runs_total", runs + 100, agent=AGENT) == runs + 100
            assert service.value("agentopz_runs_total", agent=AGENT, prompt_version="v2") == served_before["v2"]

            def rolled_back(body: dict) -> bool:
                return any(alert["labels"]["alertname"] == "PromptRolloutRolledBack" for alert in body["alerts"])

            headers, body = recorder.wait_for("/webhook", rolled_back, timeout=60)
            assert headers["authorization"] == "Bearer e2e-token"
            [page] = [alert for alert in body["alerts"] if alert["labels"]["alertname"] == "PromptRolloutRolledBack"]
            assert page["labels"] == {
                "alertname": "PromptRolloutRolledBack",
                "severity": "page",
                "agent": AGENT,
                "prompt_version": "v2",
                "baseline": "v1",
                "guard": "quality",
            }
            assert page["annotations"]["runbook_url"] == f"{RUNBOOKS}/PromptRolloutRolledBack"
            assert page["annotations"]["summary"] == (
                "Prompt version v2 of agent support was rolled back automatically (quality guard failed)"
            )
            _, event = recorder.wait_for("/pagerduty", lambda event: "rolled back" in event["payload"]["summary"], 15)
            assert event["links"] == [{"href": f"{RUNBOOKS}/PromptRolloutRolledBack", "text": "Runbook"}]
        finally:
            prometheus.stop()


def decided(admin: Admin) -> bool:
    return admin.ok("GET", f"/api/v1/rollouts/{AGENT}")["state"] != "progressing"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.timeout(120)
def test_a_regression_alert_from_alertmanager_rolls_the_candidate_back(
    start_service, tmp_path, recorder, openfeature_domain
):
    """Without the analysis, the shipped PromptVersionQualityRegression alert, fired into a real
    Alertmanager, reaches the service's webhook through the shipped routing and rolls the candidate back;
    the same alert on the baseline does nothing."""
    service, admin = rollout_service(start_service, tmp_path, {"interval_seconds": 0.3, "defaults": {"enabled": False}})
    agent = Agent(service.admin_url, {"v1": 0, "v2": 0})
    assert {agent.version(f"user-{i}") for i in range(400)} == {"v1", "v2"}
    config = alertmanager_config(tmp_path, recorder, f"{service.admin_url}/api/v1/alertmanager")
    with running_alertmanager(tmp_path, config) as alertmanager:
        labels = {"severity": "ticket", "service": "support-svc", "agent": AGENT}
        alerts = [
            {
                "labels": {"alertname": "PromptVersionQualityRegression", "prompt_version": version, **labels},
                "annotations": {
                    "summary": f"Prompt version {version} of agent support (support-svc) fails quality checks more",
                    "runbook_url": f"{RUNBOOKS}/PromptVersionQualityRegression",
                },
                "startsAt": now_rfc3339(),
            }
            for version in ("v1", "v2")
        ]
        Admin(alertmanager).ok("POST", "/api/v2/alerts", alerts)
        rollout = wait_state(service, "rolled_back", timeout=30)
        assert rollout["state"] == "rolled_back"
        entries = admin.ok("GET", f"/api/v1/history?agent={AGENT}")["entries"]
        [entry] = [entry for entry in entries if entry["actor_kind"] == "alert"]
        assert (entry["action"], entry["actor"]) == ("rollback", "PromptVersionQualityRegression")
        assert entry["evidence"]["alert"]["labels"]["prompt_version"] == "v2"
        assert entry["evidence"]["alert"]["annotations"]["runbook_url"] == f"{RUNBOOKS}/PromptVersionQualityRegression"
        assert {agent.version(f"user-{i}") for i in range(400)} == {"v1"}
        # The ticket goes to Slack as well (continue: true), with its runbook.
        _, slack = recorder.wait_for("/slack", lambda body: True, timeout=30)
        assert f"Runbook: {RUNBOOKS}/PromptVersionQualityRegression" in slack["attachments"][0]["text"]
        time.sleep(1)
        assert service.value("agentopz_alertmanager_webhook_alerts_total", outcome="acted") == 1
        assert service.value("agentopz_alertmanager_webhook_alerts_total", outcome="ignored") >= 1
