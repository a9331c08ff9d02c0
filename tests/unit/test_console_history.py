"""The console's run history and figures: windows, caps, percentiles, SLO marks, escaping."""

from __future__ import annotations

from agentopz_otel.extensions.console import pages
from agentopz_otel.extensions.console.figures import agent_figures, agent_status, slo_status, triage
from agentopz_otel.extensions.console.history import RunHistory, percentile
from agentopz_otel.metrics import CardinalityConfig, Registry
from agentopz_otel.records import InFlightRuns, RunRecord
from agentopz_otel.slo import parse_spec

NOW = 1_800_000_000.0  # on a whole hour, so bucket edges are easy to reason about


def record(agent: str = "support", version: str = "v1", outcome: str = "success", **fields) -> RunRecord:
    values = {
        "trace_id": "ab" * 16,
        "root_span_id": "cd" * 8,
        "service": "svc",
        "agent": agent,
        "prompt_version": version,
        "outcome": outcome,
        "started_at": NOW - 2,
        "finished_at": NOW,
        "duration_seconds": 2.0,
        "cost_usd": 0.01,
        "cost_complete": True,
        "tokens": {},
        "steps": 1,
        "llm_calls": 1,
        "llm_errors": 0,
        "tool_calls": 0,
        "tool_errors": 0,
        "sub_agents": 0,
        "models": ["gpt-4o"],
        **fields,
    }
    return RunRecord(**values)


def history(slos: str | None = None, recent: int = 1000, **cardinality) -> RunHistory:
    spec = parse_spec(slos).slos if slos else []
    registry = Registry(CardinalityConfig(**cardinality)) if cardinality else Registry()
    return RunHistory(registry, spec, recent, NOW - 86400)


def test_windows_count_by_minute_for_the_hour_and_by_hour_for_the_day():
    runs = history()
    runs.add([record(cost_usd=0.01)], NOW - 2 * 3600)  # two hours ago: the day only
    runs.add([record(cost_usd=0.02)], NOW - 1800)  # half an hour ago
    runs.add([record(cost_usd=0.03, outcome="llm_error")], NOW - 240)  # four minutes ago
    runs.add([record(cost_usd=0.06)], NOW)
    agent = runs.agents["support"]
    by_window = {window: agent_figures(agent, window, NOW, runs.since) for window in ("5m", "1h", "24h")}
    assert {window: fig.runs for window, fig in by_window.items()} == {"5m": 2, "1h": 3, "24h": 4}
    assert by_window["5m"].mean_cost == 0.045
    assert by_window["5m"].success_share == 0.5
    assert by_window["1h"].outcomes == {"success": 2, "llm_error": 1}
    assert by_window["1h"].runs_per_minute == 3 / 60
    assert by_window["1h"].per_minute[-1] == 1 and by_window["1h"].per_minute[-5] == 1
    assert sum(by_window["1h"].per_minute) == 3


