"""Triage: when an agent's runs go bad, which part moved (prompt version, tool, upstream model, orchestration).

Each suspect gets a score from the metrics that already exist, comparing the last half hour (`now`)
with the half hour before it (`before`). Every score is a share of the agent's runs (0..1), so the
four kinds compare with each other:

- `prompt_version`: the share of a version's runs that failed (any outcome but `success`) minus the
  share of the agent's other versions, now. One version worse than the others.
- `tool`: the rise in the share of the agent's runs ending `tool_error` or `timeout`, capped by the
  rise of the tool's own error share (a tool whose errors rose while runs still succeed is not what
  broke the agent; a tool that fails in a loop stopped by a limit is orchestration).
- `upstream`: the rise in the share of the agent's runs ending `llm_error`, capped by the rise of the
  failed-call share of a (provider, model) the agent calls, counted across every agent.
- `orchestration`: the rise in the share of runs ending `budget_exceeded` or `timeout` that neither a
  tool nor an upstream model explains (the largest of those scores is taken off).

A suspect is recorded (and named) when its score is at least `MIN_SCORE`; rises are only measured for an agent with
at least `MIN_RUNS` runs in both windows, a version only against at least `MIN_RUNS` runs of its own
and of the others. The same definitions run in two places: as Prometheus recording rules (generated
here, `alert-rules/triage-rules.yaml`) and over the console's own run history (`suspects`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .records import BUDGET_EXCEEDED, LLM_ERROR, SUCCESS, TIMEOUT, TOOL_ERROR
from .runbooks import dump_rules

WINDOW = "30m"
WINDOW_SECONDS = 1800
MIN_RUNS = 10
MIN_SCORE = 0.05

PROMPT_VERSION = "prompt_version"
TOOL = "tool"
UPSTREAM = "upstream"
ORCHESTRATION = "orchestration"

# The run outcomes each suspect explains.
SUSPECT_OUTCOMES: dict[str, tuple[str, ...]] = {
    UPSTREAM: (LLM_ERROR,),
    TOOL: (TOOL_ERROR, TIMEOUT),
    ORCHESTRATION: (BUDGET_EXCEEDED, TIMEOUT),
}

# Recorded series (group `agentopz-triage`).
GROUP = "agentopz-triage"
SCORE = "agentopz:suspect:score"
TOP = "agentopz:suspect:top"
RUNS = "agentopz:suspect:runs"
RUN_SHARE = "agentopz:suspect:run_share"
TOOL_ERROR_SHARE = "agentopz:suspect:tool_error_share"
MODEL_ERROR_SHARE = "agentopz:suspect:model_error_share"
VERSION_FAILURE_SHARE = "agentopz:suspect:version_failure_share"
OTHER_VERSIONS_FAILURE_SHARE = "agentopz:suspect:other_versions_failure_share"
# Suffixes: the series over the window before `now`, and how much a share rose since then.
BEFORE = "_before"
RISE = "_rise"


# -- the decision, over plain counts (the console's history) ------------------------------------


@dataclass
class Counts:
    """One agent's runs over one window."""

    runs: int = 0
    outcomes: Mapping[str, int] = field(default_factory=dict)
    tools: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # tool -> (calls, failed)
    models: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # model -> (calls, failed)
    versions: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # version -> (runs, failed runs)

    def share(self, outcomes: tuple[str, ...]) -> float | None:
        if self.runs < MIN_RUNS:
            return None
        return sum(self.outcomes.get(outcome, 0) for outcome in outcomes) / self.runs


@dataclass(frozen=True)
class Evidence:
    """A share the score rests on: its baseline (the window before, or the other versions) and now."""

    what: str
    baseline: float | None
    current: float | None


@dataclass(frozen=True)
class Suspect:
    kind: str
    component: str
    score: float
    evidence: tuple[Evidence, ...]


def _failed_share(calls: Mapping[str, tuple[int, int]], name: str) -> float | None:
    count, failed = calls.get(name, (0, 0))
    return failed / count if count else None


def _rise(before: float | None, now: float | None) -> float | None:
    return None if before is None or now is None else max(now - before, 0.0)


