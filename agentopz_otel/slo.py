"""SLOs on agent runs: a YAML spec, and the Prometheus rules that implement it.

An SLO covers the runs of one agent or of a set of agents (regex matchers on the `service` and
`agent` labels) and says which share of runs must be good over a 28- or 30-day window. The SLI kinds:

- `success`: good = outcome `success`; every other outcome spends budget;
- `quality`: bad = outcome `quality_failure`, over all runs;
- `latency`: good = runs that finished within `threshold_seconds` (a bucket of agentopz_run_duration_seconds);
- `cost`: good = runs that cost at most `threshold_usd` (a bucket of agentopz_run_cost_usd);
- `probe`: good = probes of the agent that succeeded (agentopz_probe_results_total{reason="success"}, from
  the probes extension); by agent only, since probes have no `service` label.

The generated rules follow Sloth (slok/sloth) in shape and names: per SLO, SLI error ratios over
5m..3d (`slo:sli_error:ratio_rate<window>`), the objective, error budget, current and period burn rate
and the remaining error budget (`slo:*`), and multiwindow multi-burn-rate alerts (Google SRE
workbook): page on 1h/5m and 6h/30m, ticket on 1d/2h and 3d/6h. Every series carries the label
`slo` (the SLO name) plus the aggregation labels (`service`, `agent` by default) in place of Sloth's
`sloth_*` labels. Numerators and denominators are summed across replicas before they are divided.
Alerts need `min_runs` runs in their long window, so one bad run at night does not page.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import catalogue
from .runbooks import DEFAULT_RUNBOOK_BASE_URL, check_base_url, dump_rules, runbook_url
from .triage import suspect_annotation

PROBE_RESULTS_TOTAL = catalogue.metric("agentopz_probe_results_total").name
PROBE_SUCCESS = catalogue.enum("probe_reason")[0]  # success, the first value of the probe's reasons

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
PERIOD_HOURS = {"28d": 672, "30d": 720}
WINDOW_HOURS = {"5m": Decimal(5) / 60, "30m": Decimal("0.5"), "1h": 1, "2h": 2, "6h": 6, "1d": 24, "3d": 72}

# (severity, long window, short window, % of the period's budget spent when it fires)
BURN_ALERTS = (
    ("page", "1h", "5m", 2),
    ("page", "6h", "30m", 5),
    ("ticket", "1d", "2h", 10),
    ("ticket", "3d", "6h", 10),
)

ALERT_NAMES = {
    "success": "AgentSuccessSLOBurn",
    "quality": "AgentQualitySLOBurn",
    "latency": "AgentLatencySLOBurn",
    "cost": "AgentCostSLOBurn",
    "probe": "AgentProbeSLOBurn",
}

_RESERVED_LABELS = {"alertname", "severity", "slo", "service", "agent"}
_REGEX_META = set(".^$*+?{}[]\\|()")
_RE2_UNSUPPORTED = re.compile(r"\(\?[=!]|\(\?<[=!]|\\[1-9]")


class SLOError(ValueError):
    """An SLO file that cannot be used; the message names the key and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Match(_Strict):
    """Which runs the SLO covers: RE2 regexes on label values, anchored as in PromQL; unset = any."""

    service: str | None = None
    agent: str | None = None

    @field_validator("service", "agent")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value:
            raise ValueError("empty pattern: leave the key out to match every value")
        if _RE2_UNSUPPORTED.search(value):
            raise ValueError(f"{value!r}: Prometheus regexes (RE2) have no lookaround or backreferences")
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{value!r} is not a valid regex: {error}") from None
        return value

    def promql(self) -> list[str]:
        matchers = []
        for label in ("service", "agent"):
            value = getattr(self, label)
            if value is not None:
                operator = "=~" if _REGEX_META & set(value) else "="
                matchers.append(f"{label}{operator}{json.dumps(value, ensure_ascii=False)}")
        return matchers


class SuccessSLI(_Strict):
    kind: Literal["success"]


