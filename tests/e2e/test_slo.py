"""SLO files: validation errors, generated rules, committed rule files, CLI, bucket thresholds in the runs config."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest
import yaml
from support import ROOT
from support.processes import require_binary

from agentopz_otel.config import ConfigError, parse_config
from agentopz_otel.slo import (
    SLOError,
    cost_thresholds,
    generate_rules,
    latency_thresholds,
    le_label,
    load_spec,
    parse_spec,
    render_rules,
)

ALERT_RULES = ROOT / "alert-rules"
EXAMPLES = ALERT_RULES / "tests" / "slo-examples"

SPEC = """
slos:
  - name: support-latency
    match: {service: support-api, agent: "support|triage"}
    objective: 99.5
    window: 28d
    sli: {kind: latency, threshold_seconds: 7.5}
    min_runs: 20
    alerting: {labels: {team: support}}
  - name: research-cost
    match: {agent: research}
    group_by: []
    objective: 99
    sli: {kind: cost, threshold_usd: 0.25}
    alerting: {page: false}
  - name: all-quality
    objective: 98
    sli: {kind: quality}
  - name: cheap-latency
    objective: 90
    sli: {kind: latency, threshold_seconds: 30}
"""


def rules_by_name(document: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            found.setdefault(rule.get("record") or rule["alert"], []).append(rule)
    return found


def errors(text: str) -> str:
    with pytest.raises(SLOError) as raised:
        parse_spec(textwrap.dedent(text), "slos.yaml")
    return str(raised.value)


# -- validation ----------------------------------------------------------------------------------


def test_validation_errors_name_the_key_and_the_reason():
    message = errors("""
        slos:
          - name: Support Agent
            objective: 100
            sli: {kind: latncy}
            min_run: 5
        """)
    assert message == (
        "slos.yaml:\n"
        "slos.0.name: use lowercase letters, digits, '-' and '_' (at most 63), e.g. support-success\n"
        "slos.0.objective: Input should be less than 100\n"
        "slos.0.sli: unknown SLI kind; use one of: success, quality, latency, cost, probe\n"
        "slos.0.min_run: unknown key"
    )


def test_latency_needs_its_threshold_and_kind_is_required():
    assert errors("slos: [{name: a, objective: 99, sli: {kind: latency}}]") == (
        "slos.yaml:\nslos.0.sli.latency.threshold_seconds: Field required"
    )
    assert errors("slos: [{name: a, objective: 99, sli: {threshold_usd: 1}}]") == (
        "slos.yaml:\nslos.0.sli: missing 'kind' (one of: success, quality, latency, cost, probe)"
    )
    assert errors("slos: [{name: a, objective: 99, sli: {kind: cost, threshold_usd: 0}}]") == (
        "slos.yaml:\nslos.0.sli.cost.threshold_usd: Input should be greater than 0"
    )


def test_regex_matchers_are_checked_for_prometheus():
    assert errors("slos: [{name: a, objective: 99, sli: {kind: success}, match: {agent: 'sup(port'}}]") == (
        "slos.yaml:\nslos.0.match.agent: Value error, 'sup(port' is not a valid regex: "
        "missing ), unterminated subpattern at position 3"
    )
    assert errors("slos: [{name: a, objective: 99, sli: {kind: success}, match: {service: '(?!test).*'}}]") == (
        "slos.yaml:\nslos.0.match.service: Value error, '(?!test).*': Prometheus regexes (RE2) have no "
        "lookaround or backreferences"
    )


def test_names_labels_and_document_shape():
    twice = "slos: [{name: a, objective: 99, sli: {kind: success}}, {name: a, objective: 9, sli: {kind: quality}}]"
    assert errors(twice) == "slos.yaml:\nValue error, two SLOs are named 'a'"
    assert errors("slos: [{name: a, objective: 99, sli: {kind: success}, alerting: {labels: {severity: low}}}]") == (
        "slos.yaml:\nslos.0.alerting.labels: Value error, label 'severity' is set by the generator"
    )
    assert errors("slos: [{name: a, objective: 99, sli: {kind: success}, group_by: [agent, agent]}]") == (
        "slos.yaml:\nslos.0.group_by: Value error, a label is listed twice"
    )
    assert errors("slos: []") == "slos.yaml:\nslos: List should have at least 1 item after validation, not 0"
    assert errors("- name: a") == "slos.yaml: the top level must be a mapping with an `slos` list"
    assert errors("slos: [").startswith("slos.yaml: not valid YAML: ")


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SLOError) as raised:
        load_spec(tmp_path / "nope.yaml")
    assert str(raised.value) == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"


# -- generation ----------------------------------------------------------------------------------


def test_burn_factors_scale_with_the_window():
    spec = parse_spec(SPEC)
    slo_28d, slo_30d = spec.slos[0], spec.slos[2]
    assert [slo_30d.burn_factor(p, w) for p, w in ((2, "1h"), (5, "6h"), (10, "1d"), (10, "3d"))] == [
        Decimal("14.4"),
        Decimal(6),
        Decimal(3),
        Decimal(1),
    ]
    factors_28d = [slo_28d.burn_factor(p, w) for p, w in ((2, "1h"), (5, "6h"), (10, "1d"), (10, "3d"))]
    assert factors_28d[:3] == [Decimal("13.44"), Decimal("5.6"), Decimal("2.8")]
    assert round(factors_28d[3], 6) == Decimal("0.933333")
    assert slo_28d.error_budget == Decimal("0.005")


def test_thresholds_become_bucket_boundaries():
    spec = parse_spec(SPEC)
    assert latency_thresholds(spec) == [7.5, 30.0]
    assert cost_thresholds(spec) == [0.25]
    assert [le_label(7.5), le_label(30), le_label(0.25)] == ["7.5", "30.0", "0.25"]


def test_generated_rules_for_a_latency_slo():
    rules = rules_by_name(generate_rules(parse_spec(SPEC)))
    [ratio_1h] = [r for r in rules["slo:sli_error:ratio_rate1h"] if r["labels"]["slo"] == "support-latency"]
    selector = 'service="support-api",agent=~"support|triage"'
    assert ratio_1h["expr"] == (
        "(\n"
        f"  sum by (service, agent) (rate(agentopz_run_duration_seconds_count{{{selector}}}[1h]))\n"
        "  -\n"
        f'  sum by (service, agent) (rate(agentopz_run_duration_seconds_bucket{{{selector},le="7.5"}}[1h]))\n'
        ")\n"
        "/\n"
        "(\n"
        f"  sum by (service, agent) (rate(agentopz_run_duration_seconds_count{{{selector}}}[1h]))\n"
        ")\n"
    )
    [page, ticket] = [r for r in rules["AgentLatencySLOBurn"] if r["labels"]["slo"] == "support-latency"]
    assert page["labels"] == {"severity": "page", "slo": "support-latency", "team": "support"}
    assert page["expr"] == (
        "(\n"
        '  slo:sli_error:ratio_rate1h{slo="support-latency"} / 0.005 > 13.44\n'
        "  and\n"
        '  slo:sli_error:ratio_rate5m{slo="support-latency"} / 0.005 > 13.44\n'
        "  and\n"
        '  slo:sli_events:increase1h{slo="support-latency"} >= 20\n'
        ")\n"
        "or\n"
        "(\n"
        '  slo:sli_error:ratio_rate6h{slo="support-latency"} / 0.005 > 5.6\n'
        "  and\n"
        '  slo:sli_error:ratio_rate30m{slo="support-latency"} / 0.005 > 5.6\n'
        "  and\n"
        '  slo:sli_events:increase6h{slo="support-latency"} >= 20\n'
        ")\n"
    )
    assert ticket["labels"]["severity"] == "ticket"
    assert "2.8x over 1d and 2h or 0.933333x over 3d and 6h" in ticket["annotations"]["description"]
    assert page["annotations"]["runbook_url"] == "http://localhost:9464/runbooks/AgentLatencySLOBurn"
    [period] = [r for r in rules["slo:sli_error:ratio_rate28d"]]
    assert period["expr"] == (
        'sum_over_time(slo:sli_error_events:rate5m{slo="support-latency"}[28d])\n'
        "/\n"
        'sum_over_time(slo:sli_events:rate5m{slo="support-latency"}[28d])\n'
    )


def test_generated_rules_for_success_quality_and_cost():
    rules = rules_by_name(generate_rules(parse_spec(SPEC)))
    [quality_5m] = [r for r in rules["slo:sli_error:ratio_rate5m"] if r["labels"]["slo"] == "all-quality"]
    assert quality_5m["expr"] == (
        "(\n"
        '  sum by (service, agent) (rate(agentopz_runs_total{outcome="quality_failure"}[5m]))\n'
        "  or\n"
        "  sum by (service, agent) (rate(agentopz_runs_total[5m])) * 0\n"
        ")\n"
        "/\n"
        "(\n"
        "  sum by (service, agent) (rate(agentopz_runs_total[5m]))\n"
        ")\n"
    )
    [cost_events] = [r for r in rules["slo:sli_events:increase3d"] if r["labels"]["slo"] == "research-cost"]
    assert cost_events["expr"] == 'sum (increase(agentopz_run_cost_usd_count{agent="research"}[3d]))\n'
    # page: false leaves only the ticket; no min_runs, no traffic condition.
    [cost_alert] = rules["AgentCostSLOBurn"]
    assert cost_alert["labels"] == {"severity": "ticket", "slo": "research-cost"}
    assert "increase" not in cost_alert["expr"]
    assert cost_alert["annotations"]["summary"] == (
        "The agents of this SLO are burning the research-cost error budget steadily "
        '({{ printf "%.1f" $value }}x the sustainable rate)'
    )
    assert [r["expr"] for r in rules["slo:objective:ratio"]] == [
        "vector(0.995)",
        "vector(0.99)",
        "vector(0.98)",
        "vector(0.9)",
    ]
    spec = parse_spec("slos: [{name: ok, objective: 99.9, sli: {kind: success}}]")
    success = rules_by_name(generate_rules(spec))
    assert success["slo:error_budget:ratio"][0]["expr"] == "vector(0.001)"
    assert 'rate(agentopz_runs_total{outcome!="success"}[2h])' in success["slo:sli_error:ratio_rate2h"][0]["expr"]


def test_generated_rules_pass_promtool(tmp_path):
    promtool = require_binary("promtool")
    path = tmp_path / "rules.yaml"
    path.write_text(render_rules(parse_spec(SPEC), "slos.yaml"))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # Per SLO 14 SLI and 6 period rules; 7 alerts (research-cost has no page).
    assert "SUCCESS: 87 rules found" in result.stdout


# -- committed files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "rules"),
    [
        (ALERT_RULES / "slos.yaml", ALERT_RULES / "slo-rules.yaml"),
        (EXAMPLES / "slos.yaml", EXAMPLES / "slo-rules.yaml"),
    ],
    ids=["shipped", "examples"],
)
def test_committed_rules_are_what_the_generator_makes(spec, rules):
    generated = render_rules(load_spec(spec), spec.name)
    assert rules.read_text() == generated, (
        f"{rules.relative_to(ROOT)} is stale: run agentopz-otel slo generate {spec.relative_to(ROOT)} "
        f"-o {rules.relative_to(ROOT)}"
    )


def test_commented_examples_in_the_shipped_file_are_the_tested_examples():
    lines = (ALERT_RULES / "slos.yaml").read_text().splitlines()
    examples = [line[4:] for line in lines if re.match(r"^  # (- |  )", line)]
    uncommented = yaml.safe_load("\n".join(examples))
    assert [slo["name"] for slo in uncommented] == [
        "support-success",
        "support-quality",
        "checkout-latency",
        "research-cost",
    ]
    assert uncommented == yaml.safe_load((EXAMPLES / "slos.yaml").read_text())["slos"]
    assert {slo.sli.kind for slo in load_spec(EXAMPLES / "slos.yaml").slos} == {"success", "quality", "latency", "cost"}


# -- CLI -------------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentopz_otel", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_generate_prints_or_writes_the_rules(tmp_path):
    spec = tmp_path / "slos.yaml"
    spec.write_text(SPEC)
    printed = cli("slo", "generate", str(spec))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == render_rules(parse_spec(SPEC), "slos.yaml")
    out = tmp_path / "out.yaml"
    written = cli("slo", "generate", str(spec), "-o", str(out))
    assert (written.returncode, written.stdout) == (0, "")
    assert out.read_text() == printed.stdout


def test_cli_validate(tmp_path):
    spec = tmp_path / "slos.yaml"
    spec.write_text(SPEC)
    result = cli("slo", "validate", str(spec))
    assert result.returncode == 0
    assert result.stdout == (
        f"{spec}: valid (4 SLOs: support-latency, research-cost, all-quality, cheap-latency)\n"
        "latency thresholds (bucket boundaries): 7.5, 30\n"
        "cost thresholds (bucket boundaries): 0.25\n"
    )
    spec.write_text("slos: [{name: a, objective: 99, sli: {kind: success}, colour: red}]")
    bad = cli("slo", "validate", str(spec))
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == f"agentopz-otel: invalid SLO file:\n{spec}:\nslos.0.colour: unknown key\n"
    assert cli("slo", "generate", str(spec)).returncode == 2


# -- runs config -----------------------------------------------------------------------------------

RUNS_CONFIG = """
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:4317"}}}}}}
processors:
  normalize: {{}}
  runs: {{slo_file: "{slo_file}", duration_buckets: [1, 60], cost_buckets: [0.5]}}
