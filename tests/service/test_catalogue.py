"""The catalogue of public names (agentopz_otel/telemetry.yaml) against the code, the running service,
the rules, the dashboards, the runbooks, the console and the README."""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import ROOT as REPO
from support.service import every_component_body

from agentopz_otel import catalogue
from agentopz_otel.components import Context
from agentopz_otel.config import parse_config
from agentopz_otel.exporters.prometheus import TOKEN_TYPES
from agentopz_otel.extensions.alertmanager_webhook import OUTCOMES as WEBHOOK_OUTCOMES
from agentopz_otel.extensions.canary_analysis import VERDICTS as ANALYSIS_VERDICTS
from agentopz_otel.extensions.canary_analysis.engine import GUARDS
from agentopz_otel.extensions.rollouts.extension import GAUGE_STATES
from agentopz_otel.extensions.rollouts.model import ACTOR_KINDS
from agentopz_otel.metrics import Counter, Gauge, Histogram, Registry
from agentopz_otel.processors import cost
from agentopz_otel.records import (
    ABANDONED,
    CHECK_ERROR,
    FAIL,
    OUTCOMES,
    PASS,
    QUALITY_FAILURE,
    SUCCESS,
    UNKNOWN,
)
from agentopz_otel.service import Service
from agentopz_otel.slo import ALERT_NAMES
from agentopz_otel.spans import (
    STATUS_CLIENT_ERROR,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_RATE_LIMITED,
    STATUS_SERVER_ERROR,
    STATUS_TIMEOUT,
)

PACKAGE = REPO / "agentopz_otel"
KINDS = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
RECORDED = re.compile(r"(?:[a-z_]+:agentopz_[a-z_]+|agentopz:[a-z_]+):[a-z0-9_]+")
NAME = re.compile(r"agentopz_[a-z_]+\*?")


def test_the_catalogue_follows_its_schema_and_its_references_resolve():
    assert catalogue.problems() == []
    assert len(catalogue.metrics()) == 65
    assert catalogue.metric("agentopz_runs_total") == catalogue.MetricSpec(
        name="agentopz_runs_total",
        type="counter",
        unit="runs",
        help="Finished agent runs by outcome.",
        component="processor/runs",
        labels=("service", "agent", "prompt_version", "outcome"),
        values={"outcome": "outcome"},
        capped=True,
    )


def test_a_broken_catalogue_is_refused_with_the_place_and_the_reason():
    broken = copy.deepcopy(catalogue.document())
    broken["metrics"][0]["labels"] = [*broken["metrics"][0]["labels"], "user_id"]
    broken["metrics"][1]["values"] = {"token_type": "token_types"}
    broken["span_attributes"].append(dict(broken["span_attributes"][0]))
    assert catalogue.problems(broken) == [
        "span_attributes: agentopz.cost.usd is declared twice",
        "metrics: agentopz_llm_calls_total: label 'user_id' is not declared under labels",
        "metrics: agentopz_llm_tokens_total: enum 'token_types' is not declared under enums",
    ]
    del broken["metrics"][2]["help"]
    broken["metrics"][3]["type"] = "summary"
    assert catalogue.problems(broken) == [
        "metrics/2: 'help' is a required property",
        "metrics/3/type: 'summary' is not one of ['counter', 'gauge', 'histogram']",
    ]


def test_an_undeclared_metric_cannot_be_registered():
    with pytest.raises(KeyError, match=r"'agentopz_nope_total' is not declared in agentopz_otel/telemetry\.yaml"):
        Registry().metric("agentopz_nope_total")
    with pytest.raises(ValueError, match="histogram agentopz_run_steps needs buckets"):
        Registry().metric("agentopz_run_steps")