class QualitySLI(_Strict):
    kind: Literal["quality"]


class LatencySLI(_Strict):
    kind: Literal["latency"]
    threshold_seconds: float = Field(gt=0, description="a run is good when it finishes within this many seconds")


class CostSLI(_Strict):
    kind: Literal["cost"]
    threshold_usd: float = Field(gt=0, description="a run is good when it costs at most this many USD")


class ProbeSLI(_Strict):
    kind: Literal["probe"]


SLI = Annotated[SuccessSLI | QualitySLI | LatencySLI | CostSLI | ProbeSLI, Field(discriminator="kind")]


class Alerting(_Strict):
    page: bool = Field(default=True, description="page on fast burn (1h/5m at 14.4x, 6h/30m at 6x for 30d)")
    ticket: bool = Field(default=True, description="ticket on slow burn (1d/2h at 3x, 3d/6h at 1x for 30d)")
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels on both alerts (team, ...)")
    runbook_url: str | None = Field(default=None, description="default: runbook_base_url/<alert name>")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) or name.startswith("__"):
                raise ValueError(f"{name!r} is not a valid Prometheus label name")
            if name in _RESERVED_LABELS:
                raise ValueError(f"label {name!r} is set by the generator")
        return labels


class SLO(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$", description="lowercase, digits, - and _")
    description: str = ""
    match: Match = Field(default_factory=Match)
    group_by: list[Literal["service", "agent"]] = Field(
        default_factory=lambda: ["service", "agent"],
        description="one SLI (and alert) per value of these labels; [] pools every matching agent",
    )
    objective: float = Field(gt=0, lt=100, description="percent of good runs, e.g. 99.5")
    window: Literal["28d", "30d"] = "30d"
    sli: SLI
    min_runs: int = Field(default=0, ge=0, description="no alert with fewer runs than this in the alert's long window")
    alerting: Alerting = Field(default_factory=Alerting)

    @field_validator("group_by")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("a label is listed twice")
        return labels

    @model_validator(mode="after")
    def _probes_by_agent(self) -> SLO:
        if not isinstance(self.sli, ProbeSLI):
            return self
        if self.match.service is not None:
            raise ValueError("a probe SLI has no service label: match on agent only")
        if "group_by" not in self.model_fields_set:
            self.group_by = ["agent"]
        elif "service" in self.group_by:
            raise ValueError("a probe SLI has no service label: group_by [agent] or []")
        return self

    @property
    def objective_ratio(self) -> Decimal:
        return Decimal(repr(self.objective)) / 100

    @property
    def error_budget(self) -> Decimal:
        return 1 - self.objective_ratio

    def burn_factor(self, budget_percent: int, long_window: str) -> Decimal:
        """How many times faster than sustainable the budget burns when `budget_percent` goes in `long_window`."""
        return Decimal(budget_percent) * PERIOD_HOURS[self.window] / 100 / Decimal(WINDOW_HOURS[long_window])


class SLOSpec(_Strict):
    runbook_base_url: str = Field(
        default=DEFAULT_RUNBOOK_BASE_URL,
        description="runbook_url of an alert = this absolute URL/<alert name>",
    )
    slos: list[SLO] = Field(min_length=1)

    @field_validator("runbook_base_url")
    @classmethod
    def _runbook_base_url(cls, base_url: str) -> str:
        return check_base_url(base_url)

    @model_validator(mode="after")
    def _unique_names(self) -> SLOSpec:
        seen: set[str] = set()
        for slo in self.slos:
            if slo.name in seen:
                raise ValueError(f"two SLOs are named {slo.name!r}")
            seen.add(slo.name)
        return self


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] == "string_pattern_mismatch" and item["loc"][-1] == "name":
            message = "use lowercase letters, digits, '-' and '_' (at most 63), e.g. support-success"
        elif item["type"] == "union_tag_invalid":
            message = f"unknown SLI kind; use one of: {', '.join(ALERT_NAMES)}"
        elif item["type"] == "union_tag_not_found":
            message = f"missing 'kind' (one of: {', '.join(ALERT_NAMES)})"
        lines.append(f"{path}: {message}" if path else message)
    return "\n".join(lines)