def test_old_buckets_leave_the_windows():
    runs = history()
    runs.add([record()], NOW - 25 * 3600)
    runs.add([record()], NOW - 3601)
    agent = runs.agents["support"]
    assert agent_figures(agent, "1h", NOW, runs.since).runs == 0
    assert agent_figures(agent, "24h", NOW, runs.since).runs == 1
    runs.add([record()], NOW)
    assert len(agent.total.minutes) == 1  # the minute bucket of an hour ago was dropped
    assert [index for index, _ in agent.total.hours] == [int(NOW // 3600) - 2, int(NOW // 3600)]


def test_names_past_the_metrics_caps_are_other_and_recent_runs_are_bounded():
    runs = history(recent=10, limits={"agent": 2, "prompt_version": 2})
    runs.add([record(agent=name, version=f"v{index}") for index, name in enumerate("abcd")], NOW)
    assert sorted(runs.agents) == ["a", "b", "other"]
    assert sorted(runs.agents["other"].versions) == ["other"]
    runs.add([record(agent="a", duration_seconds=float(index)) for index in range(25)], NOW)
    agent = runs.agents["a"]
    assert len(agent.recent) == 10
    fig = agent_figures(agent, "1h", NOW, runs.since)
    assert (fig.runs, fig.sampled_runs, fig.p95_duration) == (26, 10, 24.0)


def test_percentile_is_nearest_rank():
    assert percentile([float(value) for value in range(1, 21)], 0.95) == 19.0
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([], 0.95) is None


SUCCESS_90 = """
slos:
  - name: support-success
    match: {agent: "sup.*"}
    objective: 90
    sli: {kind: success}
"""


def test_an_agent_exactly_at_its_error_budget_is_not_failing_one_run_more_is():
    runs = history(SUCCESS_90)
    runs.add([record(outcome="error")] + [record()] * 9, NOW - 7200)
    [slo] = runs.slos
    agent = runs.agents["support"]
    status = slo_status(slo, agent, NOW)
    assert (status.runs, status.budget_left, status.failing) == (10, 0.0, None)
    runs.add([record(outcome="timeout")], NOW - 7200)
    status = slo_status(slo, agent, NOW)
    assert round(status.budget_left, 6) == round(1 - (2 / 11) / 0.1, 6)
    assert status.failing == "support-success: 2 of 11 runs bad (success) in the last day, 18.2% where 10.0% is allowed"
    runs.add([record(agent="other-bot", outcome="error")], NOW)
    assert slo_status(slo, runs.agents["other-bot"], NOW) is None  # the SLO does not match it


def test_a_fast_burn_over_the_hour_and_five_minutes_fails_at_once_unless_too_few_runs():
    spec = """
slos:
  - name: support-quality
    objective: 99.9
    min_runs: 10
    sli: {kind: quality}
"""
    runs = history(spec)
    runs.add([record(outcome="quality_failure")] + [record()] * 8, NOW)
    [slo] = runs.slos
    assert slo_status(slo, runs.agents["support"], NOW).failing is None  # 9 runs < min_runs
    runs.add([record()], NOW)
    failing = slo_status(slo, runs.agents["support"], NOW).failing
    assert failing == (
        "support-quality: 1 of 10 runs bad (quality) in the last hour, 10.0% where 0.1% is allowed: "
        "the error budget burns 100.0x too fast"
    )


def test_latency_and_cost_slos_count_only_runs_that_have_the_figure():
    spec = """
slos:
  - name: fast
    objective: 50
    sli: {kind: latency, threshold_seconds: 5}
  - name: cheap
    objective: 50
    sli: {kind: cost, threshold_usd: 0.05}
"""
    runs = history(spec)
    runs.add(
        [
            record(duration_seconds=5.0, cost_usd=0.05),  # exactly at both thresholds: good
            record(duration_seconds=5.5, cost_usd=0.2, cost_complete=False),
            record(outcome="abandoned", duration_seconds=None),
        ],
        NOW,
    )
    fast, cheap = runs.slos
    agent = runs.agents["support"]
    day = agent.total.window(86400, NOW)
    assert (day.slo_events("fast"), day.slo_events("cheap")) == ((1, 2), (0, 2))
    assert slo_status(fast, agent, NOW).budget_left == 0.0
    assert slo_status(cheap, agent, NOW).budget_left == 1.0


def test_pages_escape_every_name_and_show_no_content_unless_asked():
    hostile = '<img src=x onerror="alert(1)">'
    runs = history()
    runs.add([record(agent=hostile, version=hostile, input_start="secret <b>prompt</b>")], NOW)
    agent = runs.agents[hostile]
    status = agent_status(agent, [], "1h", NOW, runs.since, InFlightRuns(1, 0.5, "ef" * 16, 3))
    page = pages.PageContext("Fleet", "fleet", runs.since, NOW, trace_url_template="https://t.example/{trace_id}")
    fleet = pages.fleet_page(page, [status], "1h")
    assert hostile not in fleet and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in fleet
    assert 'href="https://t.example/' + "ef" * 16 + '"' in fleet
    versions = [(hostile, "candidate", agent_figures(agent, "1h", NOW, runs.since, hostile))]
    tally = agent.total.window(3600, NOW, detail=True).detail
    found = triage(runs, agent, NOW)
    routing = pages.routing_section(page, hostile, [], [hostile])
    assert hostile not in routing and "&lt;img src=x" in routing
    detail = pages.agent_page(page, status, versions, tally, list(agent.recent), [], [], "1h", "", found, routing)
    assert hostile not in detail and "secret" not in detail
    page.show_content = True
    shown = pages.agent_page(page, status, versions, tally, list(agent.recent), [], [], "1h", "", found, routing)
    assert "secret &lt;b&gt;prompt&lt;/b&gt;" in shown and "<b>prompt</b>" not in shown


def test_triage_compares_the_last_half_hour_with_the_one_before():
    history = RunHistory(Registry(CardinalityConfig()), [], 100, NOW - 3600)
    healthy = [record(calls_by_tool={"run_tests": [1, 0]}, steps=2, tool_calls=1) for _ in range(20)]
    history.add(healthy, NOW - 1800)  # the minute that ends the half hour before
    broken = [
        record(outcome="tool_error" if index < 8 else "success", calls_by_tool={"run_tests": [1, int(index < 8)]})
        for index in range(20)
    ]
    history.add(broken, NOW - 60)
    history.add([record(agent="other", calls_by_model={"gpt-4o": [3, 0]})], NOW)
    found = triage(history, history.agents["support"], NOW)
    assert (found.before.runs, found.now.runs) == (20, 20)
    assert found.before.tools == {"run_tests": (20, 0)} and found.now.tools == {"run_tests": (20, 8)}
    [suspect] = found.suspects
    assert (suspect.kind, suspect.component, suspect.score) == ("tool", "run_tests", 0.4)
    assert (found.steps, found.tool_calls) == ((2.0, 1.0), (1.0, 0.0))
    # Half an hour later the broken runs are the half hour before, and no run is new: nothing moved.
    later = triage(history, history.agents["support"], NOW + 1800)
    assert (later.before.runs, later.now.runs, later.suspects) == (20, 0, [])
