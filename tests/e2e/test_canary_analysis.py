"""Canary analysis end to end, in compressed time: a test agent picks its prompt version per run through
the real OpenFeature client (OFREP provider) and sends its runs through the OpenTelemetry SDK; the
analysis rolls a worse candidate back, walks a healthy one to promotion (also when successes take far
longer than failures, and across a restart of the service), stands still under the kill switch,
reads a fleet's runs from a real Prometheus, and pauses when Prometheus cannot be reached."""

from __future__ import annotations

import heapq
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from openfeature import api
from opentelemetry import trace
from support.canary import (
    AGENT,
    FAST_RUNS,
    MAX_RUN_SECONDS,
    VERSIONS,
    Agent,
    Conversations,
    admin,
    rollout_state,
    run_until,
    wait_state,
)
from support.dashboards import all_panels, dashboards, substitute
from support.processes import free_port
from support.prometheus import start_prometheus
from support.sdk_agent import emit_chat, tracer
from support.service import service_body


def analysis_service(start_service, tmp_path, name: str, prometheus_url: str | None = None):
    analysis: dict = {"interval_seconds": 0.3, "defaults": {"max_run_seconds": MAX_RUN_SECONDS}}
    if prometheus_url:
        analysis["prometheus"] = {"url": prometheus_url, "timeout_seconds": 1, "lag_seconds": 2}
    extensions = {"storage": {"path": str(tmp_path / f"{name}.sqlite")}, "rollouts": {}, "canary_analysis": analysis}
    return start_service(service_body(runs=FAST_RUNS, extensions=extensions))


def start_rollout(service, analysis: dict | None = None) -> dict:
    admin(service).define(AGENT, VERSIONS, "v1")
    extra = {} if analysis is None else {"analysis": analysis}
    return admin(service).start(AGENT, "v2", [5, 25, 50, 100], reason="new prompt", **extra)


class SlowSuccesses(Agent):
    """Real traffic's shape: a failed run ends (and is exported) at once, a successful one `success_seconds`
    later, so the service receives each version's failures long before its successes."""

    def __init__(self, flags_url: str, failures_in_ten: dict[str, int], success_seconds: float) -> None:
        super().__init__(flags_url, failures_in_ten)
        self.success_seconds = success_seconds
        self._running: list[tuple[float, int, trace.Span]] = []

    def finish(self, root: trace.Span, end_time: int, failed: bool) -> None:
        if failed:
            root.end()
        else:
            heapq.heappush(self._running, (time.monotonic() + self.success_seconds, self.index, root))
        self.end_due()

    def end_due(self, everything: bool = False) -> None:
        while self._running and (everything or self._running[0][0] <= time.monotonic()):
            heapq.heappop(self._running)[2].end()


@pytest.fixture
def openfeature_domain() -> Iterator[None]:
    yield
    api.clear_providers()


def analysis_entry(service, action: str) -> dict:
    entries = admin(service).ok("GET", f"/api/v1/history?agent={AGENT}")["entries"]
    found = [entry for entry in entries if entry["action"] == action and entry["actor_kind"] == "analysis"]
    assert found, entries
    return found[0]


