#!/usr/bin/env python3
"""Generate the Grafana dashboards in this folder from one description, so they stay consistent.

    python dashboards/build.py          # write the dashboard JSON files
    python dashboards/build.py --check  # exit 1 if a committed file differs from what this writes

Every panel queries the `${datasource}` variable (no data source uid is written anywhere), has a unit
and a description. Template variables: datasource, agent and prompt_version on every dashboard
(multi-select, All = `.*`), plus slo on the SLO dashboard. The SLO panels read the recording rules
of alert-rules/slo-rules.yaml (`agentopz-otel slo generate`): slo:sli_error:ratio_rate<window>,
slo:error_budget:ratio, slo:objective:ratio, slo:current_burn_rate:ratio and
slo:period_error_budget_remaining:ratio, labelled slo, service and agent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
TAG = "agentopz"
RUNS = "agentopz_runs_total"
RUN_COST = "agentopz_run_cost_usd_total"
PROBES = "agentopz_probe_results_total"
PROBE_OK = 'reason="success"'
PROBE_FAILED = 'reason!="success"'

AGENT = 'agent=~"$agent"'
VERSION = 'prompt_version=~"$prompt_version"'
RUN = f"{AGENT},{VERSION}"
RI = "$__rate_interval"
RANGE = "$__range"

NOT_SUCCESS = 'outcome!="success"'
NOT_OK = 'status!="ok"'
CACHE_READ = 'token_type="cache_read"'
INPUT = 'token_type="input"'
OUTPUT = 'token_type="output"'

RUNS_PER_MIN = "suffix: runs/min"
PER_SECOND = "suffix: /s"
BURN = "suffix: x"
# SLO burn-rate thresholds for a 30-day period (Google SRE workbook): (severity, long, short, factor).
BURN_ALERTS = (
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6),
    ("ticket", "1d", "2h", 3),
    ("ticket", "3d", "6h", 1),
)
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


# -- building blocks ------------------------------------------------------------------------------


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, exemplar: bool = False) -> dict:
    return {
        "refId": ref,
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if instant else "time_series",
        "exemplar": exemplar,
    }


def targets(*items: tuple[str, str] | dict, instant: bool = False) -> list[dict]:
    """Targets from (expr, legend) pairs (refIds A, B, ...) or ready target dicts."""
    built = []
    for index, item in enumerate(items):
        ref = chr(ord("A") + index)
        if isinstance(item, dict):
            built.append({**item, "refId": ref})
        else:
            expr, legend = item
            built.append(target(expr, legend, ref, instant))
    return built


def sel(metric: str, *matchers: str) -> str:
    """metric{matcher,...}"""
    return f"{metric}{{{','.join(matchers)}}}"


def thresholds(*steps: tuple[float | None, str]) -> dict:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


GREEN = thresholds((None, "green"))
RATIO_GOOD = thresholds((None, "red"), (0.95, "orange"), (0.99, "green"))


def base(kind: str, title: str, description: str, unit: str, panel_targets: list[dict], **extra: Any) -> dict:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "palette-classic"}, "thresholds": GREEN}
    defaults.update(extra.pop("defaults", {}))
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": panel_targets,
        "fieldConfig": {"defaults": defaults, "overrides": extra.pop("overrides", [])},
        "options": extra.pop("options", {}),
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    unit: str,
    panel_targets: list[dict],
    stack: bool = False,
    w: int = 12,
    h: int = 8,
    **extra: Any,
) -> dict:
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 25 if stack else 8,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisSoftMin": 0,
    }
    defaults = {"custom": custom, **extra.pop("defaults", {})}
    panel = base(
        "timeseries",
        title,
        description,
        unit,
        panel_targets,
        defaults=defaults,
        options={
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **extra,
    )
    panel["gridPos"] = {"w": w, "h": h}
    return panel


def stat(title: str, description: str, unit: str, expr: str, steps: dict = GREEN, w: int = 4, **extra: Any) -> dict:
    panel = base(
        "stat",
        title,
        description,
        unit,
        targets((expr, "")),
        defaults={"thresholds": steps, "color": {"mode": "thresholds"}, **extra.pop("defaults", {})},
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
        **extra,
    )
    panel["gridPos"] = {"w": w, "h": 4}
    return panel


def table(
    title: str,
    description: str,
    columns: list[tuple[str, str, str]],
    keys: list[str],
    unit: str = "short",
    w: int = 24,
    h: int = 8,
    key_links: dict[str, list[dict]] | None = None,
    column_options: dict[str, dict] | None = None,
) -> dict:
    """An instant table: one row per value of `keys`, one column per (name, expr, unit)."""
    overrides = []
    rename = {}
    for index, (name, _, column_unit) in enumerate(columns):
        rename[f"Value #{chr(ord('A') + index)}"] = name
        properties = [{"id": "unit", "value": column_unit}]
        for key, value in (column_options or {}).get(name, {}).items():
            properties.append({"id": key, "value": value})
        overrides.append({"matcher": {"id": "byName", "options": name}, "properties": properties})
    for key, links in (key_links or {}).items():
        overrides.append({"matcher": {"id": "byName", "options": key}, "properties": [{"id": "links", "value": links}]})
    index_by_name = {key: position for position, key in enumerate(keys)}
    index_by_name.update({name: len(keys) + position for position, (name, _, _) in enumerate(columns)})
    panel = base(
        "table",
        title,
        description,
        unit,
        [target(expr, "", chr(ord("A") + index), instant=True) for index, (_, expr, _) in enumerate(columns)],
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}, "color": {"mode": "thresholds"}},
        overrides=overrides,
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": rename,
                    "indexByName": index_by_name,
                },
            },
        ],
    )
    panel["gridPos"] = {"w": w, "h": h}
    return panel


def alerts_table(title: str, description: str, expr: str, w: int = 24, h: int = 6) -> dict:
    panel = base(
        "table",
        title,
        description,
        "short",
        [target(expr, "", "A", instant=True)],
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        transformations=[
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}, "renameByName": {}},
            }
        ],
    )
    panel["gridPos"] = {"w": w, "h": h}
    return panel


def bargauge(title: str, description: str, unit: str, panel_targets: list[dict], w: int = 12, h: int = 8, **extra):
    panel = base(
        "bargauge",
        title,
        description,
        unit,
        panel_targets,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "minVizWidth": 0,
            "minVizHeight": 10,
        },
        **extra,
    )
    panel["gridPos"] = {"w": w, "h": h}
    return panel


def piechart(title: str, description: str, unit: str, panel_targets: list[dict], w: int = 8, h: int = 8) -> dict:
    panel = base(
        "piechart",
        title,
        description,
        unit,
        panel_targets,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "pieType": "donut",
            "displayLabels": ["percent"],
            "legend": {"showLegend": True, "displayMode": "table", "placement": "right", "values": ["value"]},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )
    panel["gridPos"] = {"w": w, "h": h}
    return panel


def heatmap(title: str, description: str, y_unit: str, expr: str, w: int = 12, h: int = 8) -> dict:
    panel = base(
        "heatmap",
        title,
        description,
        "short",
        [{**target(expr, "{{le}}", "A"), "format": "heatmap", "exemplar": True}],
        options={
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": y_unit},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange"},
            "rowsFrame": {"layout": "auto"},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
            "legend": {"show": True},
        },
    )
    panel["gridPos"] = {"w": w, "h": h}
    return panel


def ratio(bad: str, total: str, by: str) -> str:
    """bad/total per `by`, 0 (not missing) where nothing was bad. `bad` and `total` are range selectors."""
    return f"(sum by ({by}) (rate({bad})) or sum by ({by}) (rate({total})) * 0)\n/\nsum by ({by}) (rate({total}))"


def increase_ratio(good: str, total: str, by: str, window: str = RANGE) -> str:
    """good/total over `window` per `by`; 0 where nothing was good."""
    return (
        f"(sum by ({by}) (increase({good}[{window}])) or sum by ({by}) (increase({total}[{window}])) * 0)\n"
        f"/\nsum by ({by}) (increase({total}[{window}]))"
    )


def quantile(q: float, metric: str, selector: str, by: str = "", window: str = RI) -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[{window}])))"


def mean(metric: str, selector: str, by: str, window: str = RI, offset: str = "") -> str:
    shift = f" offset {offset}" if offset else ""
    return (
        f"sum by ({by}) (rate({metric}_sum{{{selector}}}[{window}]{shift}))\n"
        f"/\nsum by ({by}) (rate({metric}_count{{{selector}}}[{window}]{shift}))"
    )


def variables(slo: bool = False) -> list[dict]:
    items = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
        },
        _query_variable("agent", "Agent", "label_values(agentopz_runs_total, agent)"),
        _query_variable(
            "prompt_version", "Prompt version", 'label_values(agentopz_runs_total{agent=~"$agent"}, prompt_version)'
        ),
    ]
    if slo:
        items.append(_query_variable("slo", "SLO", "label_values(slo:objective:ratio, slo)"))
    return items


def _query_variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": f"PrometheusVariableQueryEditor-{name}"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
        "skipUrlSync": False,
    }


def layout(panels: list[dict]) -> list[dict]:
    """Place panels left to right, wrapping at 24 columns; give each a unique id."""
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        grid = panel["gridPos"]
        if x + grid["w"] > 24:
            x, y, row_height = 0, y + row_height, 0
        grid.update({"x": x, "y": y})
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        panel["id"] = panel_id
    return panels


def dashboard(uid: str, title: str, description: str, tags: list[str], panels: list[dict], slo: bool = False) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG, *tags],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "schemaVersion": 39,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [
            {
                "title": "Agent Opz",
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": variables(slo)},
        "panels": layout(panels),
    }


AGENT_LINK = [
    {
        "title": "Agent detail",
        "url": "/d/agentopz-agent/agentopz-agent-detail?var-agent=${__value.raw}"
        "&${datasource:queryparam}&${__url_time_range}",
    }
]


# -- dashboards -----------------------------------------------------------------------------------


def fleet() -> dict:
    runs = f"agentopz_runs_total{{{AGENT}}}"
    good = f'agentopz_runs_total{{{AGENT},outcome="success"}}'
    checks = f'agentopz_quality_checks_total{{{AGENT},verdict=~"pass|fail"}}'
    passed = f'agentopz_quality_checks_total{{{AGENT},verdict="pass"}}'
    cost = f"agentopz_llm_cost_usd_total{{{AGENT}}}"
    wasted = sel(RUN_COST, AGENT, NOT_SUCCESS)
    panels = [
        stat(
            "Good-run ratio",
            "Share of runs that ended with outcome success over the time range, all selected agents. A good run is "
            "a success: quality failures, errors, timeouts, budget breaches and abandoned runs all count as bad.",
            "percentunit",
            f"sum(increase({good}[{RANGE}])) / sum(increase({runs}[{RANGE}]))",
            RATIO_GOOD,
        ),
        stat(
            "Runs per minute",
            "Finished runs per minute, all selected agents.",
            RUNS_PER_MIN,
            f"sum(rate({runs}[{RI}])) * 60",
        ),
        stat(
            "LLM spend per hour",
            "LLM spend in USD per hour at the current rate (priced calls only; see the Cost dashboard for "
            "unpriced calls).",
            "currencyUSD",
            f"sum(rate({cost}[{RI}])) * 3600",
        ),
        stat(
            "p95 run latency",
            "95th percentile run duration (root span) over the selected agents.",
            "s",
            quantile(0.95, "agentopz_run_duration_seconds", AGENT),
        ),
        stat(
            "Quality pass rate",
            "Share of quality check verdicts that passed over the time range (unknown verdicts excluded).",
            "percentunit",
            f"sum(increase({passed}[{RANGE}])) / sum(increase({checks}[{RANGE}]))",
            RATIO_GOOD,
        ),
        stat(
            "Wasted spend per hour",
            "Cost in USD per hour, at the current rate, of runs that did not succeed (agentopz_run_cost_usd_total "
            'with outcome!="success"): money spent on runs that failed.',
            "currencyUSD",
            f"sum(rate({wasted}[{RI}])) * 3600",
        ),
        stat(
            "Agents failing probes",
            "Agents whose last probe failed (agentopz_probe_success == 0, from the probes extension); 0 when no "
            "agent is probed.",
            "short",
            f"count(max by (agent) (agentopz_probe_success{{{AGENT}}}) == 0) or vector(0)",
            thresholds((None, "green"), (1, "red")),
        ),
        stat(
            "Alerts firing now",
            'Alerts firing now (ALERTS{alertstate="firing"}, every rule group Prometheus evaluates).',
            "short",
            'sum(ALERTS{alertstate="firing"}) or vector(0)',
            thresholds((None, "green"), (1, "red")),
        ),
        table(
            "Agents",
            "One row per agent over the time range: good-run ratio, throughput, spend, latency, quality, and "
            "what is in flight now. Click an agent to open its detail dashboard.",
            [
                ("Good-run ratio", increase_ratio(good, runs, "service, agent"), "percentunit"),
                ("Runs/min", f"sum by (service, agent) (rate({runs}[{RANGE}])) * 60", RUNS_PER_MIN),
                ("Spend/hour", f"sum by (service, agent) (rate({cost}[{RANGE}])) * 3600", "currencyUSD"),
                (
                    "p95 latency",
                    quantile(0.95, "agentopz_run_duration_seconds", AGENT, "service, agent", RANGE),
                    "s",
                ),
                ("Quality pass rate", increase_ratio(passed, checks, "service, agent"), "percentunit"),
                ("In flight", f"sum by (service, agent) (agentopz_runs_in_flight{{{AGENT}}})", "short"),
                (
                    "Costliest in flight",
                    f"max by (service, agent) (agentopz_in_flight_run_max_cost_usd{{{AGENT}}})",
                    "currencyUSD",
                ),
            ],
            ["service", "agent"],
            key_links={"agent": AGENT_LINK},
            column_options={
                "Good-run ratio": {"thresholds": RATIO_GOOD, "custom.cellOptions": {"type": "color-text"}},
                "Quality pass rate": {"thresholds": RATIO_GOOD, "custom.cellOptions": {"type": "color-text"}},
            },
        ),
        timeseries(
            "Good-run ratio vs SLO objective",
            "Share of runs ending with outcome success, per agent, against the objective of each SLO "
            "(slo:objective:ratio from alert-rules/slo-rules.yaml; no objective line when those rules are not loaded).",
            "percentunit",
            targets(
                (f"1 - ({ratio(f'{sel(RUNS, AGENT, NOT_SUCCESS)}[{RI}]', f'{runs}[{RI}]', 'agent')})", "{{agent}}"),
                ("max by (slo) (slo:objective:ratio)", "objective {{slo}}"),
            ),
            defaults={"max": 1},
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "objective.*"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                    ],
                }
            ],
        ),
        timeseries(
            "Error ratio vs error budget",
            "The same SLI as an error ratio (1 - good-run ratio) per agent, against each SLO's error budget "
            "(1 - objective); easier to read near 100%.",
            "percentunit",
            targets(
                (ratio(f"{sel(RUNS, AGENT, NOT_SUCCESS)}[{RI}]", f"{runs}[{RI}]", "agent"), "{{agent}}"),
                ("max by (slo) (slo:error_budget:ratio)", "error budget {{slo}}"),
            ),
        ),
        timeseries(
            "Runs per minute by agent",
            "Finished runs per minute, per agent.",
            RUNS_PER_MIN,
            targets((f"sum by (agent) (rate({runs}[{RI}])) * 60", "{{agent}}")),
        ),
        timeseries(
            "LLM spend per hour by agent",
            "LLM spend in USD per hour at the current rate, per agent.",
            "currencyUSD",
            targets((f"sum by (agent) (rate({cost}[{RI}])) * 3600", "{{agent}}")),
            stack=True,
        ),
        timeseries(
            "p95 run latency by agent",
            "95th percentile run duration per agent.",
            "s",
            targets((quantile(0.95, "agentopz_run_duration_seconds", AGENT, "agent"), "{{agent}}")),
        ),
        timeseries(
            "Quality pass rate by agent",
            "Share of quality check verdicts that passed, per agent (configured checks only).",
            "percentunit",
            targets((f"sum by (agent) (rate({passed}[{RI}])) / sum by (agent) (rate({checks}[{RI}]))", "{{agent}}")),
            defaults={"max": 1},
        ),
        timeseries(
            "Runs in flight by agent",
            "Runs in progress now, per agent (summed over replicas).",
            "short",
            targets((f"sum by (agent) (agentopz_runs_in_flight{{{AGENT}}})", "{{agent}}")),
            stack=True,
        ),
        timeseries(
            "Time since last finished run",
            "Seconds since each agent last finished a run: a busy agent whose line climbs has stopped finishing runs.",
            "s",
            targets(
                (
                    f"time() - max by (agent) (agentopz_run_last_finished_timestamp_seconds{{{AGENT}}})",
                    "{{agent}}",
                )
            ),
        ),
        timeseries(
            "Wasted spend per hour by outcome",
            "Cost in USD per hour of runs that did not succeed, by outcome: what failing runs cost before they "
            "failed (AgentWastedSpendUp tickets when it doubles against the same hour a week ago).",
            "currencyUSD",
            targets((f"sum by (outcome) (rate({wasted}[{RI}])) * 3600", "{{outcome}}")),
            stack=True,
        ),
        timeseries(
            "Probe success by agent",
            "Share of the probes of each agent that succeeded (probes extension: the answer was as expected and, "
            "where the probe waits for it, the run it started succeeded).",
            "percentunit",
            targets(
                (ratio(f"{sel(PROBES, AGENT, PROBE_OK)}[{RI}]", f"{sel(PROBES, AGENT)}[{RI}]", "agent"), "{{agent}}")
            ),
            defaults={"max": 1},
        ),
        timeseries(
            "Probe failures by reason",
            "Failed probes per minute by agent and reason: connect_error, timeout, http_error (not reachable); "
            "status, body_too_large, json_path, regex (answered, not as expected); run_failed, run_missing "
            "(answered, but the run it started failed or never arrived).",
            "suffix: probes/min",
            targets(
                (
                    f"sum by (agent, reason) (rate({sel(PROBES, AGENT, PROBE_FAILED)}[{RI}])) * 60",
                    "{{agent}} {{reason}}",
                )
            ),
            stack=True,
        ),
        timeseries(
            "p95 probe duration by agent",
            "95th percentile time from a probe's request to the end of its answer, per agent.",
            "s",
            targets((quantile(0.95, "agentopz_probe_duration_seconds", AGENT, "agent"), "{{agent}}")),
        ),
        alerts_table(
            "Firing alerts",
            "Every alert firing now, with its labels (the SLO burn-rate alerts and the agent and self-monitoring "
            "alerts of alert-rules/).",
            "sum by (alertname, severity, slo, service, agent, model, tool, prompt_version) "
            '(ALERTS{alertstate="firing"})',
        ),
    ]
    return dashboard(
        "agentopz-fleet",
        "Agent Opz / Fleet overview",
        "Every agent at a glance: good-run ratio against the SLO, throughput, spend, latency, quality, in-flight "
        "runs and firing alerts.",
        ["fleet"],
        panels,
    )


def agent_detail() -> dict:
    runs = f"agentopz_runs_total{{{RUN}}}"
    llm = f"agentopz_llm_calls_total{{{AGENT}}}"
    tools = f"agentopz_tool_calls_total{{{AGENT}}}"
    panels = [
        timeseries(
            "Runs by outcome",
            "Finished runs per minute by outcome (success, quality_failure, llm_error, tool_error, budget_exceeded, "
            "timeout, abandoned, error).",
            RUNS_PER_MIN,
            targets((f"sum by (outcome) (rate({runs}[{RI}])) * 60", "{{outcome}}")),
            stack=True,
            w=16,
        ),
        piechart(
            "Outcome mix",
            "Runs by outcome over the time range.",
            "short",
            targets((f"sum by (outcome) (increase({runs}[{RANGE}]))", "{{outcome}}")),
        ),
        timeseries(
            "Cost per run (p50, p95, p99) with exemplars",
            "Run cost quantiles from agentopz_run_cost_usd (runs whose every call was priced). The dots are "
            "exemplars: real runs with their trace_id; click one to open the trace in the trace backend.",
            "currencyUSD",
            targets(
                target(quantile(0.5, "agentopz_run_cost_usd", RUN), "p50", exemplar=True),
                (quantile(0.95, "agentopz_run_cost_usd", RUN), "p95"),
                (quantile(0.99, "agentopz_run_cost_usd", RUN), "p99"),
                (mean("agentopz_run_cost_usd", RUN, "agent"), "mean {{agent}}"),
            ),
        ),
        heatmap(
            "Cost per run distribution",
            "How many runs fell in each cost bucket per interval; exemplars link to traces.",
            "currencyUSD",
            f"sum by (le) (increase(agentopz_run_cost_usd_bucket{{{RUN}}}[{RI}]))",
        ),
        timeseries(
            "Run duration (p50, p95, p99)",
            "Run duration quantiles (root span).",
            "s",
            targets(
                (quantile(0.5, "agentopz_run_duration_seconds", RUN), "p50"),
                (quantile(0.95, "agentopz_run_duration_seconds", RUN), "p95"),
                (quantile(0.99, "agentopz_run_duration_seconds", RUN), "p99"),
            ),
        ),
        timeseries(
            "Tokens by type",
            "LLM tokens per second by type. input includes cache_read and cache_write; output includes reasoning.",
            "suffix: tokens/s",
            targets((f"sum by (token_type) (rate(agentopz_llm_tokens_total{{{AGENT}}}[{RI}]))", "{{token_type}}")),
        ),
        timeseries(
            "LLM calls by model and status",
            "LLM calls per second by model and status (ok, rate_limited, timeout, server_error, client_error, error).",
            PER_SECOND,
            targets((f"sum by (model, status) (rate({llm}[{RI}]))", "{{model}} {{status}}")),
            stack=True,
        ),
        timeseries(
            "LLM error ratio by model",
            "Share of LLM calls that failed, per model (rate limits and upstream errors included).",
            "percentunit",
            targets(
                (ratio(f"{sel('agentopz_llm_calls_total', AGENT, NOT_OK)}[{RI}]", f"{llm}[{RI}]", "model"), "{{model}}")
            ),
        ),
        timeseries(
            "LLM call latency p95 by model",
            "95th percentile LLM call duration per model.",
            "s",
            targets((quantile(0.95, "agentopz_llm_call_duration_seconds", AGENT, "model"), "{{model}}")),
        ),
        timeseries(
            "Tool calls by tool and status",
            "Tool calls per second by tool and status.",
            PER_SECOND,
            targets((f"sum by (tool, status) (rate({tools}[{RI}]))", "{{tool}} {{status}}")),
            stack=True,
        ),
        timeseries(
            "Tool failure ratio by tool",
            "Share of tool calls that failed, per tool.",
            "percentunit",
            targets(
                (
                    ratio(f"{sel('agentopz_tool_calls_total', AGENT, NOT_OK)}[{RI}]", f"{tools}[{RI}]", "tool"),
                    "{{tool}}",
                )
            ),
        ),
        timeseries(
            "Tool call latency p95 by tool",
            "95th percentile tool call duration per tool.",
            "s",
            targets((quantile(0.95, "agentopz_tool_call_duration_seconds", AGENT, "tool"), "{{tool}}")),
        ),
        timeseries(
            "Steps per run",
            "LLM steps per run (p50, p95) and tool calls per run (p95). A climbing p95 is a loop.",
            "short",
            targets(
                (quantile(0.5, "agentopz_run_steps", RUN), "steps p50"),
                (quantile(0.95, "agentopz_run_steps", RUN), "steps p95"),
                (quantile(0.95, "agentopz_run_tool_calls", RUN), "tool calls p95"),
            ),
        ),
        timeseries(
            "In flight: costliest run",
            "Running cost of the most expensive run still in progress, per agent. A line that keeps climbing is a "
            "runaway loop burning money before it ends.",
            "currencyUSD",
            targets((f"max by (agent) (agentopz_in_flight_run_max_cost_usd{{{AGENT}}})", "{{agent}}")),
        ),
        timeseries(
            "In flight: most steps and runs",
            "LLM steps of the longest run still in progress, and runs in progress, per agent.",
            "short",
            targets(
                (f"max by (agent) (agentopz_in_flight_run_max_steps{{{AGENT}}})", "max steps {{agent}}"),
                (f"sum by (agent) (agentopz_runs_in_flight{{{AGENT}}})", "runs {{agent}}"),
            ),
        ),
        timeseries(
            "Quality checks by check and verdict",
            "Quality check verdicts per minute (pass, fail, unknown, error) by check.",
            "suffix: checks/min",
            targets(
                (
                    f"sum by (check, verdict) (rate(agentopz_quality_checks_total{{{RUN}}}[{RI}])) * 60",
                    "{{check}} {{verdict}}",
                )
            ),
            stack=True,
        ),
        timeseries(
            "Evaluator verdicts",
            "Verdicts that evaluators reported (gen_ai.evaluation.result events, annotations) per minute.",
            "suffix: evaluations/min",
            targets(
                (
                    f"sum by (evaluation, verdict) (rate(agentopz_evaluations_total{{{RUN}}}[{RI}])) * 60",
                    "{{evaluation}} {{verdict}}",
                )
            ),
            stack=True,
        ),
    ]
    return dashboard(
        "agentopz-agent",
        "Agent Opz / Agent detail",
        "One agent (or a few): outcomes, cost per run with trace exemplars, tokens, LLM and tool calls, steps, "
        "in-flight runaway cost and quality.",
        ["agent"],
        panels,
    )


def cost() -> dict:
    spend = f"agentopz_llm_cost_usd_total{{{AGENT}}}"
    tokens = f"agentopz_llm_tokens_total{{{AGENT}}}"
    panels = [
        stat(
            "Spend in time range",
            "LLM spend in USD over the selected time range (priced calls).",
            "currencyUSD",
            f"sum(increase({spend}[{RANGE}]))",
        ),
        stat(
            "Spend per hour",
            "LLM spend in USD per hour at the current rate.",
            "currencyUSD",
            f"sum(rate({spend}[{RI}])) * 3600",
        ),
        stat(
            "Projected 30-day spend",
            "The time range's average spend rate extrapolated to 30 days.",
            "currencyUSD",
            f"sum(rate({spend}[{RANGE}])) * 86400 * 30",
        ),
        stat(
            "Mean cost per run",
            "Average cost of the runs that finished in the time range (runs with an unpriced call excluded).",
            "currencyUSD",
            f"sum(increase(agentopz_run_cost_usd_sum{{{RUN}}}[{RANGE}])) / "
            f"sum(increase(agentopz_run_cost_usd_count{{{RUN}}}[{RANGE}]))",
        ),
        stat(
            "Unpriced LLM calls",
            "LLM calls in the time range with no known price: their cost is missing from every spend panel. Add "
            "a cost.overrides entry for the model.",
            "short",
            f"sum(increase(agentopz_llm_unpriced_calls_total[{RANGE}]))",
            thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Cache read share",
            "Share of input tokens served from the provider's prompt cache (cheaper), over the time range.",
            "percentunit",
            f"sum(increase({sel('agentopz_llm_tokens_total', AGENT, CACHE_READ)}[{RANGE}])) / "
            f"sum(increase({sel('agentopz_llm_tokens_total', AGENT, INPUT)}[{RANGE}]))",
        ),
        *(
            timeseries(
                f"Spend per hour by {label}",
                f"LLM spend in USD per hour at the current rate, per {label}.",
                "currencyUSD",
                targets((f"sum by ({label}) (rate({spend}[{RI}])) * 3600", "{{" + label + "}}")),
                stack=True,
                w=8,
            )
            for label in ("agent", "model", "provider")
        ),
        timeseries(
            "Mean cost per run: now vs a week ago",
            "Mean cost per run over the last hour per agent (solid) and the same hour a week ago (dashed). "
            "Empty dashed lines: fewer than 7 days of data.",
            "currencyUSD",
            targets(
                (mean("agentopz_run_cost_usd", RUN, "agent", "1h"), "{{agent}}"),
                (mean("agentopz_run_cost_usd", RUN, "agent", "1h", "7d"), "{{agent}} a week ago"),
            ),
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* a week ago"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
                }
            ],
        ),
        bargauge(
            "Cost per run change vs a week ago",
            "Mean cost per run over the last hour divided by the same hour a week ago, per agent: 1.5 means 50% "
            "more expensive. Empty with fewer than 7 days of data.",
            "percentunit",
            targets(
                (
                    f"({mean('agentopz_run_cost_usd', RUN, 'agent', '1h')})\n/\n"
                    f"({mean('agentopz_run_cost_usd', RUN, 'agent', '1h', '7d')})",
                    "{{agent}}",
                )
            ),
            defaults={"thresholds": thresholds((None, "green"), (1.2, "orange"), (1.5, "red"))},
        ),
        table(
            "Spend by agent and model",
            "LLM spend, calls and tokens over the time range per agent and model.",
            [
                ("Spend", f"sum by (agent, provider, model) (increase({spend}[{RANGE}]))", "currencyUSD"),
                (
                    "Calls",
                    f"sum by (agent, provider, model) (increase(agentopz_llm_calls_total{{{AGENT}}}[{RANGE}]))",
                    "short",
                ),
                (
                    "Input tokens",
                    f"sum by (agent, provider, model) "
                    f"(increase({sel('agentopz_llm_tokens_total', AGENT, INPUT)}[{RANGE}]))",
                    "short",
                ),
                (
                    "Output tokens",
                    f"sum by (agent, provider, model) "
                    f"(increase({sel('agentopz_llm_tokens_total', AGENT, OUTPUT)}[{RANGE}]))",
                    "short",
                ),
            ],
            ["agent", "provider", "model"],
            w=16,
        ),
        alerts_table(
            "Unpriced calls by provider and model",
            "Models with no price (catalogue or override): their calls are counted here and left out of spend.",
            f"sum by (provider, model) (increase(agentopz_llm_unpriced_calls_total[{RANGE}])) > 0",
            w=8,
            h=8,
        ),
        timeseries(
            "Tokens per second by model and type",
            "Token throughput per model and type; cache_read tokens are billed at the cheaper cached rate.",
            "suffix: tokens/s",
            targets((f"sum by (model, token_type) (rate({tokens}[{RI}]))", "{{model}} {{token_type}}")),
        ),
        timeseries(
            "Mean cost per run by agent",
            "Average cost of finished runs per agent at the current rate.",
            "currencyUSD",
            targets((mean("agentopz_run_cost_usd", RUN, "agent"), "{{agent}}")),
        ),
    ]
    return dashboard(
        "agentopz-cost",
        "Agent Opz / Cost",
        "LLM spend by agent, model and provider; cost per run against last week; unpriced calls.",
        ["cost"],
        panels,
    )


def canary_analysis_panels() -> list[dict]:
    """The canary analysis of each agent's rollout: its guards, the evidence against the candidate, the
    runs it has seen and what it decided (README: canary analysis)."""
    verdict = "agentopz_rollout_analysis"
    by = "agent, guard"
    statistic = f"max by ({by}) (agentopz_rollout_analysis_statistic{{{AGENT}}})"
    threshold = f"max by ({by}) (agentopz_rollout_analysis_threshold{{{AGENT}}})"
    guards = [
        (
            "Verdict",
            f'max by ({by}) (2 * {verdict}{{{AGENT},verdict="fail"}}\n'
            f'+ ignoring (verdict) {verdict}{{{AGENT},verdict="pass"}})',
            "short",
        ),
        ("Statistic", statistic, "short"),
        ("Fails at", threshold, "short"),
    ]
    verdict_text = {"0": "inconclusive", "1": "pass", "2": "fail"}
    return [
        table(
            "Canary analysis: guards",
            "Each guard of each agent's rollout: its current verdict (pass, fail, inconclusive: not enough "
            "runs yet, or the data source is down) and its statistic, the evidence against the candidate in "
            "nats, which fails the guard (and rolls the rollout back) when it reaches 'Fails at'.",
            guards,
            ["agent", "guard"],
            w=12,
            column_options={
                "Verdict": {
                    "thresholds": thresholds((None, "orange"), (1, "green"), (2, "red")),
                    "custom.cellOptions": {"type": "color-background"},
                    "mappings": [
                        {
                            "type": "value",
                            "options": {
                                value: {"text": text, "index": index}
                                for index, (value, text) in enumerate(verdict_text.items())
                            },
                        }
                    ],
                }
            },
        ),
        timeseries(
            "Canary analysis: evidence against the candidate",
            "Each guard's statistic as a share of the value at which it fails: at 1 the analysis rolls back.",
            "percentunit",
            targets((f"{statistic}\n/ ({threshold} > 0)", "{{agent}} {{guard}}")),
            defaults={"max": 1},
        ),
        timeseries(
            "Canary analysis: runs seen per version",
            "Runs of the baseline and the candidate the analysis has counted since the rollout started "
            "(from the service's own runs, or summed over replicas from Prometheus).",
            "short",
            targets(
                (
                    f"max by (agent, prompt_version) (agentopz_rollout_analysis_runs{{{RUN}}})",
                    "{{agent}} {{prompt_version}}",
                )
            ),
        ),
        bargauge(
            "Canary analysis: decisions",
            "What the analysis did over the time range: advance, promote, rollback, or pause and resume while "
            "its data source was down.",
            "short",
            targets(
                (
                    "sum by (agent, decision) "
                    f"(increase(agentopz_rollout_analysis_decisions_total{{{AGENT}}}[{RANGE}]))",
                    "{{agent}} {{decision}}",
                )
            ),
            w=6,
        ),
        stat(
            "Canary analysis data source",
            "1 when the last read of the analysis data source (the service's runs, or Prometheus) succeeded. "
            "At 0 every verdict is inconclusive and active rollouts are paused at their weight.",
            "short",
            "min(agentopz_rollout_analysis_source_up)",
            steps=thresholds((None, "red"), (1, "green")),
            w=6,
            defaults={
                "mappings": [
                    {"type": "value", "options": {"0": {"text": "down", "index": 0}, "1": {"text": "up", "index": 1}}}
                ]
            },
        ),
    ]


def prompt_versions() -> dict:
    runs = f"agentopz_runs_total{{{RUN}}}"
    by = "agent, prompt_version"
    per_agent = f"sum by (agent) (rate(agentopz_runs_total{{{AGENT}}}[{RI}]))"
    good_range = f'agentopz_runs_total{{{RUN},outcome="success"}}'
    quality_range = f'agentopz_runs_total{{{RUN},outcome="quality_failure"}}'
    checks = f'agentopz_quality_checks_total{{{RUN},verdict=~"pass|fail"}}'
    passed = f'agentopz_quality_checks_total{{{RUN},verdict="pass"}}'
    legend = "{{agent}} {{prompt_version}}"
    panels = [
        table(
            "Versions side by side",
            "Each prompt version of each agent over the time range: traffic share, good runs, quality, cost and "
            "latency. A canary that is worse than the stable version shows here first.",
            [
                ("Runs", f"sum by ({by}) (increase({runs}[{RANGE}]))", "short"),
                (
                    "Traffic share",
                    f"sum by ({by}) (increase({runs}[{RANGE}]))\n/ on (agent) group_left\n"
                    f"sum by (agent) (increase(agentopz_runs_total{{{AGENT}}}[{RANGE}]))",
                    "percentunit",
                ),
                ("Good-run ratio", increase_ratio(good_range, runs, by), "percentunit"),
                ("Quality failure ratio", increase_ratio(quality_range, runs, by), "percentunit"),
                ("Quality pass rate", increase_ratio(passed, checks, by), "percentunit"),
                ("Mean cost/run", mean("agentopz_run_cost_usd", RUN, by, RANGE), "currencyUSD"),
                ("p95 latency", quantile(0.95, "agentopz_run_duration_seconds", RUN, by, RANGE), "s"),
                ("Mean steps/run", mean("agentopz_run_steps", RUN, by, RANGE), "short"),
            ],
            ["agent", "prompt_version"],
            h=7,
            column_options={
                "Good-run ratio": {"thresholds": RATIO_GOOD, "custom.cellOptions": {"type": "color-text"}},
            },
        ),
        timeseries(
            "Traffic share by prompt version",
            "Share of each agent's finished runs per prompt version (a canary shows as a small share).",
            "percentunit",
            targets((f"sum by ({by}) (rate({runs}[{RI}]))\n/ on (agent) group_left\n{per_agent}", legend)),
            stack=True,
        ),
        timeseries(
            "Good-run ratio by prompt version",
            "Share of runs ending with outcome success, per prompt version.",
            "percentunit",
            targets(
                (
                    f"1 - ({ratio(f'{sel(RUNS, RUN, NOT_SUCCESS)}[{RI}]', f'{runs}[{RI}]', by)})",
                    legend,
                )
            ),
            defaults={"max": 1},
        ),
        timeseries(
            "Quality failure ratio by prompt version",
            "Share of runs ending with outcome quality_failure, per prompt version.",
            "percentunit",
            targets(
                (
                    ratio(f'agentopz_runs_total{{{RUN},outcome="quality_failure"}}[{RI}]', f"{runs}[{RI}]", by),
                    legend,
                )
            ),
        ),
        timeseries(
            "Quality check pass rate by prompt version",
            "Share of quality check verdicts that passed, per prompt version.",
            "percentunit",
            targets((f"sum by ({by}) (rate({passed}[{RI}])) / sum by ({by}) (rate({checks}[{RI}]))", legend)),
            defaults={"max": 1},
        ),
        timeseries(
            "Mean cost per run by prompt version",
            "Average cost of finished runs per prompt version.",
            "currencyUSD",
            targets((mean("agentopz_run_cost_usd", RUN, by), legend)),
        ),
        timeseries(
            "p95 run latency by prompt version",
            "95th percentile run duration per prompt version.",
            "s",
            targets((quantile(0.95, "agentopz_run_duration_seconds", RUN, by), legend)),
        ),
        timeseries(
            "Mean steps per run by prompt version",
            "Average LLM steps per run, per prompt version.",
            "short",
            targets((mean("agentopz_run_steps", RUN, by), legend)),
        ),
        bargauge(
            "Outcomes by prompt version",
            "Runs per outcome and prompt version over the time range.",
            "short",
            targets((f"sum by ({by}, outcome) (increase({runs}[{RANGE}]))", f"{legend} {{{{outcome}}}}")),
        ),
    ]
    panels += canary_analysis_panels()
    return dashboard(
        "agentopz-prompts",
        "Agent Opz / Prompt versions",
        "Prompt versions of each agent side by side: traffic share, quality, cost per run and latency, so a "
        "canary can be promoted or rolled back on evidence.",
        ["prompts"],
        panels,
    )


def slos() -> dict:
    slo_sel = 'slo=~"$slo"'
    slo_agent = f"{slo_sel},{AGENT}"

    def burn(window: str) -> str:
        budget = f"slo:error_budget:ratio{{{slo_sel}}}"
        return f"slo:sli_error:ratio_rate{window}{{{slo_agent}}}\n/ on (slo) group_left\n{budget}"

    would_fire = [
        (
            f"{severity} {long}/{short} > {factor:g}x",
            f"({burn(long)} > bool {factor:g})\n*\n({burn(short)} > bool {factor:g})",
            "bool",
        )
        for severity, long, short, factor in BURN_ALERTS
    ]
    runs = f"agentopz_runs_total{{{RUN}}}"
    panels = [
        bargauge(
            "Error budget remaining",
            "Share of the SLO period's error budget still left (slo:period_error_budget_remaining:ratio): 100% "
            "untouched, 0% spent, below 0 overspent.",
            "percentunit",
            targets((f"slo:period_error_budget_remaining:ratio{{{slo_agent}}}", "{{slo}} {{agent}}")),
            defaults={"thresholds": thresholds((None, "red"), (0.25, "orange"), (0.5, "green")), "max": 1},
        ),
        bargauge(
            "Current burn rate (5m)",
            "How fast the error budget burns now (slo:current_burn_rate:ratio): 1x spends exactly the budget over "
            "the SLO period, 14.4x spends 2% of it in an hour.",
            BURN,
            targets((f"slo:current_burn_rate:ratio{{{slo_agent}}}", "{{slo}} {{agent}}")),
            defaults={"thresholds": thresholds((None, "green"), (1, "orange"), (6, "red"))},
        ),
        table(
            "Burn rate per window",
            "Error ratio over each window divided by the error budget (1 - objective), per SLO and agent. The "
            "burn-rate alerts compare pairs of these windows with 14.4x, 6x, 3x and 1x.",
            [(window, burn(window), BURN) for window in SLO_WINDOWS],
            ["slo", "service", "agent"],
            column_options={
                window: {
                    "thresholds": thresholds((None, "green"), (1, "orange"), (6, "red")),
                    "custom.cellOptions": {"type": "color-background"},
                }
                for window in SLO_WINDOWS
            },
        ),
        table(
            "Which alert would fire",
            "1 where both windows of a burn-rate alert are over its factor now (the SLO alerts of "
            "alert-rules/slo-rules.yaml, factors for a 30-day period; the real alerts also need a minimum "
            "number of runs in the long window). page: act now, ticket: work queue.",
            would_fire,
            ["slo", "service", "agent"],
            column_options={
                name: {
                    "thresholds": thresholds((None, "green"), (1, "red")),
                    "custom.cellOptions": {"type": "color-background"},
                    "mappings": [
                        {
                            "type": "value",
                            "options": {"0": {"text": "ok", "index": 0}, "1": {"text": "would fire", "index": 1}},
                        }
                    ],
                }
                for name, _, _ in would_fire
            },
        ),
        alerts_table(
            "SLO alerts pending or firing",
            "Burn-rate alerts Prometheus is evaluating as pending or firing now.",
            f"sum by (alertname, alertstate, severity, slo, service, agent) (ALERTS{{{slo_sel}}})",
        ),
        timeseries(
            "Burn rate: 1h and 6h windows",
            "Burn rate over the long windows of the page alerts, per SLO and agent, with the page thresholds.",
            BURN,
            targets(
                (burn("1h"), "1h {{slo}} {{agent}}"),
                (burn("6h"), "6h {{slo}} {{agent}}"),
            ),
            defaults={
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 8,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"mode": "none", "group": "A"},
                    "axisSoftMin": 0,
                    "thresholdsStyle": {"mode": "dashed"},
                },
                "thresholds": thresholds((None, "green"), (6, "orange"), (14.4, "red")),
            },
        ),
        timeseries(
            "Error budget remaining over time",
            "Remaining error budget of the SLO period, per SLO and agent.",
            "percentunit",
            targets((f"slo:period_error_budget_remaining:ratio{{{slo_agent}}}", "{{slo}} {{agent}}")),
        ),
        timeseries(
            "SLI error ratio (5m, 1h) vs error budget",
            "Error ratio of each SLO over 5 minutes and 1 hour, with the error budget (1 - objective) as the "
            "sustainable line.",
            "percentunit",
            targets(
                (f"slo:sli_error:ratio_rate5m{{{slo_agent}}}", "5m {{slo}} {{agent}}"),
                (f"slo:sli_error:ratio_rate1h{{{slo_agent}}}", "1h {{slo}} {{agent}}"),
                (f"slo:error_budget:ratio{{{slo_sel}}}", "budget {{slo}}"),
            ),
        ),
        timeseries(
            "Runs in the alert windows",
            "Runs per SLO and agent in the long windows (the alerts need a minimum to fire).",
            "short",
            targets(
                (f"slo:sli_events:increase1h{{{slo_agent}}}", "1h {{slo}} {{agent}}"),
                (f"slo:sli_events:increase6h{{{slo_agent}}}", "6h {{slo}} {{agent}}"),
            ),
        ),
        timeseries(
            "Good-run ratio by agent and prompt version (raw)",
            "Share of runs ending with outcome success straight from agentopz_runs_total, without the recording "
            "rules: per agent and prompt version, for comparing versions against the objective.",
            "percentunit",
            targets(
                (
                    f"1 - ({ratio(f'{sel(RUNS, RUN, NOT_SUCCESS)}[{RI}]', f'{runs}[{RI}]', 'agent, prompt_version')})",
                    "{{agent}} {{prompt_version}}",
                ),
                (f"max by (slo) (slo:objective:ratio{{{slo_sel}}})", "objective {{slo}}"),
            ),
            defaults={"max": 1},
        ),
    ]
    return dashboard(
        "agentopz-slos",
        "Agent Opz / SLOs",
        "Error budgets and burn rates of the SLOs in alert-rules/slo-rules.yaml, and which burn-rate alert would fire.",
        ["slo"],
        panels,
        slo=True,
    )


def service_health() -> dict:
    panels = [
        stat(
            "Replicas up",
            'Scrape targets of job "agentopz" that are up (the self-monitoring alerts assume this job name).',
            "short",
            'sum(up{job="agentopz"})',
            thresholds((None, "red"), (1, "green")),
        ),
        stat(
            "Spans received per second",
            "Spans accepted by the OTLP receivers, all transports and replicas.",
            PER_SECOND,
            f"sum(rate(agentopz_receiver_spans_total[{RI}]))",
        ),
        stat(
            "Open runs",
            "Runs held in memory (in flight or in their grace period), all replicas.",
            "short",
            "sum(agentopz_open_runs)",
        ),
        stat(
            "Spans queued for export",
            "Spans waiting in the OTLP exporter queues, all replicas.",
            "short",
            "sum(agentopz_exporter_queue_spans)",
        ),
        stat(
            "Rejected spans in range",
            "Spans the receivers did not accept over the time range (invalid ids, backpressure).",
            "short",
            f"sum(increase(agentopz_receiver_rejected_spans_total[{RANGE}])) or vector(0)",
            thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Dropped spans in range",
            "Spans the OTLP exporters gave up on over the time range (backend rejected them, retries exhausted, "
            "queue full in drop mode).",
            "short",
            f"sum(increase(agentopz_exporter_failed_spans_total[{RANGE}]))",
            thresholds((None, "green"), (1, "red")),
        ),
        timeseries(
            "Spans received by transport",
            "Spans accepted per second by transport (grpc, http).",
            PER_SECOND,
            targets((f"sum by (transport) (rate(agentopz_receiver_spans_total[{RI}]))", "{{transport}}")),
            stack=True,
            w=8,
        ),
        timeseries(
            "Spans rejected by reason",
            "Spans not accepted per second, by reason.",
            PER_SECOND,
            targets((f"sum by (reason) (rate(agentopz_receiver_rejected_spans_total[{RI}]))", "{{reason}}")),
            w=8,
        ),
        timeseries(
            "Requests rejected by transport and reason",
            "Whole export requests rejected per second (decode, too_large, media_type, unauthenticated, busy).",
            PER_SECOND,
            targets(
                (
                    f"sum by (transport, reason) (rate(agentopz_receiver_rejected_requests_total[{RI}]))",
                    "{{transport}} {{reason}}",
                )
            ),
            w=8,
        ),
        timeseries(
            "Spans forwarded and dropped by exporter",
            "Spans per second the OTLP exporters delivered to the backend, and spans they gave up on.",
            PER_SECOND,
            targets(
                (f"sum by (exporter) (rate(agentopz_exporter_sent_spans_total[{RI}]))", "sent {{exporter}}"),
                (f"sum by (exporter) (rate(agentopz_exporter_failed_spans_total[{RI}]))", "dropped {{exporter}}"),
            ),
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "dropped.*"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}],
                }
            ],
        ),
        timeseries(
            "Exporter queue",
            "Spans waiting in each OTLP exporter queue; a queue that keeps growing means the backend is slow or down.",
            "short",
            targets(("sum by (exporter) (agentopz_exporter_queue_spans)", "{{exporter}}")),
        ),
        timeseries(
            "Open runs and runs in flight",
            "Runs held in memory per replica, and runs in progress summed over replicas.",
            "short",
            targets(
                ("sum by (instance) (agentopz_open_runs)", "open {{instance}}"),
                (f"sum(agentopz_runs_in_flight{{{AGENT}}})", "in flight"),
            ),
        ),
        timeseries(
            "Evicted runs by reason",
            "Runs dropped before they finished per second: capacity (max_open_runs reached) or shutdown.",
            PER_SECOND,
            targets((f"sum by (reason) (rate(agentopz_evicted_runs_total[{RI}]))", "{{reason}}")),
        ),
        timeseries(
            "Late spans",
            "Spans per second that arrived after their run had finished (counted in call metrics, not in run "
            "metrics). Many of them: raise runs.grace_seconds.",
            PER_SECOND,
            targets((f"sum(rate(agentopz_late_spans_total[{RI}]))", "late spans")),
            w=8,
        ),
        timeseries(
            "Label values over their cap",
            "Label values replaced by 'other' per second because the label reached its cardinality cap.",
            PER_SECOND,
            targets((f"sum by (label) (rate(agentopz_label_overflow_total[{RI}]))", "{{label}}")),
            w=8,
        ),
        timeseries(
            "Unusable GenAI attributes",
            "GenAI attributes ignored per second because their value is unusable (negative or non-numeric "
            "tokens, ...), by attribute.",
            PER_SECOND,
            targets((f"sum by (attribute) (rate(agentopz_invalid_attributes_total[{RI}]))", "{{attribute}}")),
            w=8,
        ),
        timeseries(
            "Event loop lag",
            "How late each replica's event loop ran a timer that was due. Intake, scrapes and admin requests wait "
            "as long behind the work in progress: a p99 in the hundreds of milliseconds means some step holds "
            "the loop; past the scrape timeout, scrapes fail and the replica shows as down.",
            "s",
            targets(
                (quantile(0.5, "agentopz_event_loop_lag_seconds", "", by="instance"), "p50 {{instance}}"),
                (quantile(0.99, "agentopz_event_loop_lag_seconds", "", by="instance"), "p99 {{instance}}"),
            ),
            w=24,
        ),
    ]
    return dashboard(
        "agentopz-health",
        "Agent Opz / Service health",
        "The agentopz service itself: spans received, rejected, forwarded and dropped, exporter queues, open "
        "runs, evictions, late spans and event loop lag.",
        ["health"],
        panels,
    )


DASHBOARDS = {
    "agentopz-fleet.json": fleet,
    "agentopz-agent.json": agent_detail,
    "agentopz-cost.json": cost,
    "agentopz-prompts.json": prompt_versions,
    "agentopz-slos.json": slos,
    "agentopz-health.json": service_health,
}


def render() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python dashboards/build.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