def test_value_sets_the_code_reads_from_the_catalogue_are_the_names_on_the_wire():
    """Pinned here: renaming or reordering a value in the catalogue is a breaking change."""
    assert OUTCOMES == (
        "success",
        "quality_failure",
        "llm_error",
        "tool_error",
        "budget_exceeded",
        "timeout",
        "abandoned",
        "error",
    )
    assert (SUCCESS, QUALITY_FAILURE, ABANDONED) == ("success", "quality_failure", "abandoned")
    assert (PASS, FAIL, UNKNOWN, CHECK_ERROR) == ("pass", "fail", "unknown", "error")
    assert TOKEN_TYPES == ("input", "output", "cache_read", "cache_write", "reasoning")
    assert (STATUS_OK, STATUS_RATE_LIMITED, STATUS_TIMEOUT, STATUS_SERVER_ERROR, STATUS_CLIENT_ERROR, STATUS_ERROR) == (
        "ok",
        "rate_limited",
        "timeout",
        "server_error",
        "client_error",
        "error",
    )
    assert catalogue.enum("tool_call_status") == (STATUS_OK, STATUS_ERROR)
    assert (
        cost.SOURCE_CATALOG,
        cost.SOURCE_CATALOG_MODEL_ONLY,
        cost.SOURCE_OVERRIDE,
        cost.SOURCE_REPORTED,
        cost.SOURCE_UNKNOWN,
    ) == ("catalog", "catalog_model_only", "override", "reported", "unknown")
    assert WEBHOOK_OUTCOMES == ("acted", "repeated", "ignored", "failed")
    assert ANALYSIS_VERDICTS == ("pass", "fail", "inconclusive")
    assert GUARDS == ("quality", "cost", "duration", "hard_limits", "score")
    assert GAUGE_STATES == ("none", "progressing", "paused", "rolled_back", "promoted", "disabled")
    assert ACTOR_KINDS == ("user", "analysis", "alert")


def test_every_family_registered_with_every_component_on_is_the_catalogues(tmp_path):
    """In process: name, type, help, label names and whether labels are capped, for every family the
    components register when they are built."""
    config = parse_config(
        every_component_body(tmp_path / "state.sqlite").format(grpc_port=0, http_port=0, admin_port=0)
    )

    async def families() -> dict[str, tuple]:
        service = Service(config)
        return {
            f.name: (KINDS[f.kind], f.documentation, f.labelnames, f._max_series is not None or not f.labelnames)
            for f in service.metrics.families
        }

    registered = asyncio.run(families())
    declared = {
        spec.name: (spec.type, spec.help, spec.labels, spec.capped or not spec.labels)
        for spec in catalogue.metrics().values()
    }
    # The connection gauges of the HTTP listeners are registered when the listeners start (below).
    started_later = {"agentopz_http_connections", "agentopz_http_connections_closed_total"}
    assert registered == {name: spec for name, spec in declared.items() if name not in started_later}


def test_each_metric_is_registered_by_the_component_the_catalogue_names(tmp_path):
    """Each component built alone, with a registry of its own: the families it registers are the ones
    the catalogue says it owns (the service's own, the overflow counter and the HTTP listeners', aside)."""
    config = parse_config(
        every_component_body(tmp_path / "state.sqlite").format(grpc_port=0, http_port=0, admin_port=0)
    )
    components = [
        *(config.extensions[extension_id] for extension_id in config.service.extensions),
        *config.receivers.values(),
        *config.processors.values(),
        *config.exporters.values(),
    ]

    async def owners() -> dict[str, str]:
        extensions: dict = {}
        found = {}
        for component in components:
            context = Context(metrics=Registry(), extensions=extensions)
            created = component.factory.create(component.id, component.config, context)
            if component.factory.kind == "extension":
                extensions[component.id] = created
            for family in context.metrics.families[1:]:  # [0] is every registry's overflow counter
                found[family.name] = f"{component.factory.kind}/{component.factory.type}"
        return found

    assert asyncio.run(owners()) == {
        spec.name: spec.component for spec in catalogue.metrics().values() if spec.component != "service"
    }


def test_the_running_service_exposes_exactly_the_catalogue(start_service, tmp_path):
    service = start_service(every_component_body(tmp_path / "state.sqlite"))
    exposed = {family.name: family.type for family in text_string_to_metric_families(service.metrics_text())}
    # The text format names a counter family without its _total.
    declared = {
        spec.name.removesuffix("_total") if spec.type == "counter" else spec.name: spec.type
        for spec in catalogue.metrics().values()
    }
    assert exposed == declared


def declared_or_derived(name: str) -> bool:
    metrics = catalogue.metrics()
    if name.endswith("*"):  # a family of names in prose: `agentopz_llm_*`
        return any(metric.startswith(name[:-1]) for metric in metrics)
    if name in catalogue.public_names():
        return True
    return any(
        name.endswith(suffix)
        and metrics.get(name.removesuffix(suffix), None) is not None
        and metrics[name.removesuffix(suffix)].type == "histogram"
        for suffix in HISTOGRAM_SERIES
    )


def undeclared_names(text: str) -> set[str]:
    """The agentopz_ names in `text` that the catalogue does not declare (recorded series included)."""
    found = {name for name in RECORDED.findall(text) if name not in catalogue.recording_rules()}
    rest = RECORDED.sub(" ", text)
    return found | {name for name in NAME.findall(rest) if not declared_or_derived(name)}