@pytest.mark.timeout(240)
def test_a_worse_candidate_at_5_percent_is_rolled_back_and_traffic_returns_to_the_baseline(
    start_service, tmp_path, openfeature_domain
):
    service = analysis_service(start_service, tmp_path, "local")
    start_rollout(service)
    agent = Agent(service.admin_url, {"v1": 1, "v2": 3})  # 10% against 30%: 3x the failures
    with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        run_until(agent, lambda failed: run_tracer, lambda: rollout_state(service)["state"] != "progressing", 4000)
        rollout = wait_state(service, "rolled_back")
        assert (rollout["state"], rollout["weight"]) == ("rolled_back", 0)
        entry = analysis_entry(service, "rollback")
        evidence = entry["evidence"]
        assert (entry["actor"], entry["before"]["weight"], entry["after"]["state"]) == (
            "canary_analysis",
            5,
            "rolled_back",
        )
        assert evidence["failed_guards"] == ["quality"]
        assert (evidence["baseline"], evidence["candidate"], evidence["source"]) == ("v1", "v2", "local")
        quality = evidence["guards"]["quality"]
        assert quality["verdict"] == "fail"
        assert quality["statistic"] >= quality["threshold"]
        assert quality["evidence"]["candidate_runs"] >= 20  # the guard's minimum
        assert quality["evidence"]["candidate_failure_share"] > 2 * quality["evidence"]["baseline_failure_share"]
        assert evidence["guards"]["cost"]["verdict"] == "pass"
        assert evidence["guards"]["hard_limits"]["verdict"] == "pass"
        status = rollout["analysis_status"]
        assert (status["decision"], status["source"], status["guards"]["quality"]["verdict"]) == (
            "rollback",
            "local",
            "fail",
        )
        status_command = subprocess.run(
            [sys.executable, "-m", "agentopz_otel", "rollout", "status", AGENT, "--url", service.admin_url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "  analysis (local): quality fail (" in status_command.stdout, status_command.stdout
        assert "; rollback at " in status_command.stdout
        assert ": canary analysis: quality failed" in status_command.stdout
        # The very next evaluations and runs are the baseline's.
        assert {agent.version(f"after-{i}") for i in range(200)} == {"v1"}
        before = dict(agent.runs)
        for _ in range(40):
            agent.run(lambda failed: run_tracer)
        assert agent.runs["v2"] == before["v2"]
    assert service.wait_for("agentopz_rollout_analysis", 1, agent=AGENT, guard="quality", verdict="fail") == 1
    assert service.value("agentopz_rollout_analysis", agent=AGENT, guard="quality", verdict="pass") == 0
    assert service.value("agentopz_rollout_analysis_decisions_total", agent=AGENT, decision="rollback") == 1
    assert service.value("agentopz_rollout_actions_total", agent=AGENT, action="rollback", actor="analysis") == 1
    assert service.value("agentopz_rollout_analysis_runs", agent=AGENT, prompt_version="v2") >= 20
    assert service.value("agentopz_rollout_analysis_source_up", source="local") == 1


@pytest.mark.timeout(240)
def test_a_healthy_candidate_walks_the_steps_and_is_promoted(start_service, tmp_path, openfeature_domain):
    service = analysis_service(start_service, tmp_path, "walk")
    start_rollout(service, {"step_min_runs": 10, "step_min_seconds": 0, "quality": {"min_runs": 10}})
    agent = Agent(service.admin_url, {"v1": 1, "v2": 0})
    weights = []

    def promoted() -> bool:
        rollout = rollout_state(service)
        if not weights or weights[-1] != rollout["weight"]:
            weights.append(rollout["weight"])
        return rollout["state"] == "promoted"

    with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        run_until(agent, lambda failed: run_tracer, promoted, 8000)
    rollout = wait_state(service, "promoted")
    assert rollout["state"] == "promoted"
    assert weights == [5, 25, 50, 100]
    advances = [
        entry
        for entry in admin(service).ok("GET", f"/api/v1/history?agent={AGENT}")["entries"]
        if entry["actor_kind"] == "analysis"
    ]
    assert [entry["action"] for entry in reversed(advances)] == ["advance", "advance", "advance", "promote"]
    assert all(entry["evidence"]["guards"]["quality"]["verdict"] == "pass" for entry in advances)
    assert {agent.version(f"after-{i}") for i in range(100)} == {"v2"}
    assert [flag["baseline"] for flag in admin(service).ok("GET", "/api/v1/agents")["agents"]] == ["v2"]
    assert service.value("agentopz_rollout_analysis_decisions_total", agent=AGENT, decision="promote") == 1


@pytest.mark.timeout(300)
def test_prometheus_source_analyses_what_every_replica_saw(start_service, tmp_path, openfeature_domain):
    """Two replicas each get part of the traces; every failed run goes to the second. The first replica
    decides, from Prometheus, on failures it never saw itself."""
    prometheus_port = free_port()
    deciding = analysis_service(start_service, tmp_path, "a", f"http://127.0.0.1:{prometheus_port}")
    other = analysis_service(start_service, tmp_path, "b")
    targets = [f"127.0.0.1:{deciding.admin_port}", f"127.0.0.1:{other.admin_port}"]
    prometheus = start_prometheus(tmp_path, targets, port=prometheus_port)
    try:
        prometheus.wait_for('up{job="agentopz"} == 1', timeout=30)
        start_rollout(deciding)
        agent = Agent(deciding.admin_url, {"v1": 1, "v2": 3})
        with (
            tracer("grpc", deciding.grpc_endpoint, service="support-svc", batch=True) as to_deciding,
            tracer("grpc", other.grpc_endpoint, service="support-svc", batch=True) as to_other,
        ):
            alternate = iter(range(10**6))

            def pick(failed: bool) -> trace.Tracer:
                return to_other if failed or next(alternate) % 2 else to_deciding

            run_until(agent, pick, lambda: rollout_state(deciding)["state"] != "progressing", 4000, pace=0.005)
        rollout = wait_state(deciding, "rolled_back", timeout=30)
        assert rollout["state"] == "rolled_back"
        evidence = analysis_entry(deciding, "rollback")["evidence"]
        assert (evidence["source"], evidence["failed_guards"]) == ("prometheus", ["quality"])
        quality = evidence["guards"]["quality"]["evidence"]
        assert quality["candidate_failures"] > 0
        # The deciding replica itself saw no failed run: the failures came from the other one's series.
        assert deciding.value("agentopz_runs_total", agent=AGENT, prompt_version="v2", outcome="llm_error") == 0
        assert other.value("agentopz_runs_total", agent=AGENT, prompt_version="v2", outcome="llm_error") > 0
        assert deciding.value("agentopz_rollout_analysis_source_up", source="prometheus") == 1
        time.sleep(2)  # scraped after the rollback
        variables = {"agent": AGENT, "prompt_version": ".*", "__rate_interval": "1m", "__range": "5m"}
        checked = 0
        for panel in all_panels(dashboards()["agentopz-prompts.json"]):
            if panel["title"].startswith("Canary analysis"):
                for target in panel["targets"]:
                    expr = substitute(target["expr"], variables)
                    assert prometheus.query(expr), f"{panel['title']}: no data for {expr}"
                    checked += 1
        assert checked == 7
    finally:
        prometheus.stop()


@pytest.mark.timeout(120)
def test_unreachable_prometheus_is_inconclusive_and_pauses_the_rollout_at_its_weight(
    start_service, tmp_path, openfeature_domain
):
    service = analysis_service(start_service, tmp_path, "down", f"http://127.0.0.1:{free_port()}")
    start_rollout(service, {"step_min_runs": 0, "step_min_seconds": 0})
    rollout = wait_state(service, "paused")
    assert (rollout["state"], rollout["weight"], rollout["step_index"]) == ("paused", 5, 0)
    entry = analysis_entry(service, "pause")
    assert "data source unreachable" in entry["reason"]
    status = rollout["analysis_status"]
    assert status["source"] == "prometheus"
    assert "prometheus http://127.0.0.1:" in status["source_error"]
    assert {guard["verdict"] for guard in status["guards"].values()} == {"inconclusive"}
    assert service.wait_for("agentopz_rollout_analysis", 1, agent=AGENT, guard="quality", verdict="inconclusive") == 1
    assert service.value("agentopz_rollout_analysis_source_up", source="prometheus") == 0
    assert service.value("agentopz_rollout_analysis_source_errors_total", source="prometheus") >= 1
    time.sleep(1.5)  # several more looks: still paused, never advanced or promoted
    assert rollout_state(service)["state"] == "paused"
    assert [e["action"] for e in admin(service).ok("GET", f"/api/v1/history?agent={AGENT}")["entries"]] == [
        "pause",
        "start",
        "define",
    ]
    # Paused at its weight: the candidate still serves its 5%.
    agent = Agent(service.admin_url, {"v1": 0, "v2": 0})
    versions = Counter(agent.version(f"user-{i}") for i in range(2000))
    assert 50 < versions["v2"] < 150


def test_invalid_analysis_config_is_refused_with_the_reason(start_service, tmp_path):
    service = analysis_service(start_service, tmp_path, "invalid")
    admin(service).define(AGENT, VERSIONS, "v1")
    body = {"agent": AGENT, "candidate": "v2", "steps": [5, 100], "analysis": {"quality": {"alpha": 2}}}
    reply = admin(service).call("POST", "/api/v1/rollouts", body)
    assert reply.status == 400
    assert reply.body == {"error": "analysis: invalid analysis: quality.alpha: Input should be less than 0.5"}
    accepted = admin(service).start(AGENT, "v2", [5, 100], analysis={"cost": {"tolerance": 2}})
    assert accepted["analysis"]["cost"] == {
        "enabled": True,
        "tolerance": 2.0,
        "share": 0.15,
        "alpha": None,
        "min_runs": 5,
        "growth": 1.5,
    }
    assert accepted["analysis"]["quality"]["detect_ratio"] == 3.0


def analysis_actions(service) -> list[dict]:
    entries = admin(service).ok("GET", f"/api/v1/history?agent={AGENT}")["entries"]
    return [entry for entry in reversed(entries) if entry["actor_kind"] == "analysis"]


SLOW = {"step_min_runs": 10, "step_min_seconds": 0, "quality": {"min_runs": 10}}


@pytest.mark.timeout(300)
def test_slow_successes_a_restart_and_the_walk_to_promotion(start_service, tmp_path, openfeature_domain):
    """Successes take 2 s, failures end at once; the healthy candidate (no failures, against 1 in 10)
    is promoted, and a restart in the middle continues the analysis: one analysis, its steps once."""
    first = analysis_service(start_service, tmp_path, "slow")
    start_rollout(first, SLOW)
    agent = SlowSuccesses(first.admin_url, {"v1": 1, "v2": 0}, success_seconds=2.0)
    with tracer("grpc", first.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        run_until(agent, lambda failed: run_tracer, lambda: rollout_state(first)["weight"] >= 50, 4000, pace=0.01)
        agent.end_due(everything=True)
    before_restart = analysis_actions(first)
    assert [entry["action"] for entry in before_restart] in (["advance", "advance"], ["advance"] * 3)
    seen = before_restart[-1]["evidence"]["runs"]["v2"]
    assert first.stop() == 0
    # The same storage, a new process: the analysis continues from what it saved.
    second = analysis_service(start_service, tmp_path, "slow")
    api.clear_providers()
    agent = SlowSuccesses(second.admin_url, {"v1": 1, "v2": 0}, success_seconds=2.0)
    with tracer("grpc", second.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        run_until(agent, lambda failed: run_tracer, lambda: rollout_state(second)["state"] == "promoted", 4000, 0.01)
        agent.end_due(everything=True)
    rollout = wait_state(second, "promoted")
    assert rollout["state"] == "promoted"
    actions = analysis_actions(second)
    assert [entry["action"] for entry in actions] == ["advance", "advance", "advance", "promote"]
    promote = actions[-1]["evidence"]
    assert promote["restarts"] == 1
    # The runs and intervals counted before the restart still count after it.
    after_restart = actions[len(before_restart)]["evidence"]
    assert after_restart["restarts"] == 1
    assert after_restart["runs"]["v2"] > seen
    assert after_restart["cohorts"] > before_restart[-1]["evidence"]["cohorts"]
    quality = promote["guards"]["quality"]
    assert quality["verdict"] == "pass"
    # At 100% there is no concurrent baseline: the candidate is tested against the baseline rate known before.
    assert 0.1 < quality["evidence"]["baseline_rate_upper"] < 0.5
    assert quality["evidence"]["candidate_runs_against_known_rate"] >= 10
    assert promote["budget"] == {"quality": 0.03, "cost": 0.0075, "duration": 0.0075, "hard_limits": 0.005}
    assert rollout["analysis_status"]["budget"].startswith("false-rollback budget 5% per rollout")


@pytest.mark.timeout(240)
def test_slow_successes_do_not_hide_a_worse_candidate(start_service, tmp_path, openfeature_domain):
    service = analysis_service(start_service, tmp_path, "slow-worse")
    start_rollout(service, SLOW)
    agent = SlowSuccesses(service.admin_url, {"v1": 1, "v2": 4}, success_seconds=2.0)
    with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        run_until(agent, lambda failed: run_tracer, lambda: rollout_state(service)["state"] != "progressing", 4000)
        agent.end_due(everything=True)
    rollout = wait_state(service, "rolled_back")
    assert (rollout["state"], rollout["weight"]) == ("rolled_back", 0)
    evidence = analysis_entry(service, "rollback")["evidence"]
    assert evidence["failed_guards"] == ["quality"]
    assert [entry["action"] for entry in analysis_actions(service)] == ["rollback"]


@pytest.mark.timeout(120)
def test_the_kill_switch_stops_the_analysis(start_service, tmp_path):
    service = analysis_service(start_service, tmp_path, "disabled")
    start_rollout(service, {"step_min_runs": 0, "step_min_seconds": 0, "quality": {"min_runs": 1}})
    admin(service).ok("POST", f"/api/v1/agents/{AGENT}/disable", {"reason": "incident"})
    # Runs of both versions that would pass every guard (nobody fails).
    with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        for index in range(60):
            attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": AGENT}
            version = "v2" if index % 4 == 0 else "v1"
            with run_tracer.start_as_current_span(
                f"invoke_agent {AGENT}", attributes={**attributes, "agentopz.prompt.version": version}
            ):
                emit_chat(run_tracer)
    time.sleep(MAX_RUN_SECONDS + 2)
    rollout = rollout_state(service)
    assert (rollout["state"], rollout["weight"]) == ("progressing", 5)
    assert rollout["analysis_status"]["suspended"] == "the agent is disabled (kill switch)"
    assert analysis_actions(service) == []
    admin(service).ok("POST", f"/api/v1/agents/{AGENT}/enable", {"reason": "over"})
    # Enabled again, the same evidence lets it advance.
    deadline = time.monotonic() + 20
    while rollout_state(service)["weight"] == 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rollout_state(service)["weight"] == 25
    assert next(entry["action"] for entry in analysis_actions(service)) == "advance"


@pytest.mark.timeout(300)
def test_a_healthy_candidate_with_sticky_correlated_conversations_is_promoted(
    start_service, tmp_path, openfeature_domain
):
    """A conversation's five runs fail together: counted as independent, the candidate's first
    conversation (all five failed) would be five pieces of evidence and roll it back. The runs carry
    their targeting key, the analysis estimates the design effect from them, and the candidate walks."""
    service = analysis_service(start_service, tmp_path, "sticky")
    start_rollout(service, {"step_min_runs": 20, "step_min_seconds": 0, "quality": {"min_runs": 20}})
    agent = Conversations(service.admin_url)

    def decided() -> bool:
        return rollout_state(service)["state"] != "progressing"

    with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        run_until(agent, lambda failed: run_tracer, decided, 8000)
    rollout = wait_state(service, "promoted")
    assert rollout["state"] == "promoted"
    actions = analysis_actions(service)
    assert [entry["action"] for entry in actions] == ["advance", "advance", "advance", "promote"]
    # Both versions failed in one conversation of ten, every run of it (a conversation the split moved to
    # the candidate, or cut short by the promotion, leaves part of its failed runs with each version).
    assert agent.failed["v2"] >= 5 and agent.failed["v1"] >= 5
    quality = [entry["evidence"]["guards"]["quality"]["evidence"] for entry in actions]
    assert all(evidence["design_effect"] > 2 for evidence in quality)


class Outage(Agent):
    """Fails each version's runs at its rate, or 6 in 10 of both versions' runs while `outage` is on (a
    provider outage)."""

    outage = False

    def fails(self, version: str, key: str) -> bool:
        return self.runs[version] % 10 < (6 if self.outage else self.failures_in_ten[version])


def run_history(service, agent: Agent, runs: int) -> None:
    """The baseline's runs before the rollout starts: its history."""
    admin(service).define(AGENT, VERSIONS, "v1")
    with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        for _ in range(runs):
            agent.run(lambda failed: run_tracer)
    # Every one of them finished and counted before the rollout starts.
    service.wait_for("agentopz_runs_total", runs // 10, agent=AGENT, prompt_version="v1", outcome="llm_error")
    time.sleep(0.5)


@pytest.mark.timeout(120)
def test_a_worse_candidate_is_weighed_against_the_baselines_history(start_service, tmp_path, openfeature_domain):
    service = analysis_service(start_service, tmp_path, "history-worse")
    agent = Agent(service.admin_url, {"v1": 1, "v2": 3})
    run_history(service, agent, 300)
    admin(service).start(AGENT, "v2", [5, 25, 50, 100], reason="new prompt")
    with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        run_until(agent, lambda failed: run_tracer, lambda: rollout_state(service)["state"] != "progressing", 4000)
    rollout = wait_state(service, "rolled_back")
    assert (rollout["state"], rollout["analysis_status"]["history_runs"]) == ("rolled_back", 300)
    assert rollout["analysis_status"]["budget"].endswith(
        "; quality's 3.00%: 2.40% against the baseline's history (300 runs), 0.60% against its concurrent runs"
        "; hard_limits's 0.50%: 0.40% against the baseline's history (300 runs), 0.10% against its concurrent runs"
    )
    quality = analysis_entry(service, "rollback")["evidence"]["guards"]["quality"]
    history = quality["evidence"]["history"]
    assert (history["history_runs"], history["history_failure_share"]) == (300, 0.1)
    # The quality guard's 3% split by history_share 0.8, a tenth of each part spent on its rate bound.
    assert (history["alpha"], quality["evidence"]["alpha"]) == (0.0216, 0.0054)
    assert history["vetoed_runs"] == 0
    assert quality["verdict"] == "fail"


@pytest.mark.timeout(120)
def test_an_outage_failing_both_versions_does_not_roll_back_a_healthy_candidate(
    start_service, tmp_path, openfeature_domain
):
    """Against its history alone the candidate's runs in the outage (6 in 10 failed, against 1 in 10
    before) would roll it back; the baseline's concurrent runs show the same shift, so they do not count."""
    service = analysis_service(start_service, tmp_path, "history-outage")
    agent = Outage(service.admin_url, {"v1": 1, "v2": 1})
    run_history(service, agent, 300)
    admin(service).start(AGENT, "v2", [5, 25, 50, 100], reason="new prompt", analysis=SLOW)
    with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
        agent.outage = True
        run_until(agent, lambda failed: run_tracer, lambda: agent.runs["v2"] >= 40, 2000)
        agent.outage = False
        run_until(agent, lambda failed: run_tracer, lambda: rollout_state(service)["state"] != "progressing", 4000)
    rollout = wait_state(service, "promoted")
    assert rollout["state"] == "promoted"
    actions = analysis_actions(service)
    assert [entry["action"] for entry in actions] == ["advance", "advance", "advance", "promote"]
    history = actions[-1]["evidence"]["guards"]["quality"]["evidence"]["history"]
    assert history["history_runs"] == 300
    assert history["vetoed_runs"] >= 40
    assert history["baseline_shifted"] is False


@pytest.mark.timeout(120)
def test_the_prometheus_source_reads_the_baselines_history_at_the_rollouts_start(
    start_service, tmp_path, openfeature_domain
):
    """`increase(...[history] @ start)` over every replica's counters: the baseline's runs by outcome
    from its series' first scrape on (Prometheus has no sample of a counter before it exists), as
    `increase` extrapolates them."""
    import asyncio
    from types import SimpleNamespace

    from agentopz_otel.extensions.canary_analysis.config import PrometheusSource
    from agentopz_otel.extensions.canary_analysis.sources import PrometheusRuns

    service = analysis_service(start_service, tmp_path, "prometheus-history")
    prometheus = start_prometheus(tmp_path, [f"127.0.0.1:{service.admin_port}"])
    try:
        prometheus.wait_for('up{job="agentopz"} == 1', timeout=30)
        agent = Agent(service.admin_url, {"v1": 1, "v2": 1})
        admin(service).define(AGENT, VERSIONS, "v1")
        selector = f'agentopz_runs_total{{agent="{AGENT}",prompt_version="v1"}}'
        with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
            for _ in range(10):
                agent.run(lambda failed: run_tracer)
            prometheus.wait_for(f"sum({selector}) == 10")
            time.sleep(2)  # a few scrapes of the first values
            for _ in range(90):
                agent.run(lambda failed: run_tracer)
            prometheus.wait_for(f"sum({selector}) == 100")
        time.sleep(2)
        source = PrometheusRuns(PrometheusSource(url=prometheus.url))
        rollout = SimpleNamespace(agent=AGENT, baseline="v1", started_at=time.time())

        async def read() -> dict[str, int]:
            try:
                return await source.history(rollout, hours=1)
            finally:
                await source.close()

        history = asyncio.run(read())
        # Every replica's series summed by outcome over the hour before the start, as Prometheus
        # itself answers that increase.
        expected = prometheus.query(f"sum by (outcome) (increase({selector}[3600s] @ {rollout.started_at:.3f}))")
        increases = {item["metric"]["outcome"]: round(float(item["value"][1])) for item in expected}
        assert history == {outcome: runs for outcome, runs in increases.items() if runs > 0}
        assert set(history) == {"success", "llm_error"}
        # At least the runs between the first scrape (1 failed, 9 succeeded) and the last (10, 90);
        # `increase` extrapolates a series born inside the window towards its ends, so a little more.
        assert history["success"] >= 81 and history["llm_error"] >= 9
        assert 0.08 <= history["llm_error"] / (history["success"] + history["llm_error"]) <= 0.12
    finally:
        prometheus.stop()


SCORE_VALUE = "gen_ai.evaluation.score.value"


class Scored(Agent):
    """Runs that never fail, each with an evaluator score on its root span (`gen_ai.evaluation.result`):
    the baseline's cycle through the buckets 0.6 to 1.0, the candidate's 0.4 lower."""

    SCORES = (0.65, 0.75, 0.85, 0.95)
    DROP = {"v1": 0.0, "v2": 0.4}

    def finish(self, root: trace.Span, end_time: int, failed: bool) -> None:
        version = root.attributes["agentopz.prompt.version"]
        score = self.SCORES[self.runs[version] % len(self.SCORES)] - self.DROP[version]
        root.add_event("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "helpfulness", SCORE_VALUE: score})
        super().finish(root, end_time, failed)


@pytest.mark.timeout(60)
def test_the_score_guard_rolls_back_a_candidate_whose_scores_drop_from_prometheus(
    start_service, tmp_path, openfeature_domain
):
    """The score guard with a Prometheus source reads `agentopz_evaluation_score_bucket` at bucket
    midpoints: the candidate's scores 0.4 lower (about 3.6 of the baseline's standard deviations) roll
    it back after its first `min_runs` scores, before the quality guard could decide (no run fails)."""
    prometheus_port = free_port()
    service = analysis_service(start_service, tmp_path, "score", f"http://127.0.0.1:{prometheus_port}")
    prometheus = start_prometheus(tmp_path, [f"127.0.0.1:{service.admin_port}"], port=prometheus_port)
    try:
        prometheus.wait_for('up{job="agentopz"} == 1', timeout=30)
        score = {"enabled": True, "evaluation": "helpfulness", "min_baseline_runs": 20}
        start_rollout(service, {"score": score})
        agent = Scored(service.admin_url, {"v1": 0, "v2": 0})
        with tracer("grpc", service.grpc_endpoint, service="support-svc", batch=True) as run_tracer:
            run_until(agent, lambda failed: run_tracer, lambda: rollout_state(service)["state"] != "progressing", 4000)
        rollout = wait_state(service, "rolled_back")
        assert (rollout["state"], rollout["weight"]) == ("rolled_back", 0)
        evidence = analysis_entry(service, "rollback")["evidence"]
        assert (evidence["source"], evidence["failed_guards"]) == ("prometheus", ["score"])
        guard = evidence["guards"]["score"]
        assert guard["verdict"] == "fail"
        assert guard["statistic"] >= guard["threshold"]
        # alpha: 5% x 0.3 / 1.3 (the score guard's share of the budget).
        assert guard["threshold"] == pytest.approx(math.log(1.3 / (0.05 * 0.3)), abs=1e-4)
        details = guard["evidence"]
        # The baseline's scores at their buckets' midpoints: 0.65, 0.75, 0.85, 0.95 in turn.
        assert 0.75 <= details["baseline_mean"] <= 0.85
        assert details["candidate_runs"] >= 10  # the guard's min_runs
        assert evidence["guards"]["quality"]["verdict"] != "fail"
    finally:
        prometheus.stop()