def suspects(
    now: Counts,
    before: Counts,
    fleet_models_now: Mapping[str, tuple[int, int]],
    fleet_models_before: Mapping[str, tuple[int, int]],
) -> list[Suspect]:
    """The agent's suspects with a score of at least MIN_SCORE, highest first (the rules' definitions)."""
    found: list[Suspect] = []
    run_evidence = {}
    rises = {}
    for kind, outcomes in SUSPECT_OUTCOMES.items():
        what = f"share of runs ending {' or '.join(outcomes)}"
        run_evidence[kind] = Evidence(what, before.share(outcomes), now.share(outcomes))
        rises[kind] = _rise(run_evidence[kind].baseline, run_evidence[kind].current)
    for kind, calls_now, calls_before, where in (
        (TOOL, now.tools, before.tools, "this agent"),
        (UPSTREAM, fleet_models_now, fleet_models_before, "all agents"),
    ):
        run_rise = rises[kind]
        # Upstream: only the models this agent called now.
        names = now.tools if kind == TOOL else now.models
        for name in sorted(names):
            call_before, call_now = _failed_share(calls_before, name), _failed_share(calls_now, name)
            call_rise = _rise(call_before, call_now)
            if run_rise is None or call_rise is None or min(run_rise, call_rise) < MIN_SCORE:
                continue
            call_evidence = Evidence(f"failed share of {name} calls ({where})", call_before, call_now)
            found.append(Suspect(kind, name, min(run_rise, call_rise), (run_evidence[kind], call_evidence)))
    orchestration = rises[ORCHESTRATION]
    if orchestration is not None:
        explained = max((s.score for s in found if s.kind in (TOOL, UPSTREAM)), default=0.0)
        if orchestration - explained >= MIN_SCORE:
            found.append(Suspect(ORCHESTRATION, "", orchestration - explained, (run_evidence[ORCHESTRATION],)))
    total_runs = sum(runs for runs, _ in now.versions.values())
    total_failed = sum(failed for _, failed in now.versions.values())
    for version, (runs, failed) in sorted(now.versions.items()):
        other_runs, other_failed = total_runs - runs, total_failed - failed
        if runs < MIN_RUNS or other_runs < MIN_RUNS:
            continue
        score = failed / runs - other_failed / other_runs
        if score >= MIN_SCORE:
            what = f"failed share of {version}'s runs (baseline: the other versions now)"
            evidence = Evidence(what, other_failed / other_runs, failed / runs)
            found.append(Suspect(PROMPT_VERSION, version, score, (evidence,)))
    return sorted(found, key=lambda suspect: -suspect.score)


# -- the same decision as Prometheus recording rules --------------------------------------------

AGENT_LABELS = "service, agent"


def _increase(metric: str, by: str, matcher: str = "", before: bool = False) -> str:
    selector = "{" + matcher + "}" if matcher else ""
    offset = f" offset {WINDOW}" if before else ""
    return f"sum by ({by}) (increase({metric}{selector}[{WINDOW}]{offset}))"


def _call_share(metric: str, by: str, failed: str, before: bool, floor: str) -> str:
    total = _increase(metric, by, before=before)
    # No failed series yet is a share of 0, not a missing one.
    return f"(\n  {_increase(metric, by, failed, before)}\n  or\n  0 * {total}\n)\n/\n({total} {floor})\n"


def _outcomes(outcomes: tuple[str, ...]) -> str:
    return f'outcome=~"{"|".join(outcomes)}"' if len(outcomes) > 1 else f'outcome="{outcomes[0]}"'


def _minimum(left: str, right: str) -> str:
    """min(left, right) of two vectors with the same labels (PromQL has no binary min)."""
    return f"(\n  ({left})\n  <=\n  ({right})\n  or\n  ({right})\n  <\n  ({left})\n)"


FAILED_CALL = 'status!="ok"'


def _windowed_rules(suffix: str, before: bool) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"record": RUNS + suffix, "expr": _increase("agentopz_runs_total", AGENT_LABELS, before=before) + "\n"}
    ]
    for kind, outcomes in SUSPECT_OUTCOMES.items():
        failed = _increase("agentopz_runs_total", AGENT_LABELS, _outcomes(outcomes), before)
        rules.append(
            {
                "record": RUN_SHARE + suffix,
                "expr": f"(\n  {failed}\n  or\n  0 * {RUNS}{suffix}\n)\n/\n({RUNS}{suffix} >= {MIN_RUNS})\n",
                "labels": {"suspect": kind},
            }
        )
    rules.append(
        {
            "record": TOOL_ERROR_SHARE + suffix,
            "expr": _call_share("agentopz_tool_calls_total", "service, agent, tool", FAILED_CALL, before, "> 0"),
        }
    )
    rules.append(
        {
            "record": MODEL_ERROR_SHARE + suffix,
            "expr": _call_share("agentopz_llm_calls_total", "provider, model", FAILED_CALL, before, "> 0"),
        }
    )
    return rules


def _rise_rules() -> list[dict[str, Any]]:
    """How much each share rose from the window before to now (0 when it fell)."""
    return [
        {"record": name + RISE, "expr": f"clamp_min({name} - {name}{BEFORE}, 0)\n"}
        for name in (RUN_SHARE, TOOL_ERROR_SHARE, MODEL_ERROR_SHARE)
    ]