SCANNED = (
    *sorted((REPO / "dashboards").rglob("*.json")),
    REPO / "dashboards" / "build.py",
    *sorted((REPO / "alert-rules").rglob("*.y*ml")),
    REPO / "alert-rules" / "README.md",
    *sorted((REPO / "docs" / "runbooks").glob("*.md")),
    PACKAGE / "slo.py",
    *sorted((PACKAGE / "extensions" / "console").rglob("*.*")),
    REPO / "README.md",
)


@pytest.mark.parametrize("path", SCANNED, ids=lambda path: str(path.relative_to(REPO)))
def test_every_agentopz_name_in_rules_dashboards_runbooks_console_and_readme_is_declared(path):
    assert undeclared_names(path.read_text(encoding="utf-8")) == set()


def test_the_name_scan_finds_what_is_not_declared():
    text = (
        "rate(agentopz_runs_total[5m]) agentopz_run_cost_usd_bucket agentopz_llm_* agentopz_runs_totl "
        "agentopz_llm_calls_total_bucket service_agent_prompt_version:agentopz_runs:increase6h "
        "agent:agentopz_runs:rate5m "
        "agentopz_nothing_*"
    )
    assert undeclared_names(text) == {
        "agentopz_runs_totl",
        "agentopz_llm_calls_total_bucket",
        "agent:agentopz_runs:rate5m",
        "agentopz_nothing_*",
    }


def rule_names(path: Path, key: str) -> set[str]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {rule[key] for group in document["groups"] for rule in group["rules"] if key in rule}


def test_alerts_and_recorded_series_of_the_shipped_rules_are_the_catalogues():
    declared = catalogue.alerts()
    shipped = REPO / "alert-rules" / "agentopz-alerts.yaml"
    assert rule_names(shipped, "alert") == {name for name, alert in declared.items() if alert["rules"] != "slo"}
    assert all(alert["rules"] in ("slo", "alert-rules/agentopz-alerts.yaml") for alert in declared.values())
    assert {name for name, alert in declared.items() if alert["rules"] == "slo"} == set(ALERT_NAMES.values())
    assert rule_names(REPO / "alert-rules" / "slo-rules.yaml", "alert") <= set(ALERT_NAMES.values())
    triage = REPO / "alert-rules" / "triage-rules.yaml"
    recorded = {name for path in (shipped, triage) for name in rule_names(path, "record") if "agentopz" in name}
    assert recorded == set(catalogue.recording_rules())


def test_every_alert_has_its_runbook_in_the_docs_and_in_the_console():
    for name, alert in catalogue.alerts().items():
        assert alert["runbook"] == f"docs/runbooks/{name}.md"
        assert (REPO / alert["runbook"]).is_file(), name
        assert (PACKAGE / "extensions" / "console" / "runbooks" / f"{name}.md").is_file(), name


def test_every_agentopz_attribute_in_the_code_is_declared():
    literal = re.compile(r"[\"'](agentopz\.[a-z_.]+)[\"']")
    found = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in literal.findall(path.read_text(encoding="utf-8"))
        if not name.endswith((".yaml", ".sqlite", ".example.com"))
    }
    assert found == {*catalogue.span_attributes(), "agentopz.run"}
    assert "agentopz.run" in catalogue.public_names()


def test_the_readme_metrics_table_is_the_catalogues():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert catalogue.with_metrics_table(text) == text
    assert "| `agentopz_runs_total` | counter | runs | service, agent, prompt_version, outcome (`success`, " in text


def test_the_readme_command_rewrites_a_stale_table_and_checks_a_current_one(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{catalogue.README_START}\n| stale |\n{catalogue.README_END}\n\nafter\n")
    command = [sys.executable, "-m", "agentopz_otel", "catalogue", "readme", str(readme)]
    stale = subprocess.run([*command, "--check"], capture_output=True, text=True)
    assert (stale.returncode, readme.read_text().count("stale")) == (1, 1)
    rewritten = subprocess.run(command, capture_output=True, text=True)
    assert rewritten.returncode == 0
    assert (
        readme.read_text()
        == f"# x\n\n{catalogue.README_START}\n{catalogue.metrics_table()}{catalogue.README_END}\n\nafter\n"
    )
    assert subprocess.run([*command, "--check"]).returncode == 0
    readme.write_text("no markers\n")
    missing = subprocess.run(command, capture_output=True, text=True)
    assert missing.returncode == 2
    assert "no metrics table block" in missing.stderr
