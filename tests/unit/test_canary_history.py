"""The baseline's pre-rollout history: its tally and bounds, the one-sample test against it, the shift veto."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import beta as beta_law
from scipy.stats import binom

from agentopz_otel.extensions.canary_analysis.config import AnalysisConfig, merged
from agentopz_otel.extensions.canary_analysis.engine import Cohort, RolloutAnalysis, VersionSample
from agentopz_otel.extensions.canary_analysis.history import BaselineHistory
from agentopz_otel.extensions.canary_analysis.statistics import (
    HISTORY_DELAY,
    SHIFT_CAP,
    SHIFT_THRESHOLD,
    HistoryEvidence,
    IntervalCounts,
    KeyClusters,
    history_verdict,
    one_sample_log_likelihood_ratio,
)

HOUR = 3600.0
NOW = 1000 * HOUR + 1800.0  # half past hour 1000


def test_the_history_tallies_runs_by_start_hour_within_its_window() -> None:
    history = BaselineHistory(hours=3, max_series=2)
    history.add("a", "v1", "success", NOW - 10, NOW)
    history.add("a", "v1", "llm_error", NOW - HOUR, NOW, runs=2)  # hour 999
    history.add("a", "v1", "success", NOW - 3 * HOUR, NOW, runs=5)  # hour 997: the window's first hour
    history.add("a", "v1", "success", NOW - 3 * HOUR - 1800.5, NOW)  # hour 996: before the window, dropped
    history.add("a", "v1", "success", NOW + 2 * HOUR, NOW)  # a clock far ahead: dropped
    history.add("a", "v2", "success", NOW, NOW)
    assert history.snapshot("a", "v1", NOW) == {"success": 6, "llm_error": 2}
    # Until the start of hour 1000: the buckets that started before it.
    assert history.snapshot("a", "v1", 1000 * HOUR) == {"success": 5, "llm_error": 2}
    assert history.snapshot("a", "v2", NOW) == {"success": 1}
    assert history.snapshot("b", "v1", NOW) == {}


def test_the_history_is_bounded_pruned_and_saved_bucket_by_bucket() -> None:
    history = BaselineHistory(hours=2, max_series=2)
    history.add("a", "v1", "success", NOW - HOUR, NOW)
    history.add("a", "v2", "success", NOW, NOW)
    history.add("b", "v1", "success", NOW, NOW, runs=4)  # a third pair: past max_series
    assert (history.series(), history.refused) == (2, 4)
    assert history.changes() == [("a", "v1", 999, {"success": 1}), ("a", "v2", 1000, {"success": 1})]
    assert history.changes() == []
    history.add("a", "v2", "llm_error", NOW, NOW)
    assert history.changes() == [("a", "v2", 1000, {"success": 1, "llm_error": 1})]
    # Two hours later hour 999 left the window, and with it the pair's only bucket: room for b.
    assert history.prune(NOW + 2 * HOUR) == [("a", "v1", 999)]
    assert history.series() == 1
    history.add("b", "v1", "success", NOW + 2 * HOUR, NOW + 2 * HOUR)
    assert history.series() == 2
    restored = BaselineHistory(hours=2, max_series=2)
    restored.load(json.loads(json.dumps([("a", "v2", 1000, {"success": 1, "llm_error": 1})])), NOW)
    assert restored.snapshot("a", "v2", NOW + 1) == {"success": 1, "llm_error": 1}
    assert restored.changes() == []


def test_the_one_sample_test_weighs_each_interval_against_the_history_bound_after_the_delay() -> None:
    evidence = HistoryEvidence.of(10_000, 200, delta=0.001)
    upper = float(beta_law.ppf(0.999, 201, 9800))
    assert (evidence.rate, evidence.rate_upper) == (0.02, pytest.approx(upper, rel=1e-12))
    odds = upper / (1 - upper)
    h1 = 3 * odds / (1 + 3 * odds)
    interval = float(binom.logpmf(2, 10, h1) - binom.logpmf(2, 10, upper))
    for _ in range(HISTORY_DELAY):
        evidence = evidence.add(IntervalCounts(10, 2, 0, 0), 1.0, 3.0)
    # The first intervals wait for the baseline's runs of the next ones: nothing committed yet.
    assert (evidence.log_likelihood_ratio, evidence.candidate_runs, len(evidence.pending)) == (0.0, 0, 2)
    evidence = evidence.add(IntervalCounts(10, 2, 0, 0), 1.0, 3.0)
    assert evidence.log_likelihood_ratio == pytest.approx(interval, rel=1e-12)
    assert (evidence.candidate_runs, evidence.candidate_failures) == (10, 2)
    verdict, details = history_verdict(evidence, alpha=0.01, beta=0.2, min_runs=10, design_effect=2.0)
    assert verdict == "inconclusive"
    assert history_verdict(evidence, alpha=0.01, beta=0.2, min_runs=11)[0] == "inconclusive"
    # 2 of 10 is evidence for H1 here: the ratio is positive, short of ln(100).
    assert 0 < interval < math.log(100)
    assert details["statistic"] == round(interval / 2, 4)
    assert details["threshold"] == round(math.log(100), 4)
    assert (details["pending_runs"], details["baseline_shifted"]) == (20, False)
    assert HistoryEvidence.from_dict(json.loads(json.dumps(evidence.to_dict()))) == evidence


def test_a_shifted_baseline_vetoes_the_pending_and_current_intervals() -> None:
    evidence = HistoryEvidence.of(10_000, 200, delta=0.001)
    # The baseline at its history's rate: the CUSUM stays at 0 (a negative ratio is clipped).
    healthy = one_sample_log_likelihood_ratio(30, 0, 0.02, 1.0, 3.0)
    assert healthy < 0
    evidence = evidence.add(IntervalCounts(2, 1, 30, 0), 1.0, 3.0).add(IntervalCounts(2, 1, 30, 0), 1.0, 3.0)
    assert (evidence.shift, len(evidence.pending)) == (0.0, 2)
    # An outage: 9 of the baseline's 30 runs fail. Its ratio is over the cap: shifted at once.
    outage = one_sample_log_likelihood_ratio(30, 9, 0.02, 1.0, 3.0)
    assert outage > SHIFT_CAP
    evidence = evidence.add(IntervalCounts(2, 2, 30, 9), 1.0, 3.0)
    assert (evidence.shift, evidence.pending, evidence.vetoed_runs, evidence.vetoed_intervals) == (SHIFT_CAP, (), 6, 3)
    assert (evidence.log_likelihood_ratio, evidence.candidate_runs) == (0.0, 0)
    # At 100% there are no baseline runs to show the shift is over: the last state holds.
    evidence = evidence.add(IntervalCounts(20, 5, 0, 0), 1.0, 3.0)
    assert (evidence.shift, evidence.vetoed_runs) == (SHIFT_CAP, 26)
    # Baseline runs back at the history's rate bring the CUSUM down below the threshold.
    steps = 0
    while evidence.shift >= SHIFT_THRESHOLD:
        evidence = evidence.add(IntervalCounts(2, 0, 30, 0), 1.0, 3.0)
        steps += 1
    assert steps == math.floor((SHIFT_CAP - SHIFT_THRESHOLD) / -healthy) + 1
    assert evidence.shift == pytest.approx(SHIFT_CAP + steps * healthy, rel=1e-12)
    assert len(evidence.pending) == 1  # counted again, after the delay


def _cohort(candidate: tuple[int, int], baseline: tuple[int, int]) -> Cohort:
    def sample(runs: int, failed: int) -> VersionSample:
        return VersionSample({"success": runs - failed, "llm_error": failed} if failed else {"success": runs})

    return Cohort(sample(baseline[0], baseline[1]), sample(candidate[0], candidate[1]))


def test_the_quality_guard_fails_on_the_history_where_the_two_sample_test_cannot_yet() -> None:
    config = merged(AnalysisConfig(), {"quality": {"history_share": 0.5}})
    assert AnalysisConfig().quality.history_share == 0.8
    with_history = RolloutAnalysis(config)
    with_history.set_history({"success": 98_000, "llm_error": 2000})
    alone = RolloutAnalysis(config)
    alone.set_history({"success": 99, "llm_error": 1})  # under history_min_runs: not used
    assert (with_history.history is not None, alone.history, alone.history_runs) == (True, None, 100)
    (two, two_delta), (one, one_delta) = with_history.rate_alphas("quality")
    assert (two, two_delta, one, one_delta) == pytest.approx((0.0135, 0.0015, 0.0135, 0.0015), rel=1e-12)
    assert alone.rate_alphas("quality") == ((pytest.approx(0.027), pytest.approx(0.003)), (0.0, 0.0))
    # 5% step: the candidate fails 4 of 10 runs per interval, the baseline as its history says.
    cohorts = [_cohort((10, 4), (190, 4)) for _ in range(3 + HISTORY_DELAY)]
    result = with_history.observe(cohorts, step_index=0)["quality"]
    assert result.verdict == "fail"
    assert result.threshold == pytest.approx(math.log(1 / 0.0135), abs=1e-4)
    assert result.evidence["history"]["candidate_runs"] == 30
    assert result.evidence["history"]["history_runs"] == 100_000
    assert alone.observe(cohorts, step_index=0)["quality"].evidence["history_runs"] == 100
    # The saved analysis keeps its history test.
    continued = RolloutAnalysis.from_dict(config, json.loads(json.dumps(with_history.to_dict())))
    assert (continued.history, continued.history_runs) == (with_history.history, 100_000)


def test_with_a_history_the_100_percent_step_is_the_one_sample_tests_alone() -> None:
    config = AnalysisConfig()
    analysis = RolloutAnalysis(config)
    analysis.set_history({"success": 9800, "llm_error": 200})
    analysis.observe([_cohort((50, 1), (950, 19))], step_index=0)
    before = analysis.rate
    assert analysis.results["quality"].verdict == "inconclusive"
    results = analysis.observe([_cohort((250, 5), (0, 0)) for _ in range(4)], step_index=3)
    # The two-sample test saw no runs at 100% (no fallback against the rollout's own baseline runs).
    assert analysis.rate == before
    assert analysis.rate.baseline_rate_upper is None
    assert analysis.history is not None
    assert (analysis.history.candidate_runs, len(analysis.history.pending)) == (550, 2)
    # The two-sample test is still inconclusive; the history test accepts: the guard passes.
    history = results["quality"].evidence["history"]
    assert (results["quality"].verdict, history["verdict"]) == ("pass", "pass")
    assert history["statistic"] < math.log(0.2 / (1 - history["alpha"]))


def test_with_prometheus_counts_the_design_effect_comes_from_this_replicas_keyed_runs() -> None:
    """Prometheus counts carry no targeting keys; the runs this replica finished do."""

    def keyed(keys: dict[str, tuple[int, int]]) -> VersionSample:
        outcomes = {
            key: {"success": runs - failed, "llm_error": failed} if failed else {"success": runs}
            for key, (runs, failed) in keys.items()
        }
        runs = sum(runs for runs, _ in keys.values())
        failed = sum(failed for _, failed in keys.values())
        return VersionSample({"success": runs - failed, "llm_error": failed}, keys=outcomes)

    local = Cohort(keyed({"a": (3, 2), "b": (2, 0)}), keyed({"c": (2, 2), "d": (2, 0)}))
    fleet = _cohort((8, 4), (12, 4))
    analysis = RolloutAnalysis(AnalysisConfig())
    analysis.observe([fleet], step_index=0, clustering=[local])
    expected = KeyClusters()
    expected.add("baseline", {"a": (3, 2), "b": (2, 0)}, 5, 2)
    expected.add("candidate", {"c": (2, 2), "d": (2, 0)}, 4, 2)
    # This replica saw 9 of the fleet's 20 runs: each key's runs are 20/9 as many in the fleet.
    assert analysis.clustered_runs == 9
    assert analysis.design_effect() == pytest.approx(expected.design_effect(1.645, 20 / 9), rel=1e-12)
    rho, error = expected.correlation()
    assert expected.design_effect(1.645, 20 / 9) == pytest.approx(
        1 + ((9 + 4 + 4 + 4) / 9 * 20 / 9 - 1) * min(1.0, rho + 1.645 * error), rel=1e-12
    )
    assert analysis.design_effect() > 1.5
    # The fleet's runs are the test's: 8 candidate runs, 4 failed.
    assert (analysis.rate.candidate_runs, analysis.rate.candidate_failures) == (8, 4)
    without = RolloutAnalysis(AnalysisConfig())
    without.observe([fleet], step_index=0)
    assert without.design_effect() == 1.0


def test_the_extension_keeps_the_history_in_storage_across_a_restart(tmp_path) -> None:
    """Finished runs through the extension's feed, saved at a look, read back by a new instance."""
    import time
    from types import SimpleNamespace

    from agentopz_otel.components import Context
    from agentopz_otel.extensions.canary_analysis import CanaryAnalysisExtension
    from agentopz_otel.extensions.canary_analysis.config import CanaryAnalysisConfig
    from agentopz_otel.extensions.storage import StorageConfig, StorageExtension
    from agentopz_otel.metrics import Registry

    def extension() -> CanaryAnalysisExtension:
        context = Context(metrics=Registry())
        context.extensions["storage"] = StorageExtension("storage", StorageConfig(path=str(tmp_path / "s.sqlite")))
        found = CanaryAnalysisExtension("canary_analysis", CanaryAnalysisConfig(history_hours=2), context)
        found.open_store()
        return found

    now = (math.floor(time.time() / HOUR) + 0.5) * HOUR  # mid-hour: the runs below share one bucket

    def run(version: str, outcome: str, started_at: float) -> SimpleNamespace:
        return SimpleNamespace(agent="support", prompt_version=version, outcome=outcome, started_at=started_at)

    first = extension()
    first._on_finished(
        [run("v1", "success", now - 60)] * 3 + [run("v1", "llm_error", now - 30), run("v2", "success", now)]
    )
    first._on_finished([run("v1", "success", now - 3 * HOUR)])  # before the window: not kept
    first.save_history(now)
    rows = first._db.execute(
        "SELECT agent, prompt_version, outcomes FROM canary_analysis_history ORDER BY 2"
    ).fetchall()
    assert rows == [("support", "v1", '{"success": 3, "llm_error": 1}'), ("support", "v2", '{"success": 1}')]
    second = extension()
    assert second.history.snapshot("support", "v1", now + 1) == {"success": 3, "llm_error": 1}
    # Three hours on, those buckets left the window: gone from memory and from storage.
    second.save_history(now + 3 * HOUR)
    assert second._db.execute("SELECT count(*) FROM canary_analysis_history").fetchone() == (0,)
    assert second.history.series() == 0


