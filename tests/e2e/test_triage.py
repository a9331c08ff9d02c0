"""Triage: the suspect rules (generated, checked by promtool) and the same decision over plain counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT
from support.processes import require_binary

from agentopz_otel.triage import (
    MIN_RUNS,
    ORCHESTRATION,
    PROMPT_VERSION,
    TOOL,
    UPSTREAM,
    Counts,
    Evidence,
    render_rules,
    suspect_annotation,
    suspects,
)

ALERT_RULES = ROOT / "alert-rules"
RULES = ALERT_RULES / "triage-rules.yaml"


def test_committed_rules_are_what_the_generator_makes():
    assert RULES.read_text() == render_rules()


def test_triage_rules_command_prints_and_writes_the_rules(tmp_path):
    command = [sys.executable, "-m", "agentopz_otel", "triage", "rules"]
    printed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert printed.stdout == render_rules()
    out = tmp_path / "triage-rules.yaml"
    subprocess.run([*command, "-o", str(out)], capture_output=True, text=True, check=True)
    assert out.read_text() == render_rules()


def _promtool_tests(tmp_path: Path, rules: str) -> subprocess.CompletedProcess:
    promtool = require_binary("promtool")
    (tmp_path / "triage-rules.yaml").write_text(rules)
    for name in ("slo-rules.yaml", "agentopz-alerts.yaml"):
        (tmp_path / name).write_text((ALERT_RULES / name).read_text())
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "triage.yml").write_text((ALERT_RULES / "tests" / "triage.yml").read_text())
    return subprocess.run([promtool, "test", "rules", "triage.yml"], capture_output=True, text=True, cwd=tests)


def test_promtool_triage_tests_pass_on_the_shipped_rules(tmp_path):
    result = _promtool_tests(tmp_path, render_rules())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("broken", "fails"),
    [
        # Orchestration no longer discounts what a tool explains: the hanging carrier API's timeouts
        # become an orchestration suspect too.
        (('"tool|upstream"', '"upstream"'), 'expr: "agentopz:suspect:score", time: 1h'),
        # Two suspects per agent instead of the top one.
        (("(1, agentopz:suspect:score)", "(2, agentopz:suspect:score)"), 'expr: "agentopz:suspect:top", time: 1h'),
        # No floor on the runs in a window: the quiet agent's single llm_error counts.
        ((">= 10)", ">= 1)"), 'expr: "agentopz:suspect:run_share{agent=\\"nightly\\"}", time: 1h'),
    ],
)
def test_promtool_triage_tests_catch_a_broken_rule(tmp_path, broken, fails):
    old, new = broken
    rules = render_rules()
    assert old in rules
    result = _promtool_tests(tmp_path, rules.replace(old, new))
    assert result.returncode == 1
    assert fails in result.stderr


def test_the_annotation_queries_the_top_suspect_of_the_alerts_agent():
    assert suspect_annotation(["service", "agent"]) == (
        '{{ with printf "agentopz:suspect:top{service=%q,agent=%q}" $labels.service $labels.agent | query }}'
        "{{ with first . }}{{ .Labels.suspect }}{{ with .Labels.component }} {{ . }}{{ end }}"
        ' (score {{ printf "%.2f" .Value }}){{ end }}'
        "{{ else }}none (no prompt version, tool, upstream model or orchestration moved){{ end }}"
    )
    assert suspect_annotation(["agent"]).startswith('{{ with printf "agentopz:suspect:top{agent=%q}" $labels.agent |')
    assert suspect_annotation(["service"]) is None
    assert suspect_annotation([]) is None


# The same incidents as alert-rules/tests/triage.yml, per half hour, through the Python decision.


def counts(runs: int, outcomes: dict[str, int], **calls) -> Counts:
    return Counts(runs=runs, outcomes=outcomes, **calls)


def test_rate_limit_storm_names_the_upstream_model():
    before = counts(300, {"success": 300}, models={"openai/gpt-4o-mini": (600, 0)})
    now = counts(300, {"success": 180, "llm_error": 120}, models={"openai/gpt-4o-mini": (600, 300)})
    fleet_before = {"openai/gpt-4o-mini": (900, 0), "openai/gpt-4o": (240, 0)}
    fleet_now = {"openai/gpt-4o-mini": (900, 450), "openai/gpt-4o": (240, 0)}
    [suspect] = suspects(now, before, fleet_now, fleet_before)
    assert (suspect.kind, suspect.component) == (UPSTREAM, "openai/gpt-4o-mini")
    assert suspect.score == pytest.approx(0.4)
    assert suspect.evidence == (
        Evidence("share of runs ending llm_error", 0.0, 0.4),
        Evidence("failed share of openai/gpt-4o-mini calls (all agents)", 0.0, 0.5),
    )


def test_broken_tool_names_the_tool_and_a_retried_tool_is_no_suspect():
    before = counts(300, {"success": 270, "tool_error": 30}, tools={"run_tests": (300, 30), "read_file": (600, 0)})
    now = counts(300, {"success": 180, "tool_error": 120}, tools={"run_tests": (300, 180), "read_file": (600, 0)})
    [suspect] = suspects(now, before, {}, {})
    assert (suspect.kind, suspect.component) == (TOOL, "run_tests")
    assert suspect.score == pytest.approx(0.3)
    retried_before = counts(300, {"success": 300}, tools={"search_kb": (300, 0)})
    retried_now = counts(300, {"success": 300}, tools={"search_kb": (300, 60)})
    assert suspects(retried_now, retried_before, {}, {}) == []


def test_runaway_loop_names_orchestration_not_the_failing_tool():
    before = counts(60, {"success": 60}, tools={"web_search": (180, 0)}, models={"anthropic/claude": (180, 0)})
    outcomes = {"success": 48, "budget_exceeded": 12}
    now = counts(60, outcomes, tools={"web_search": (780, 600)}, models={"anthropic/claude": (780, 0)})
    [suspect] = suspects(now, before, {"anthropic/claude": (780, 0)}, {"anthropic/claude": (180, 0)})
    assert (suspect.kind, suspect.component) == (ORCHESTRATION, "")
    assert suspect.score == pytest.approx(0.2)


def test_hanging_tool_explains_the_timeouts_and_outranks_a_smaller_upstream_rise():
    before = counts(
        120, {"success": 118, "timeout": 2}, tools={"carrier_api": (120, 2)}, models={"openai/gpt-4o-mini": (240, 0)}
    )
    now = counts(
        120,
        {"success": 78, "timeout": 30, "llm_error": 12},
        tools={"carrier_api": (120, 36)},
        models={"openai/gpt-4o-mini": (240, 60)},
    )
    found = suspects(now, before, {"openai/gpt-4o-mini": (240, 60)}, {"openai/gpt-4o-mini": (240, 0)})
    assert [(s.kind, s.component) for s in found] == [(TOOL, "carrier_api"), (UPSTREAM, "openai/gpt-4o-mini")]
    assert [s.score for s in found] == pytest.approx([30 / 120 - 2 / 120, 0.1])


def test_bad_canary_names_the_prompt_version():
    now = counts(330, {"success": 300, "quality_failure": 30}, versions={"v12": (300, 6), "v13": (30, 5)})
    [suspect] = suspects(now, now, {}, {})
    assert (suspect.kind, suspect.component) == (PROMPT_VERSION, "v13")
    assert suspect.score == pytest.approx(5 / 30 - 0.02)
    assert suspect.evidence == (
        Evidence("failed share of v13's runs (baseline: the other versions now)", 0.02, pytest.approx(5 / 30)),
    )


def test_healthy_fleet_and_quiet_agents_name_none():
    steady = counts(
        300,
        {"success": 288, "llm_error": 6, "quality_failure": 6},
        tools={"search_kb": (300, 3)},
        models={"openai/gpt-4o-mini": (600, 12)},
        versions={"v12": (270, 11), "v13": (30, 1)},
    )
    assert suspects(steady, steady, {"openai/gpt-4o-mini": (600, 12)}, {"openai/gpt-4o-mini": (600, 12)}) == []
    # One failed run of nine: under the floor of MIN_RUNS runs, so no share and no suspect.
    quiet_before = counts(MIN_RUNS - 1, {"success": MIN_RUNS - 1})
    quiet_now = counts(MIN_RUNS - 1, {"success": MIN_RUNS - 2, "llm_error": 1}, models={"openai/gpt-4o-mini": (9, 1)})
    assert suspects(quiet_now, quiet_before, {"openai/gpt-4o-mini": (9, 9)}, {"openai/gpt-4o-mini": (9, 0)}) == []
    # A rise just under the 5-point floor names nothing; at the floor it does.
    at_floor = counts(100, {"success": 95, "budget_exceeded": 5})
    under = counts(100, {"success": 96, "budget_exceeded": 4})
    base = counts(100, {"success": 100})
    assert suspects(under, base, {}, {}) == []
    assert [s.kind for s in suspects(at_floor, base, {}, {})] == [ORCHESTRATION]


# The demo's own runs (agentopz_otel.fleet plans, seed 1) through the decision, windows by run index:
# at the demo's 2 runs/s its rate-limit storm lasts a minute and its runaway loop is one run in 500,
# so here a window is the 120 runs of a storm, not half an hour.


def _count(calls: dict[str, tuple[int, int]], name: str, failed: bool) -> None:
    count, failures = calls.get(name, (0, 0))
    calls[name] = (count + 1, failures + failed)


def demo_counts(first: int, last: int) -> tuple[dict[str, Counts], dict[str, tuple[int, int]]]:
    """Per agent the Counts of runs first..last-1, and every model's (calls, failed) across agents."""
    from agentopz_otel.fleet import plan_run

    found: dict[str, Counts] = {}
    fleet: dict[str, tuple[int, int]] = {}
    for index in range(first, last):
        plan = plan_run(1, index)
        counts = found.setdefault(plan.agent, Counts(outcomes={}, tools={}, models={}, versions={}))
        counts.runs += 1
        counts.outcomes[plan.intended] = counts.outcomes.get(plan.intended, 0) + 1
        _count(counts.versions, plan.prompt_version or "unknown", plan.intended != "success")
        for call in plan.calls:
            if call.kind == "tool":
                _count(counts.tools, call.name, call.status != "ok")
            else:
                _count(counts.models, f"{call.provider}/{call.name}", call.status != "ok")
                _count(fleet, f"{call.provider}/{call.name}", call.status != "ok")
    return found, fleet


