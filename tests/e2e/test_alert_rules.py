"""Shipped alert rules, their promtool unit tests, runbooks and the Alertmanager example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import ROOT
from support.processes import require_binary

from agentopz_otel.runbooks import DEFAULT_RUNBOOK_BASE_URL, rebase
from agentopz_otel.slo import ALERT_NAMES as SLO_ALERT_NAMES
from agentopz_otel.slo import load_spec
from agentopz_otel.triage import suspect_annotation

ALERT_RULES = ROOT / "alert-rules"
UNIT_TESTS = sorted((ALERT_RULES / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
RULE_FILES = [
    ALERT_RULES / "agentopz-alerts.yaml",
    ALERT_RULES / "slo-rules.yaml",
    ALERT_RULES / "tests" / "slo-examples" / "slo-rules.yaml",
    ALERT_RULES / "triage-rules.yaml",
]
ALERTMANAGER = ALERT_RULES / "alertmanager.yml"


def alerts(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


SLO_GROUP_BY = {
    slo.name: slo.group_by
    for path in (ALERT_RULES / "slos.yaml", ALERT_RULES / "tests" / "slo-examples" / "slos.yaml")
    for slo in load_spec(path).slos
}
ALL_ALERTS = [alert for path in RULE_FILES for alert in alerts(path)]
ALERT_NAMES = sorted({alert["alert"] for alert in ALL_ALERTS})


def test_the_rule_files_hold_the_expected_alerts():
    expected = sorted(
        [
            "AgentStoppedFinishingRuns",
            "AgentQualityFailureRateUp",
            "AgentCostPerRunRegressed",
            "AgentSpendOverBudget",
            "AgentInFlightRunCostHigh",
            "AgentInFlightRunStepsHigh",
            "AgentRunLatencyRegressed",
            "AgentRunTimeouts",
            "AgentRunsAbandoned",
            "AgentToolCallFailures",
            "LLMCallErrors",
            "LLMRateLimited",
            "PromptVersionQualityRegression",
            "PromptVersionCostRegression",
            "PromptVersionLatencyRegression",
            "PromptRolloutRolledBack",
            "PromptRolloutStuck",
            "AgentopzAnalysisSourceDown",
            "AgentopzDown",
            "AgentopzRejectingSpans",
            "AgentopzRejectingRequests",
            "AgentopzExporterFailing",
            "AgentopzExporterQueueNearFull",
            "AgentopzUnpricedModel",
            "AgentopzLabelOverflow",
            "AgentopzRunsEvicted",
            "AgentopzEventLoopLagging",
            "AgentSuccessSLOBurn",
            "AgentQualitySLOBurn",
            "AgentLatencySLOBurn",
            "AgentCostSLOBurn",
            "AgentUnreachable",
            "AgentNotStartingRuns",
            "AgentRunsNotFinishing",
            "AgentWastedSpendUp",
            "AgentProbeSLOBurn",
        ]
    )
    assert expected == ALERT_NAMES


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: str(p.relative_to(ALERT_RULES)))
def test_promtool_check_rules(path):
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(path):
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", path.name], capture_output=True, text=True, cwd=path.parent, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path):
    """The unit tests fail when a rule changes: here the page factor of the shipped SLO."""
    promtool = require_binary("promtool")
    rules = (ALERT_RULES / "slo-rules.yaml").read_text()
    assert rules.count("> 14.4") == 4  # the page of each shipped SLO: agent-success and agent-probes
    (tmp_path / "slo-rules.yaml").write_text(rules.replace("> 14.4", "> 30"))
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "slo-rules.yml").write_text((ALERT_RULES / "tests" / "slo-rules.yml").read_text())
    result = subprocess.run([promtool, "test", "rules", "slo-rules.yml"], capture_output=True, text=True, cwd=tests)
    assert result.returncode == 1
    assert "name: fast burn pages and tickets,\n    alertname: AgentSuccessSLOBurn, time: 2h15m" in result.stderr


# Ready-made alerts on an agent's failing runs that name its top triage suspect.
SUSPECT_ALERTS = ("AgentQualityFailureRateUp", "AgentRunTimeouts")


def expected_annotations(name: str, labels: dict[str, str]) -> set[str]:
    """Every alert has a summary, a description and a runbook; an SLO burn alert per agent names
    its top triage suspect too (an SLO that pools its agents has no agent to triage), as do the
    SUSPECT_ALERTS."""
    base = {"summary", "description", "runbook_url"}
    if name in SUSPECT_ALERTS:
        return base | {"suspect"}
    if name not in SLO_ALERT_NAMES.values():
        return base
    return base | {"suspect"} if "agent" in SLO_GROUP_BY[labels["slo"]] else base


def test_hand_written_suspect_annotations_are_the_generated_template():
    """The suspect annotation is written once (agentopz_otel.triage); the ready-made alerts copy it exactly."""
    found = {
        alert["alert"]: alert["annotations"]["suspect"]
        for alert in alerts(ALERT_RULES / "agentopz-alerts.yaml")
        if "suspect" in alert["annotations"]
    }
    assert found == dict.fromkeys(SUSPECT_ALERTS, suspect_annotation(["service", "agent"]))


def unit_test_cases() -> dict[str, list[list[dict]]]:
    """alertname -> the exp_alerts lists of every alert_rule_test in the promtool unit tests."""
    cases: dict[str, list[list[dict]]] = {}
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    return cases


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_has_a_firing_and_a_silent_unit_test(name):
    cases = unit_test_cases().get(name, [])
    firing = [alert for expected in cases for alert in expected]
    assert firing, f"no promtool test case where {name} fires"
    assert [] in cases, f"no promtool test case where {name} stays silent"
    for alert in firing:
        assert alert["exp_labels"]["severity"] in ("page", "ticket")
        assert set(alert["exp_annotations"]) == expected_annotations(name, alert["exp_labels"])
        assert alert["exp_annotations"]["runbook_url"] == f"{DEFAULT_RUNBOOK_BASE_URL}/{name}"


@pytest.mark.parametrize("alert", ALL_ALERTS, ids=lambda a: f"{a['alert']}-{a['labels'].get('slo', '')}")
def test_every_alert_has_severity_annotations_and_an_existing_runbook(alert):
    assert alert["labels"]["severity"] in ("page", "ticket")
    annotations = alert["annotations"]
    assert set(annotations) == expected_annotations(alert["alert"], alert["labels"])
    assert annotations["runbook_url"] == f"{DEFAULT_RUNBOOK_BASE_URL}/{alert['alert']}"
    assert (RUNBOOKS / f"{alert['alert']}.md").is_file()


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: str(p.relative_to(ALERT_RULES)))
def test_committed_rule_files_link_runbooks_under_the_default_base(path):
    text = path.read_text()
    assert rebase(text, DEFAULT_RUNBOOK_BASE_URL) == text


RULES_COMMAND = (sys.executable, "-m", "agentopz_otel", "rules", "--runbook-base-url")


def test_rules_command_writes_copies_with_another_runbook_base(tmp_path):
    promtool = require_binary("promtool")
    shipped = [ALERT_RULES / "agentopz-alerts.yaml", ALERT_RULES / "slo-rules.yaml"]
    result = subprocess.run(
        [*RULES_COMMAND, "https://ops.example.com/agentopz/runbooks/", "-o", str(tmp_path / "out"), *map(str, shipped)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    for path in shipped:
        written = tmp_path / "out" / path.name
        before, after = path.read_text().splitlines(), written.read_text().splitlines()
        changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
        assert changed and all(new.strip().startswith("runbook_url: ") for _, new in changed)
        for alert in alerts(written):
            assert alert["annotations"]["runbook_url"] == f"https://ops.example.com/agentopz/runbooks/{alert['alert']}"
        check = subprocess.run([promtool, "check", "rules", str(written)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("base", ["docs/runbooks/", "ftp://ops.example.com/runbooks", "https://ops.example.com/?a=b"])
def test_rules_command_refuses_a_base_that_is_not_an_absolute_http_url(tmp_path, base):
    result = subprocess.run(
        [*RULES_COMMAND, base, "-o", str(tmp_path), str(ALERT_RULES / "agentopz-alerts.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"agentopz-otel rules: runbook base URL {base!r} must be an absolute http(s) URL without query or fragment\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_every_runbook_belongs_to_an_alert():
    pages = sorted(path.stem for path in RUNBOOKS.glob("*.md") if path.name != "README.md")
    assert pages == ALERT_NAMES
    index = (RUNBOOKS / "README.md").read_text()
    assert sorted(set(re.findall(r"\]\((\w+)\.md\)", index))) == ALERT_NAMES


AGENT_CAUSES = ("### Prompt", "### Tool", "### Upstream LLM API", "### Orchestration")


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_runbook_sections(name):
    text = (RUNBOOKS / f"{name}.md").read_text()
    assert text.startswith(f"# {name}\n")
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == ["What it means", "Find the cause", "Mitigate", "Escalate"]
    assert "```promql" in text
    if not name.startswith("Agentopz"):
        positions = [text.find(heading + "\n") for heading in AGENT_CAUSES]
        assert -1 not in positions and positions == sorted(positions), f"{name}: prompt/tool/LLM/orchestration"
        mitigate = text[text.index("## Mitigate") :]
        for action in ("Roll back the prompt", "Route around the broken part", "Disable the agent"):
            assert action in mitigate
    else:
        assert "### Agents or agentopz?" in text


def test_runbook_queries_are_valid_promql(tmp_path):
    """Every query in a promql block of a runbook parses (queries in a block are separated by blank lines)."""
    promtool = require_binary("promtool")
    rules = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        for block in re.findall(r"```promql\n(.*?)\n```", path.read_text(), re.S):
            for query in block.split("\n\n"):
                rules.append({"record": f"runbook:query{len(rules)}:check", "expr": query})
    assert len(rules) > 250
    path = tmp_path / "runbook-queries.yaml"
    path.write_text(json.dumps({"groups": [{"name": "runbook-queries", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_per_agent_budget_override_works(tmp_path):
    """The comment of agent:agentopz_llm_cost_usd:budget_1h says how to give one agent its own budget."""
    promtool = require_binary("promtool")
    rules = (ALERT_RULES / "agentopz-alerts.yaml").read_text()
    override = '          label_replace(vector(50), "agent", "research", "", "") or on (agent)\n'
    assert override.strip() in rules
    default = "          count by (agent) (agentopz_llm_cost_usd_total) * 0 + 20\n"
    assert rules.count(default) == 1
    (tmp_path / "rules.yaml").write_text(rules.replace(default, override + default))
    (tmp_path / "test.yml").write_text(
        json.dumps(
            {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {
                                "series": f'agentopz_llm_cost_usd_total{{service="lab",agent="{agent}"}}',
                                "values": "0+1x10",
                            }
                            for agent in ("research", "support")
                        ],
                        "promql_expr_test": [
                            {
                                "expr": "agent:agentopz_llm_cost_usd:budget_1h",
                                "eval_time": "5m",
                                "exp_samples": [
                                    {"labels": 'agent:agentopz_llm_cost_usd:budget_1h{agent="research"}', "value": 50},
                                    {"labels": 'agent:agentopz_llm_cost_usd:budget_1h{agent="support"}', "value": 20},
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    )
    result = subprocess.run([promtool, "test", "rules", "test.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Alertmanager ------------------------------------------------------------------------------------


def test_amtool_check_config():
    amtool = require_binary("amtool")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " - 2 inhibit rules\n - 4 receivers\n" in result.stdout


def test_secrets_are_read_from_files():
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    [pagerduty] = receivers["pagerduty"]["pagerduty_configs"]
    [slack] = receivers["slack-tickets"]["slack_configs"]
    [webhook] = receivers["oncall-webhook"]["webhook_configs"]
    assert pagerduty["routing_key_file"] == "/etc/alertmanager/secrets/pagerduty-routing-key"
    assert slack["api_url_file"] == "/etc/alertmanager/secrets/slack-webhook-url"
    assert (
        webhook["http_config"]["authorization"]["credentials_file"] == "/etc/alertmanager/secrets/oncall-webhook-token"
    )
    [agentopz] = receivers["agentopz-rollouts"]["webhook_configs"]
    assert agentopz["http_config"]["authorization"]["credentials_file"] == (
        "/etc/alertmanager/secrets/agentopz-webhook-token"
    )
    assert agentopz["url"] == "http://127.0.0.1:9464/api/v1/alertmanager"
    assert not {"routing_key", "service_key"} & set(pagerduty)
    assert "api_url" not in slack
    assert config["route"]["group_by"] == ["alertname", "service", "agent"]


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=page", "alertname=AgentSuccessSLOBurn", "agent=support"], "pagerduty,oncall-webhook"),
        (["severity=page", "alertname=AgentopzDown"], "pagerduty,oncall-webhook"),
        (["severity=ticket", "alertname=AgentSuccessSLOBurn", "agent=support"], "slack-tickets"),
        (["severity=ticket", "alertname=LLMRateLimited"], "slack-tickets"),
        (["alertname=SomethingElse"], "slack-tickets"),
        (
            ["alertname=PromptVersionQualityRegression", "severity=ticket", "agent=support", "prompt_version=v2"],
            "agentopz-rollouts,slack-tickets",
        ),
        (["alertname=PromptVersionCostRegression", "severity=ticket"], "agentopz-rollouts,slack-tickets"),
        (["alertname=PromptVersionLatencyRegression", "severity=ticket"], "agentopz-rollouts,slack-tickets"),
        (
            ["alertname=CanaryErrorsUp", "agentopz_action=pause", "severity=page"],
            "agentopz-rollouts,pagerduty,oncall-webhook",
        ),
        (["alertname=CanaryErrorsUp", "agentopz_action=disable"], "agentopz-rollouts"),
        (
            ["alertname=SupportOpenAIRateLimited", "agentopz_action=fallback_model", "severity=page"],
            "agentopz-rollouts,pagerduty,oncall-webhook",
        ),
        (["alertname=CanaryErrorsUp", "agentopz_action=promote", "severity=ticket"], "slack-tickets"),
        (["alertname=PromptRolloutRolledBack", "severity=page", "agent=support"], "pagerduty,oncall-webhook"),
    ],
)
def test_amtool_routes(labels, receivers):
    amtool = require_binary("amtool")
    result = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            f"--verify.receivers={receivers}",
            *labels,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == receivers + "\n"


WRONG_RECEIVER = ("--verify.receivers=slack-tickets", "severity=page")


def test_amtool_routes_test_fails_on_a_wrong_receiver():
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *WRONG_RECEIVER],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "WARNING: Expected receivers did not match resolved receivers." in result.stdout