def _limits(candidate: tuple[int, int], baseline: tuple[int, int]) -> Cohort:
    """An interval's runs with `budget_exceeded` ones (the hard limits' default outcome)."""

    def sample(runs: int, over: int) -> VersionSample:
        return VersionSample({"success": runs - over, "budget_exceeded": over} if over else {"success": runs})

    return Cohort(sample(*baseline), sample(*candidate))


def test_the_hard_limits_weigh_the_candidate_against_the_history_as_the_quality_guard_does() -> None:
    """At 100% the two-sample test has only the rollout's own baseline runs (1,000 here, one over its
    budget: too few for a rare outcome); the history's 100,000 runs know the rate, so the same
    candidate fails on the one-sample test against them."""
    history = {"success": 99_000, "llm_error": 900, "budget_exceeded": 100}
    config = AnalysisConfig()
    analyses = {share: RolloutAnalysis(merged(config, {"hard_limits": {"history_share": share}})) for share in (0.8, 0)}
    for analysis in analyses.values():
        analysis.set_history(history)
        analysis.observe([_limits((50, 0), (950, 1))], step_index=0)
    with_history, alone = analyses[0.8], analyses[0]
    assert config.hard_limits.history_share == 0.8
    assert (with_history.limits_history is not None, alone.limits_history) == (True, None)
    # hard_limits' 0.5% split 0.8 / 0.2, a tenth of each part spent on its rate bound.
    (two, two_delta), (one, one_delta) = with_history.rate_alphas("hard_limits")
    assert (two, two_delta, one, one_delta) == pytest.approx((0.0009, 0.0001, 0.0036, 0.0004), rel=1e-12)
    (two, two_delta), (one, one_delta) = alone.rate_alphas("hard_limits")
    assert (two, two_delta, one, one_delta) == pytest.approx((0.0045, 0.0005, 0.0, 0.0), rel=1e-12)
    # The 100% step: 1,000 candidate runs an interval, 5 over their budget (5x the history's 0.1%).
    at_100 = [_limits((1000, 5), (0, 0)) for _ in range(3 + HISTORY_DELAY)]
    result = with_history.observe(at_100, step_index=3)["hard_limits"]
    # The history's rate at its 1 - 0.0004 Clopper-Pearson upper bound, H1 its odds times 5.
    upper = beta_law.ppf(1 - 0.0004, 101, 100_000 - 100)
    odds = 5 * upper / (1 - upper)
    rate_h1 = odds / (1 + odds)
    per_interval = 5 * math.log(rate_h1 / upper) + 995 * math.log((1 - rate_h1) / (1 - upper))
    assert per_interval == pytest.approx(2.5377, abs=1e-4)
    # Committed: the 5% step's 50 runs none over and three intervals at 100% (the last HISTORY_DELAY
    # wait for the veto): 7.3377 over ln(1/0.0036) = 5.6268.
    expected = 50 * math.log((1 - rate_h1) / (1 - upper)) + 3 * per_interval
    assert (result.verdict, result.statistic) == ("fail", pytest.approx(expected, abs=1e-4))
    assert (result.statistic, result.threshold) == (7.3377, 5.6268)
    assert result.evidence["history"]["candidate_runs"] == 3050
    assert result.evidence["history"]["history_failure_share"] == 0.001
    # The two-sample test saw no runs at 100% with a history; without one it falls back and passes.
    assert with_history.limits.candidate_runs == 50
    fallback = alone.observe(at_100, step_index=3)["hard_limits"]
    assert (fallback.verdict, fallback.evidence["history_runs"]) == ("pass", 100_000)
    assert alone.limits.candidate_runs == 50 + 5000
    assert with_history.budget_text().endswith(
        "; hard_limits's 0.50%: 0.40% against the baseline's history (100000 runs), 0.10% against its concurrent runs"
    )
    continued = RolloutAnalysis.from_dict(with_history.config, json.loads(json.dumps(with_history.to_dict())))
    assert continued.limits_history == with_history.limits_history