def demo_suspects(before: tuple[int, int], now: tuple[int, int]) -> dict[str, list[tuple[str, str]]]:
    counts_before, fleet_before = demo_counts(*before)
    counts_now, fleet_now = demo_counts(*now)
    return {
        agent: [(s.kind, s.component) for s in suspects(counts, counts_before[agent], fleet_now, fleet_before)]
        for agent, counts in sorted(counts_now.items())
    }


def test_the_demos_storm_and_runaway_loop_name_upstream_and_orchestration():
    # Runs 1500..1619: the second rate-limit storm (OpenAI), and run 1540 is research-assistant's runaway loop.
    found = demo_suspects((1380, 1500), (1500, 1620))
    assert found["code-reviewer"] == [(UPSTREAM, "openai/gpt-4o-2024-08-06")]
    assert found["order-tracker"] == [(UPSTREAM, "openai/gpt-4o-mini")]
    # support-triage calls both OpenAI models, and both are rate limited.
    assert sorted(found["support-triage"]) == [(UPSTREAM, "openai/gpt-4o-2024-08-06"), (UPSTREAM, "openai/gpt-4o-mini")]
    assert found["research-assistant"] == [(ORCHESTRATION, "")]


def test_the_demos_bad_canary_names_its_version_and_quiet_runs_name_none():
    assert demo_suspects((1200, 2400), (0, 1200))["support-triage"] == [(PROMPT_VERSION, "v13")]
    assert demo_suspects((60, 180), (180, 300)) == {
        "code-reviewer": [],
        "order-tracker": [],
        "research-assistant": [],
        "support-triage": [],
    }