exporters:
  prometheus: {{}}
service:
  pipelines:
    traces: {{receivers: [otlp], processors: [normalize, runs], exporters: [prometheus]}}
"""


def test_runs_config_adds_slo_thresholds_to_its_buckets(tmp_path):
    spec = tmp_path / "slos.yaml"
    spec.write_text(SPEC)
    config = parse_config(RUNS_CONFIG.format(slo_file=spec))
    runs = config.processors["runs"].config
    assert runs.duration_buckets == [1, 7.5, 30, 60]
    assert runs.cost_buckets == [0.25, 0.5]


def test_runs_config_reports_a_bad_slo_file(tmp_path):
    spec = tmp_path / "slos.yaml"
    spec.write_text("slos: [{name: a, objective: 99, sli: {kind: latency}}]")
    with pytest.raises(ConfigError) as raised:
        parse_config(RUNS_CONFIG.format(slo_file=spec))
    assert str(raised.value) == (
        f"processors.runs: Value error, {spec}:\nslos.0.sli.latency.threshold_seconds: Field required"
    )


# -- probe SLIs ---------------------------------------------------------------------------------


def test_a_probe_slo_counts_probes_by_agent_only():
    spec = parse_spec("slos: [{name: reach, match: {agent: 'support.*'}, objective: 99.5, sli: {kind: probe}}]")
    [slo] = spec.slos
    assert slo.group_by == ["agent"]
    rules = rules_by_name(generate_rules(spec))
    [ratio] = rules["slo:sli_error:ratio_rate5m"]
    assert ratio["expr"] == (
        "(\n"
        '  sum by (agent) (rate(agentopz_probe_results_total{agent=~"support.*",reason!="success"}[5m]))\n'
        "  or\n"
        '  sum by (agent) (rate(agentopz_probe_results_total{agent=~"support.*"}[5m])) * 0\n'
        ")\n/\n(\n"
        '  sum by (agent) (rate(agentopz_probe_results_total{agent=~"support.*"}[5m]))\n'
        ")\n"
    )
    [page, _] = rules["AgentProbeSLOBurn"]
    assert page["labels"] == {"severity": "page", "slo": "reach"}
    assert "good probes over 30d" in page["annotations"]["description"]
    pooled = parse_spec("slos: [{name: reach, group_by: [], objective: 99, sli: {kind: probe}}]")
    assert pooled.slos[0].group_by == []


def test_a_probe_slo_has_no_service_label():
    assert errors("slos: [{name: a, match: {service: api}, objective: 99, sli: {kind: probe}}]") == (
        "slos.yaml:\nslos.0: Value error, a probe SLI has no service label: match on agent only"
    )
    assert errors("slos: [{name: a, group_by: [service, agent], objective: 99, sli: {kind: probe}}]") == (
        "slos.yaml:\nslos.0: Value error, a probe SLI has no service label: group_by [agent] or []"
    )