def _run_rise(kind: str) -> str:
    return f'sum by ({AGENT_LABELS}) ({RUN_SHARE}{RISE}{{suspect="{kind}"}})'


def _version_rules() -> list[dict[str, Any]]:
    by = "service, agent, prompt_version"
    runs = "agentopz:suspect:version_runs"
    failed = "agentopz:suspect:version_failed_runs"
    failed_outcomes = f'outcome!="{SUCCESS}"'

    def others(name: str) -> str:
        return f"sum by ({AGENT_LABELS}) ({name}) - on ({AGENT_LABELS}) group_right () {name}"

    return [
        {"record": runs, "expr": _increase("agentopz_runs_total", by) + "\n"},
        {
            "record": failed,
            "expr": f"{_increase('agentopz_runs_total', by, failed_outcomes)}\nor\n0 * {runs}\n",
        },
        {"record": VERSION_FAILURE_SHARE, "expr": f"{failed}\n/\n({runs} >= {MIN_RUNS})\n"},
        {
            "record": OTHER_VERSIONS_FAILURE_SHARE,
            "expr": f"({others(failed)})\n/\n(({others(runs)}) >= {MIN_RUNS})\n",
        },
    ]


def _score_rule(kind: str, score: str, component: str = "", function: str = "label_replace") -> dict[str, Any]:
    """A suspect's score, kept from MIN_SCORE up, with its `component` label made by `function`."""
    expr = f"{score}\n>= {MIN_SCORE}"
    if component:
        expr = f'{function}(\n{expr},\n"component", {component}\n)'
    return {"record": SCORE, "expr": expr + "\n", "labels": {"suspect": kind}}


def _score_rules() -> list[dict[str, Any]]:
    link = f"(sum by ({AGENT_LABELS}, provider, model) (increase(agentopz_llm_calls_total[{WINDOW}])) > 0)"
    model_rise = MODEL_ERROR_SHARE + RISE
    upstream_runs = f"{link} * 0 + on ({AGENT_LABELS}) group_left () {_run_rise(UPSTREAM)}"
    upstream_calls = f"{link} * 0 + on (provider, model) group_left () {model_rise}"
    tool_rise = TOOL_ERROR_SHARE + RISE
    tool_runs = f"{tool_rise} * 0 + on ({AGENT_LABELS}) group_left () {_run_rise(TOOL)}"
    orchestration = _run_rise(ORCHESTRATION)
    explained = f'max by ({AGENT_LABELS}) ({SCORE}{{suspect=~"{TOOL}|{UPSTREAM}"}})'
    # Run limits hit that no tool or upstream model explains.
    unexplained = f"{orchestration}\n- (\n  {explained}\n  or\n  0 * {orchestration}\n)"
    return [
        _score_rule(UPSTREAM, _minimum(upstream_runs, upstream_calls), '"/", "provider", "model"', "label_join"),
        _score_rule(TOOL, _minimum(tool_runs, tool_rise), '"$1", "tool", "(.*)"'),
        _score_rule(ORCHESTRATION, unexplained),
        _score_rule(
            PROMPT_VERSION,
            f"{VERSION_FAILURE_SHARE} - {OTHER_VERSIONS_FAILURE_SHARE}",
            '"$1", "prompt_version", "(.*)"',
        ),
        {"record": TOP, "expr": f"topk by ({AGENT_LABELS}) (1, {SCORE})\n"},
    ]


def generate_rules() -> dict[str, Any]:
    """The `agentopz-triage` rule group (a `groups:` document): rules run in order, so each reads the
    series recorded before it at the same evaluation."""
    rules = [
        *_windowed_rules("", False),
        *_windowed_rules(BEFORE, True),
        *_rise_rules(),
        *_version_rules(),
        *_score_rules(),
    ]
    return {"groups": [{"name": GROUP, "rules": rules}]}


def render_rules() -> str:
    header = (
        "# Triage recording rules (which part of an agent moved), generated by `agentopz-otel triage rules`.\n"
        "# Do not edit: the definitions live in agentopz_otel/triage.py.\n"
    )
    return header + dump_rules(generate_rules())


def suspect_annotation(group_by: list[str]) -> str | None:
    """The alert annotation template naming the agent's top suspect; None without an agent label."""
    if "agent" not in group_by:
        return None
    matchers = ",".join(f"{label}=%q" for label in group_by)
    arguments = " ".join(f"$labels.{label}" for label in group_by)
    return (
        f'{{{{ with printf "{TOP}{{{matchers}}}" {arguments} | query }}}}{{{{ with first . }}}}'
        "{{ .Labels.suspect }}{{ with .Labels.component }} {{ . }}{{ end }}"
        ' (score {{ printf "%.2f" .Value }}){{ end }}'
        "{{ else }}none (no prompt version, tool, upstream model or orchestration moved){{ end }}"
    )