def test_a_shift_of_the_hard_limits_outcome_in_both_versions_is_vetoed() -> None:
    """Both versions run over their budget 5x as often as the history (a provider's slower answers):
    the baseline's concurrent runs show the shift, so the candidate's evidence of it does not count."""
    analysis = RolloutAnalysis(AnalysisConfig())
    analysis.set_history({"success": 99_900, "budget_exceeded": 100})
    result = analysis.observe([_limits((200, 1), (1000, 5)) for _ in range(40)], step_index=0)["hard_limits"]
    assert result.verdict == "pass"
    assert analysis.limits_history is not None
    # Shifted from the first interval on (the baseline's ratio is over ln 20 at once): every one vetoed.
    assert (analysis.limits_history.vetoed_runs, analysis.limits_history.log_likelihood_ratio) == (8000, 0.0)
    # Unvetoed, the candidate's 40 intervals would have failed the one-sample test many times over.
    unvetoed = 40 * one_sample_log_likelihood_ratio(200, 1, analysis.limits_history.rate_upper, 1.0, 5.0)
    assert unvetoed == pytest.approx(20.3018, abs=1e-4)
    assert unvetoed > 3 * math.log(1 / 0.0036)


def test_an_outcome_the_history_never_had_showing_in_both_versions_is_a_shift() -> None:
    """A week without a run over its budget, then both versions show one in 1,000 (a budget lowered
    for every version): the baseline's shift is measured against half a run in the history, so the
    candidate's runs over their budget are vetoed, not weighed against a rate bound near 0."""
    analysis = RolloutAnalysis(AnalysisConfig())
    analysis.set_history({"success": 100_000})
    result = analysis.observe([_limits((1000, 1), (1000, 1)) for _ in range(10)], step_index=0)["hard_limits"]
    assert analysis.limits_history is not None
    assert analysis.limits_history.rate == 0.0
    # The first interval moves the shift to ln 5 + 999 ln(1 - 4 x 5e-6) = 1.5895 (under ln 20), the
    # second over it: both are vetoed (the first was still pending), and every later one.
    first = one_sample_log_likelihood_ratio(1000, 1, 0.5 / 100_001, 1.0, 5.0)
    assert first == pytest.approx(1.5895, abs=1e-4)
    assert first < SHIFT_THRESHOLD <= 2 * first
    assert (analysis.limits_history.vetoed_runs, analysis.limits_history.log_likelihood_ratio) == (10_000, 0.0)
    assert result.verdict == "pass"


@pytest.mark.parametrize("disabled", ["quality", "hard_limits"])
def test_a_disabled_rate_guard_has_no_tests_and_no_verdict(disabled: str) -> None:
    config = merged(AnalysisConfig(), {disabled: {"enabled": False}})
    analysis = RolloutAnalysis(config)
    analysis.set_history({"success": 9800, "llm_error": 200})
    results = analysis.observe([_cohort((10, 0), (190, 4))], step_index=0)
    assert sorted(results) == sorted({"quality", "cost", "duration", "hard_limits"} - {disabled})
    assert analysis.rate_alphas(disabled) == ((0.0, 0.0), (0.0, 0.0))
    assert {"quality": analysis.history, "hard_limits": analysis.limits_history}[disabled] is None