def parse_spec(text: str, source: str = "<slo file>") -> SLOSpec:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SLOError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise SLOError(f"{source}: the top level must be a mapping with an `slos` list")
    try:
        return SLOSpec.model_validate(document)
    except ValidationError as error:
        raise SLOError(f"{source}:\n{_format_error(error)}") from None


def load_spec(path: str | Path) -> SLOSpec:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise SLOError(f"{path}: cannot read: {error.strerror}") from None
    return parse_spec(text, str(path))


def latency_thresholds(spec: SLOSpec) -> list[float]:
    """Latency SLO thresholds (seconds): bucket boundaries agentopz_run_duration_seconds must have."""
    return sorted({slo.sli.threshold_seconds for slo in spec.slos if isinstance(slo.sli, LatencySLI)})


def cost_thresholds(spec: SLOSpec) -> list[float]:
    """Cost SLO thresholds (USD): bucket boundaries agentopz_run_cost_usd must have."""
    return sorted({slo.sli.threshold_usd for slo in spec.slos if isinstance(slo.sli, CostSLI)})


def le_label(bound: float) -> str:
    """The `le` label value of a bucket boundary as the service's /metrics writes it: 30.0, 7.5, 0.25."""
    return repr(float(bound))


def _number(value: Decimal | float | int) -> str:
    """A short exact decimal for PromQL and text: 0.005, 14.4, 0.933333."""
    quantized = Decimal(repr(value) if isinstance(value, float) else value).quantize(Decimal("0.000001"))
    return format(quantized.normalize(), "f")


# -- rule generation ---------------------------------------------------------------------------


def _selector(slo: SLO, *extra: str) -> str:
    matchers = [*slo.match.promql(), *extra]
    return "{" + ",".join(matchers) + "}" if matchers else ""


def _sum(slo: SLO, expression: str) -> str:
    by = f" by ({', '.join(slo.group_by)})" if slo.group_by else ""
    return f"sum{by} ({expression})"


def _events(slo: SLO, window: str, function: str = "rate") -> tuple[str, str]:
    """(bad events, all events) as `function` (rate or increase) over `window`, each summed across replicas."""
    sli = slo.sli
    if isinstance(sli, SuccessSLI | QualitySLI):
        bad_outcome = 'outcome!="success"' if isinstance(sli, SuccessSLI) else 'outcome="quality_failure"'
        total = _sum(slo, f"{function}(agentopz_runs_total{_selector(slo)}[{window}])")
        bad = _sum(slo, f"{function}(agentopz_runs_total{_selector(slo, bad_outcome)}[{window}])")
        # No bad series yet (no failure ever seen) is a zero error rate, not a missing one.
        return f"{bad}\nor\n{total} * 0", total
    if isinstance(sli, ProbeSLI):
        total = _sum(slo, f"{function}({PROBE_RESULTS_TOTAL}{_selector(slo)}[{window}])")
        failed = f"reason!={json.dumps(PROBE_SUCCESS)}"
        bad = _sum(slo, f"{function}({PROBE_RESULTS_TOTAL}{_selector(slo, failed)}[{window}])")
        return f"{bad}\nor\n{total} * 0", total
    metric = "agentopz_run_duration_seconds" if isinstance(sli, LatencySLI) else "agentopz_run_cost_usd"
    threshold = sli.threshold_seconds if isinstance(sli, LatencySLI) else sli.threshold_usd
    total = _sum(slo, f"{function}({metric}_count{_selector(slo)}[{window}])")
    le = f"le={json.dumps(le_label(threshold))}"
    good = _sum(slo, f"{function}({metric}_bucket{_selector(slo, le)}[{window}])")
    return f"{total}\n-\n{good}", total


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _ratio(bad: str, total: str) -> str:
    return f"(\n{_indent(bad)}\n)\n/\n(\n{_indent(total)}\n)\n"


def _who(slo: SLO) -> str:
    """Subject and verb of the alert summary."""
    group = set(slo.group_by)
    if group == {"service", "agent"}:
        return "Agent {{ $labels.agent }} ({{ $labels.service }}) is"
    if group == {"agent"}:
        return "Agent {{ $labels.agent }} is"
    if group == {"service"}:
        return "Agents of service {{ $labels.service }} are"
    return "The agents of this SLO are"


def _sli_text(slo: SLO) -> str:
    sli = slo.sli
    if isinstance(sli, SuccessSLI):
        return "Good runs end with outcome success; every other outcome spends error budget."
    if isinstance(sli, QualitySLI):
        return "Bad runs end with outcome quality_failure (the output failed its quality checks)."
    if isinstance(sli, ProbeSLI):
        return (
            f'Good probes succeed ({PROBE_RESULTS_TOTAL}{{reason="{PROBE_SUCCESS}"}}): the agent answered as expected '
            "and, where the probe waits for the run it started, that run succeeded."
        )
    if isinstance(sli, LatencySLI):
        return (
            f"Good runs finish within {_number(sli.threshold_seconds)}s "
            f'(agentopz_run_duration_seconds_bucket{{le="{le_label(sli.threshold_seconds)}"}}).'
        )
    return (
        f"Good runs cost at most {_number(sli.threshold_usd)} USD "
        f'(agentopz_run_cost_usd_bucket{{le="{le_label(sli.threshold_usd)}"}}).'
    )


def _labels(slo: SLO) -> dict[str, str]:
    return {"slo": slo.name}


def _sli_rules(slo: SLO) -> list[dict[str, Any]]:
    rules = []
    for window in WINDOWS:
        bad, total = _events(slo, window)
        rules.append(
            {"record": f"slo:sli_error:ratio_rate{window}", "expr": _ratio(bad, total), "labels": _labels(slo)}
        )
    for _, long_window, _, _ in BURN_ALERTS:
        _, total = _events(slo, long_window, "increase")
        rules.append(
            {
                "record": f"slo:sli_events:increase{long_window}",
                "expr": total + "\n",
                "labels": _labels(slo),
            }
        )
    # Per-second bad and all events over 5m: summed over the period they give its error ratio,
    # weighted by traffic (a mean of ratios would not be).
    bad, total = _events(slo, "5m")
    rules.append({"record": "slo:sli_error_events:rate5m", "expr": bad + "\n", "labels": _labels(slo)})
    rules.append({"record": "slo:sli_events:rate5m", "expr": total + "\n", "labels": _labels(slo)})
    budget = _number(slo.error_budget)
    rules.append(
        {
            "record": "slo:current_burn_rate:ratio",
            "expr": f'slo:sli_error:ratio_rate5m{{slo="{slo.name}"}} / {budget}\n',
            "labels": _labels(slo),
        }
    )
    return rules


def _meta_rules(slo: SLO) -> list[dict[str, Any]]:
    name = slo.name
    period = slo.window
    budget = _number(slo.error_budget)
    return [
        {"record": "slo:objective:ratio", "expr": f"vector({_number(slo.objective_ratio)})", "labels": _labels(slo)},
        {"record": "slo:error_budget:ratio", "expr": f"vector({budget})", "labels": _labels(slo)},
        {"record": "slo:time_period:days", "expr": f"vector({period[:-1]})", "labels": _labels(slo)},
        {
            "record": f"slo:sli_error:ratio_rate{period}",
            "expr": (
                f'sum_over_time(slo:sli_error_events:rate5m{{slo="{name}"}}[{period}])\n'
                "/\n"
                f'sum_over_time(slo:sli_events:rate5m{{slo="{name}"}}[{period}])\n'
            ),
            "labels": _labels(slo),
        },
        {
            "record": "slo:period_burn_rate:ratio",
            "expr": f'slo:sli_error:ratio_rate{period}{{slo="{name}"}} / {budget}\n',
            "labels": _labels(slo),
        },
        {
            "record": "slo:period_error_budget_remaining:ratio",
            "expr": f'1 - slo:period_burn_rate:ratio{{slo="{name}"}}\n',
            "labels": _labels(slo),
        },
    ]


def _alert(slo: SLO, severity: str, runbook_base_url: str) -> dict[str, Any]:
    name = slo.name
    budget = _number(slo.error_budget)
    branches = []
    conditions = []
    for alert_severity, long_window, short_window, budget_percent in BURN_ALERTS:
        if alert_severity != severity:
            continue
        factor = _number(slo.burn_factor(budget_percent, long_window))
        parts = [
            f'slo:sli_error:ratio_rate{long_window}{{slo="{name}"}} / {budget} > {factor}',
            f'slo:sli_error:ratio_rate{short_window}{{slo="{name}"}} / {budget} > {factor}',
        ]
        if slo.min_runs:
            parts.append(f'slo:sli_events:increase{long_window}{{slo="{name}"}} >= {slo.min_runs}')
        branches.append("(\n" + _indent("\nand\n".join(parts)) + "\n)")
        conditions.append(f"{factor}x over {long_window} and {short_window}")
    alertname = ALERT_NAMES[slo.sli.kind]
    speed = "fast" if severity == "page" else "steadily"
    events = "probes" if isinstance(slo.sli, ProbeSLI) else "runs"
    traffic = f", with at least {slo.min_runs} {events} in the long window" if slo.min_runs else ""
    description = " ".join(
        part
        for part in (
            slo.description.strip(),
            _sli_text(slo),
            f"Objective: {_number(slo.objective)}% good {events} over {slo.window} (error budget "
            f"{_number(slo.error_budget * 100)}%). The burn rate over the long window is "
            '{{ printf "%.1f" $value }}x the rate that spends exactly the budget; this alert fires at '
            f"{' or '.join(conditions)}{traffic}.",
        )
        if part
    )
    annotations = {
        "summary": f"{_who(slo)} burning the {name} error budget {speed} "
        '({{ printf "%.1f" $value }}x the sustainable rate)',
        "description": description,
    }
    suspect = suspect_annotation(slo.group_by)
    if suspect is not None:
        annotations["suspect"] = suspect
    annotations["runbook_url"] = slo.alerting.runbook_url or runbook_url(runbook_base_url, alertname)
    return {
        "alert": alertname,
        "expr": "\nor\n".join(branches) + "\n",
        "labels": {"severity": severity, "slo": name, **slo.alerting.labels},
        "annotations": annotations,
    }


def generate_rules(spec: SLOSpec) -> dict[str, Any]:
    """Prometheus rule groups for every SLO of `spec` (a `groups:` document).

    Per SLO: one group with the SLI recording rules followed by the alerts (rules of a group run in
    order at the same timestamp, so the alerts read this evaluation's ratios), and one group with
    the objective, error budget and period rules.
    """
    groups = []
    for slo in spec.slos:
        alerts = [
            _alert(slo, severity, spec.runbook_base_url)
            for severity, enabled in (("page", slo.alerting.page), ("ticket", slo.alerting.ticket))
            if enabled
        ]
        groups.append({"name": f"agentopz-slo-{slo.name}", "rules": [*_sli_rules(slo), *alerts]})
        groups.append({"name": f"agentopz-slo-{slo.name}-meta", "rules": _meta_rules(slo)})
    return {"groups": groups}


def render_rules(spec: SLOSpec, source: str | None = None) -> str:
    """The rule file text: a header naming the source, then the groups as YAML."""
    origin = f" from {Path(source).name}" if source else ""
    header = (
        f"# SLO recording and alerting rules, generated{origin} by `agentopz-otel slo generate`.\n"
        "# Do not edit: change the SLO file and generate again.\n"
    )
    return header + dump_rules(generate_rules(spec))
