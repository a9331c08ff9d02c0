"""The canary analysis statistics and decision rules on constructed samples: exact verdicts and boundaries."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
from collections import Counter

import pytest
from scipy.stats import beta as beta_law
from scipy.stats import binom, mannwhitneyu, nchypergeom_fisher, norm

from agentopz_otel.extensions.canary_analysis.config import AnalysisConfig, merged
from agentopz_otel.extensions.canary_analysis.engine import Cohort, RolloutAnalysis, VersionSample
from agentopz_otel.extensions.canary_analysis.sources import (
    LocalRuns,
    _bucket_values,
    _quote,
    _regex_escape,
    counter_gain,
)
from agentopz_otel.extensions.canary_analysis.statistics import (
    KeyClusters,
    RankLooks,
    RateEvidence,
    ScoreEvidence,
    hard_limit_verdict,
    interval_log_likelihood_ratio,
    look_alpha,
    look_due,
    one_sample_log_likelihood_ratio,
    rank_test,
    rate_upper_bound,
    rate_verdict,
    score_log_likelihood_ratio,
    score_verdict,
)


def test_interval_likelihood_ratio_is_the_noncentral_hypergeometric_ratio() -> None:
    # One run each, one failure, on the candidate: (psi1/psi0) (1 + psi0) / (1 + psi1) = 3 * 2 / 4.
    assert interval_log_likelihood_ratio(1, 1, 1, 0, 1.0, 3.0) == pytest.approx(math.log(1.5), abs=1e-12)
    # scipy's Fisher noncentral hypergeometric: total runs, candidate runs, failures, odds ratio.
    for candidate_failures in range(0, 7):
        expected = math.log(
            nchypergeom_fisher.pmf(candidate_failures, 420, 20, 14, 3.0)
            / nchypergeom_fisher.pmf(candidate_failures, 420, 20, 14, 1.5)
        )
        got = interval_log_likelihood_ratio(20, candidate_failures, 400, 14 - candidate_failures, 1.5, 3.0)
        assert got == pytest.approx(expected, rel=1e-9)


def test_interval_likelihood_ratio_has_mean_one_under_h0() -> None:
    """The product over intervals is a martingale under H0: the basis of Ville's bound."""
    mean = sum(
        nchypergeom_fisher.pmf(k, 300, 15, 9, 1.0)
        * math.exp(interval_log_likelihood_ratio(15, k, 285, 9 - k, 1.0, 3.0))
        for k in range(0, 10)
    )
    assert mean == pytest.approx(1.0, abs=1e-12)


def test_interval_without_failures_or_without_a_version_carries_no_evidence() -> None:
    assert interval_log_likelihood_ratio(50, 0, 950, 0, 1.0, 3.0) == 0.0
    assert interval_log_likelihood_ratio(50, 5, 0, 0, 1.0, 3.0) == 0.0
    assert interval_log_likelihood_ratio(0, 0, 950, 9, 1.0, 3.0) == 0.0


def test_rate_verdict_boundaries() -> None:
    fail_at = math.log(1 / 0.1)
    pass_at = math.log(0.2 / 0.9)
    at_fail = RateEvidence(fail_at, candidate_runs=20, candidate_failures=6, baseline_runs=380, baseline_failures=7)
    assert rate_verdict("quality", at_fail, 0.1, 0.2, 20).verdict == "fail"
    # One run short of the minimum: no decision however strong the evidence.
    short = RateEvidence(fail_at + 5, candidate_runs=19, candidate_failures=6, baseline_runs=380, baseline_failures=7)
    assert rate_verdict("quality", short, 0.1, 0.2, 20).verdict == "inconclusive"
    below = RateEvidence(fail_at - 1e-9, 20, 6, 380, 7)
    assert rate_verdict("quality", below, 0.1, 0.2, 20).verdict == "inconclusive"
    assert rate_verdict("quality", RateEvidence(pass_at, 20, 0, 380, 7), 0.1, 0.2, 20).verdict == "pass"
    assert rate_verdict("quality", RateEvidence(pass_at + 1e-9, 20, 0, 380, 7), 0.1, 0.2, 20).verdict == "inconclusive"
    # Nobody failed at all: nothing suggests a regression.
    assert rate_verdict("quality", RateEvidence(0.0, 20, 0, 380, 0), 0.1, 0.2, 20).verdict == "pass"
    result = rate_verdict("quality", at_fail, 0.1, 0.2, 20)
    assert result.threshold == pytest.approx(fail_at)
    assert result.evidence["candidate_failure_share"] == 0.3
    assert result.evidence["baseline_failure_share"] == round(7 / 380, 6)


def test_rate_evidence_on_a_constructed_rollout() -> None:
    """Two looks: 20 candidate runs with 6 failures against 380 baseline runs with 8 fails the guard."""
    evidence = RateEvidence().add(10, 1, 190, 4, 1.0, 3.0)
    first = rate_verdict("quality", evidence, 0.1, 0.2, 20)
    assert first.verdict == "inconclusive"
    evidence = evidence.add(10, 5, 190, 4, 1.0, 3.0)
    expected = interval_log_likelihood_ratio(10, 1, 190, 4, 1.0, 3.0) + interval_log_likelihood_ratio(
        10, 5, 190, 4, 1.0, 3.0
    )
    result = rate_verdict("quality", evidence, 0.1, 0.2, 20)
    assert result.statistic == pytest.approx(expected)
    assert result.statistic > math.log(10)
    assert result.verdict == "fail"
    assert (evidence.candidate_runs, evidence.candidate_failures, evidence.baseline_runs) == (20, 6, 380)


def test_look_schedule_and_alpha_spending() -> None:
    assert look_due(0, 5, 5, 1.5)
    assert not look_due(0, 4, 5, 1.5)
    assert not look_due(1, 7, 5, 1.5)  # the second look needs ceil(7.5) = 8 candidate runs
    assert look_due(1, 8, 5, 1.5)
    assert look_alpha(1, 0.05) == pytest.approx(0.025)
    assert look_alpha(2, 0.05) == pytest.approx(0.05 / 6)
    assert sum(look_alpha(j, 0.05) for j in range(1, 100_000)) == pytest.approx(0.05, rel=1e-4)


BASELINE = [0.010 + 0.0001 * i for i in range(100)]


def test_rank_test_fails_a_costlier_candidate_and_passes_one_within_tolerance() -> None:
    costly = [0.05, 0.06, 0.07, 0.08, 0.09]
    looks = rank_test("cost", RankLooks(), costly, BASELINE, 5, 1.5, 0.05, 5, 1.5)
    expected_p = mannwhitneyu(costly, [v * 1.5 for v in BASELINE], alternative="greater").pvalue
    assert looks.looks == 1
    assert looks.last.verdict == "fail"
    assert looks.last.evidence["p_value"] == pytest.approx(expected_p)
    assert looks.last.statistic == pytest.approx(-math.log(expected_p))
    assert looks.last.threshold == pytest.approx(-math.log(0.025))
    # 1.4x the baseline, inside the 1.5x tolerance: passes.
    within = [v * 1.4 for v in BASELINE[::20]]
    assert rank_test("cost", RankLooks(), within, BASELINE, 5, 1.5, 0.05, 5, 1.5).last.verdict == "pass"


def test_rank_test_waits_for_min_runs_and_holds_between_looks() -> None:
    costly = [0.05, 0.06, 0.07, 0.08]
    waiting = rank_test("cost", RankLooks(), costly, BASELINE, 4, 1.5, 0.05, 5, 1.5)
    assert (waiting.looks, waiting.last.verdict) == (0, "inconclusive")
    healthy = BASELINE[::20]
    first = rank_test("cost", RankLooks(), healthy, BASELINE, 5, 1.5, 0.05, 5, 1.5)
    assert (first.looks, first.last.verdict) == (1, "pass")
    # Seven runs: the second look is not due, so the first look's verdict holds even on worse values.
    held = rank_test("cost", first, [*healthy, 0.5, 0.5], BASELINE, 7, 1.5, 0.05, 5, 1.5)
    assert held is first
    second = rank_test("cost", first, [*healthy, 0.5, 0.5, 0.5], BASELINE, 8, 1.5, 0.05, 5, 1.5)
    assert second.looks == 2
    assert second.last.threshold == pytest.approx(-math.log(0.05 / 6))


def test_hard_limit_compares_with_the_baseline_and_keeps_an_absolute_cap() -> None:
    # The baseline shows the outcome as often: no failure however many the candidate has.
    even = RateEvidence().add(100, 1, 1900, 19, 1.0, 5.0)
    assert hard_limit_verdict("hard_limits", even, {"budget_exceeded": 1}, 0.0045, None).verdict == "pass"
    # 4 over-budget candidate runs in 100 against 1 in 1900: the relative test fails (3 would not).
    three = RateEvidence().add(100, 3, 1900, 1, 1.0, 5.0)
    assert hard_limit_verdict("hard_limits", three, {"budget_exceeded": 3}, 0.0045, None).verdict == "pass"
    worse = RateEvidence().add(100, 4, 1900, 1, 1.0, 5.0)
    expected = math.log(nchypergeom_fisher.pmf(4, 2000, 100, 5, 5.0) / nchypergeom_fisher.pmf(4, 2000, 100, 5, 1.0))
    result = hard_limit_verdict("hard_limits", worse, {"budget_exceeded": 4}, 0.0045, None)
    assert result.statistic == pytest.approx(expected, rel=1e-9)
    assert (result.verdict, result.threshold) == ("fail", pytest.approx(math.log(1 / 0.0045)))
    # The absolute cap acts on its own: 2 runs over a cap of 1, whatever the baseline shows.
    capped = hard_limit_verdict("hard_limits", even, {"budget_exceeded": 2}, 0.0045, 1)
    assert (capped.verdict, capped.evidence["max_runs"]) == ("fail", 1)
    assert hard_limit_verdict("hard_limits", even, {"budget_exceeded": 1}, 0.0045, 1).verdict == "pass"


def test_one_sample_ratio_is_the_binomial_ratio_at_the_shifted_odds() -> None:
    p0 = 0.02
    odds = p0 / (1 - p0)
    p_h1 = odds * 3 / (1 + odds * 3)
    for failures in range(0, 6):
        expected = math.log(binom.pmf(failures, 40, p_h1) / binom.pmf(failures, 40, p0))
        got = one_sample_log_likelihood_ratio(40, failures, p0, 1.0, 3.0)
        assert got == pytest.approx(expected, rel=1e-9)
    # By hand: 1 run, 1 failure, p0 = 0.5, odds ratio 3 against 1: 0.75 / 0.5.
    assert one_sample_log_likelihood_ratio(1, 1, 0.5, 1.0, 3.0) == pytest.approx(math.log(1.5), abs=1e-12)
    assert one_sample_log_likelihood_ratio(0, 0, 0.02, 1.0, 3.0) == 0.0
    assert one_sample_log_likelihood_ratio(10, 1, 0.0, 1.0, 3.0) == 0.0


def test_baseline_rate_upper_bound_is_clopper_pearson() -> None:
    assert rate_upper_bound(20, 1000, 0.003) == pytest.approx(beta_law.ppf(0.997, 21, 980), rel=1e-12)
    assert rate_upper_bound(0, 0, 0.003) == 1.0
    assert rate_upper_bound(5, 5, 0.003) == 1.0


def test_at_the_100_percent_step_the_candidate_is_tested_against_the_baseline_rate_known_before() -> None:
    before = RateEvidence().add(50, 1, 950, 19, 1.0, 3.0)
    upper = beta_law.ppf(1 - 0.003, 20, 950 - 19)
    at_100 = before.add(60, 1, 0, 0, 1.0, 3.0, delta=0.003)
    assert at_100.baseline_rate_upper == pytest.approx(upper, rel=1e-12)
    expected = before.log_likelihood_ratio + one_sample_log_likelihood_ratio(60, 1, upper, 1.0, 3.0)
    assert at_100.log_likelihood_ratio == pytest.approx(expected, rel=1e-12)
    # The bound is frozen: later intervals use it even if computed again it would differ.
    later = at_100.add(60, 0, 0, 0, 1.0, 3.0, delta=0.5)
    assert later.baseline_rate_upper == at_100.baseline_rate_upper
    assert (later.known_baseline_runs, later.candidate_runs) == (120, 170)
    # A design effect divides the accumulated evidence, and the verdict says which one it used.
    evidence = RateEvidence().add(20, 3, 380, 4, 1.0, 3.0)
    divided = rate_verdict("quality", evidence, 0.05, 0.2, 20, design_effect=2.5)
    assert divided.statistic == pytest.approx(interval_log_likelihood_ratio(20, 3, 380, 4, 1.0, 3.0) / 2.5, rel=1e-12)
    assert divided.evidence["design_effect"] == 2.5


def _sample(success: int, failed: int, cost: float = 0.01, outcome: str = "llm_error") -> VersionSample:
    return VersionSample({"success": success, outcome: failed}, [cost] * (success + failed), [5.0] * (success + failed))


def test_failures_counted_by_the_quality_guards_choice() -> None:
    sample = VersionSample({"success": 90, "quality_failure": 4, "llm_error": 6})
    assert sample.runs == 100
    assert sample.failures("not_success") == 10
    assert sample.failures("quality_failure") == 4
    assert sample.counted(["llm_error", "budget_exceeded"]) == 6


def _cohort(baseline: VersionSample, candidate: VersionSample) -> Cohort:
    return Cohort(baseline, candidate)


def test_engine_advances_only_after_step_minimums_with_every_guard_passing() -> None:
    config = AnalysisConfig.model_validate(
        {"step_min_runs": 20, "step_min_seconds": 60, "duration": {"enabled": False}}
    )
    analysis = RolloutAnalysis(config)
    # 19 candidate runs: the quality guard has no decision yet.
    analysis.observe([_cohort(_sample(1900, 0), _sample(19, 0))], step_index=0)
    assert analysis.results["quality"].verdict == "inconclusive"
    assert analysis.decide(600, last_step=False) is None
    analysis.observe([_cohort(_sample(100, 0), _sample(1, 0))], step_index=0)
    assert {name: r.verdict for name, r in analysis.results.items()} == {
        "quality": "pass",
        "cost": "pass",
        "hard_limits": "pass",
    }
    assert analysis.decide(59.9, last_step=False) is None
    assert analysis.decide(60, last_step=False).action == "advance"
    # A new step counts its own runs: those of intervals that started once it began.
    analysis.observe([Cohort(_sample(300, 0), _sample(25, 0), started_at=90.0)], step_index=1, step_started_at=100.0)
    assert (analysis.step_runs(), analysis.candidate_runs) == (0, 45)
    assert analysis.decide(600, last_step=False) is None
    analysis.observe([Cohort(_sample(300, 0), _sample(20, 0), started_at=100.0)], step_index=1, step_started_at=100.0)
    assert (analysis.step_runs(), analysis.decide(600, last_step=False).action) == (20, "advance")


def test_engine_rolls_back_on_a_hard_limit_over_the_absolute_cap_at_once() -> None:
    analysis = RolloutAnalysis(merged(AnalysisConfig(), {"hard_limits": {"max_runs": 0}}))
    analysis.observe([_cohort(_sample(100, 0), _sample(1, 1, outcome="budget_exceeded"))], step_index=0)
    decision = analysis.decide(0, last_step=False)
    assert decision.action == "rollback"
    assert decision.reason == "canary analysis: hard_limits failed"
    assert analysis.evidence()["hard_limits"]["evidence"]["candidate_runs_by_outcome"] == {"budget_exceeded": 1}
    # Without the cap, one over-budget run against a baseline that has them too is no reason.
    relative = RolloutAnalysis(AnalysisConfig())
    relative.observe(
        [_cohort(_sample(1000, 1, outcome="budget_exceeded"), _sample(1, 1, outcome="budget_exceeded"))], 0
    )
    assert relative.results["hard_limits"].verdict == "pass"


def test_engine_state_survives_a_restart_through_json() -> None:
    config = AnalysisConfig()
    analysis = RolloutAnalysis(config)
    analysis.observe([_cohort(_sample(500, 10), _sample(25, 2))], step_index=0)
    analysis.observe([_cohort(_sample(480, 9), _sample(26, 3))], step_index=1)
    restored = RolloutAnalysis.from_dict(config, json.loads(json.dumps(analysis.to_dict())))
    assert restored.rate == analysis.rate
    assert (restored.cost, restored.duration) == (analysis.cost, analysis.duration)
    assert (restored.candidate_runs, restored.baseline_runs, restored.cohorts) == (56, 999, 2)
    assert (restored.restarts, restored.step_runs()) == (1, 29)
    assert list(restored.values["candidate"]["costs"]) == list(analysis.values["candidate"]["costs"])
    # It goes on from there: the same next look gives the same statistic as without the restart.
    nxt = [_cohort(_sample(490, 12), _sample(24, 4))]
    assert restored.observe(nxt, 1)["quality"].statistic == analysis.observe(nxt, 1)["quality"].statistic
    # A state saved before targeting keys were counted continues its test; the key counts start empty.
    older = {key: value for key, value in analysis.to_dict().items() if key != "clusters"}
    continued = RolloutAnalysis.from_dict(config, older)
    assert (continued.rate, continued.clusters.tracked) == (analysis.rate, 0)


def test_budget_is_split_across_the_enabled_guards() -> None:
    alphas = AnalysisConfig().alphas()
    assert alphas == pytest.approx({"quality": 0.03, "cost": 0.0075, "duration": 0.0075, "hard_limits": 0.005})
    assert sum(alphas.values()) == pytest.approx(0.05)
    # A guard switched off gives its share to the others; an explicit alpha takes its part first.
    config = merged(AnalysisConfig(), {"duration": {"enabled": False}, "quality": {"alpha": 0.04}})
    assert config.alphas() == pytest.approx({"quality": 0.04, "cost": 0.01 * 0.6, "hard_limits": 0.01 * 0.4})
    with pytest.raises(ValueError, match=r"the guards' alpha add up to 0\.07, over false_rollback_budget \(0\.05\)"):
        merged(AnalysisConfig(), {"quality": {"alpha": 0.04}, "cost": {"alpha": 0.03}})
    assert "false-rollback budget 5% per rollout" in AnalysisConfig().budget_text()


def test_counter_gain_counts_new_series_from_zero_and_resets_from_their_value() -> None:
    assert counter_gain(None, 7.0) == 7.0
    assert counter_gain(10.0, 15.0) == 5.0
    assert counter_gain(10.0, 3.0) == 3.0
    assert counter_gain(10.0, 10.0) == 0.0


def test_analysis_config_merges_over_defaults_guard_by_guard() -> None:
    config = merged(AnalysisConfig(), {"cost": {"tolerance": 2.0}, "step_min_runs": 5})
    assert config.cost.tolerance == 2.0
    assert config.cost.min_runs == AnalysisConfig().cost.min_runs
    assert config.step_min_runs == 5
    with pytest.raises(ValueError, match=r"invalid analysis: quality\.alpha: Input should be less than 0\.5"):
        merged(AnalysisConfig(), {"quality": {"alpha": 0.7}})
    with pytest.raises(ValueError, match="detect_ratio"):
        merged(AnalysisConfig(), {"quality": {"tolerance": 2.0, "detect_ratio": 1.5}})
    with pytest.raises(ValueError, match="invalid analysis: speed: Extra inputs are not permitted"):
        merged(AnalysisConfig(), {"speed": 1})


def test_histogram_buckets_become_values_at_their_midpoints() -> None:
    cumulative = Counter({0.01: 2.0, 0.1: 5.0, 1.0: 5.0, math.inf: 6.0})
    assert _bucket_values(cumulative, max_samples=100) == pytest.approx([0.005, 0.005, *[math.sqrt(0.001)] * 3, 2.0])
    # Over the bound: the same proportions, fewer values.
    many = Counter({0.01: 1000.0, 0.1: 3000.0, math.inf: 4000.0})
    values = _bucket_values(many, max_samples=40)
    assert (values.count(0.005), values.count(math.sqrt(0.001)), values.count(0.2)) == (10, 20, 10)
    assert _bucket_values(Counter(), max_samples=10) == []
    # Evaluator scores' evenly spaced buckets: arithmetic midpoints (a bucket at 0 holds its bound).
    scores = Counter({0.0: 1.0, 0.1: 2.0, 0.7: 4.0, 0.8: 7.0, 1.0: 8.0, math.inf: 8.0})
    assert _bucket_values(scores, max_samples=100, linear=True) == pytest.approx(
        [0.0, 0.05, 0.4, 0.4, 0.75, 0.75, 0.75, 0.9]
    )


def test_promql_label_values_are_escaped() -> None:
    assert _quote('a"b\\c') == '"a\\"b\\\\c"'
    # A regex metacharacter is escaped for the regex, then the backslash for the string literal.
    assert _quote(_regex_escape("v1.2|x")) == '"v1\\\\.2\\\\|x"'


class _Run:
    def __init__(
        self,
        version: str,
        outcome: str,
        started_at: float,
        duration: float,
        cost_complete: bool = True,
        targeting_key: str | None = None,
    ):
        self.agent, self.prompt_version, self.outcome = "support", version, outcome
        self.targeting_key = targeting_key
        self.started_at, self.duration_seconds = started_at, duration
        self.finished_at = started_at + duration
        self.cost_usd, self.cost_complete = 0.01, cost_complete
        self.scores = {"helpfulness": 0.8} if version == "v2" else {}


class _Rollout:
    id, agent, baseline, candidate, started_at = 7, "support", "v1", "v2", 1000.0


def test_local_runs_are_grouped_by_start_and_handed_over_once_none_can_still_run() -> None:
    rollout = _Rollout()
    source = LocalRuns(max_samples=100, cohort_seconds=30)
    source.track("support", 7, ("v1", "v2"), 1000.0)
    # A fast failure and a slow success both started in the first interval; a run from before the
    # rollout and one of another version are not counted.
    source.on_runs(
        [
            _Run("v2", "llm_error", 1005, 3),
            _Run("v1", "success", 1010, 500, cost_complete=False),
            _Run("v1", "success", 990, 5),
            _Run("v9", "success", 1010, 5),
            _Run("v2", "success", 1031, 5),
        ]
    )
    # 100 s of max_run_seconds: interval [1000, 1030) is evidence at 1130, not before.
    assert asyncio.run(source.cohorts(rollout, 100, 1129.9)) == []
    (first,) = asyncio.run(source.cohorts(rollout, 100, 1130))
    assert (first.candidate.outcomes, first.baseline.outcomes) == ({"llm_error": 1}, {"success": 1})
    assert (first.candidate.scores, first.baseline.scores) == ({"helpfulness": [0.8]}, {})
    # An incomplete cost is left out, as the cost histogram leaves it out.
    assert (first.baseline.costs, first.baseline.durations) == ((), (500,))
    # A run of a closed interval that finishes now is late: counted apart, not as evidence.
    source.on_runs([_Run("v1", "success", 1020, 900)])
    assert source.counts(rollout) == {"late_runs": 1, "dropped_runs": 0}
    saved = json.loads(json.dumps(source.state(rollout)))
    restarted = LocalRuns(max_samples=100, cohort_seconds=30)
    restarted.restore(rollout, saved)
    restarted.on_runs([_Run("v1", "success", 1040, 80)])
    (second,) = asyncio.run(restarted.cohorts(rollout, 100, 1160))
    assert (second.candidate.outcomes, second.baseline.outcomes) == ({"success": 1}, {"success": 1})
    assert restarted.counts(rollout) == {"late_runs": 1, "dropped_runs": 0}


def test_score_ratio_is_the_gaussian_ratio_for_a_shift_of_the_mean() -> None:
    # Higher is better: a score 1 sd below the mean, tested for a 0.5 sd drop.
    expected = math.log(norm.pdf(0.6, 0.8 - 0.5 * 0.2, 0.2) / norm.pdf(0.6, 0.8, 0.2))
    assert score_log_likelihood_ratio(0.6, 0.8, 0.2, 0.5, True) == pytest.approx(expected, rel=1e-12)
    assert score_log_likelihood_ratio(0.6, 0.8, 0.2, 0.5, True) == pytest.approx(0.5 - 0.125, rel=1e-12)
    # Lower is better (a latency-like score): the same value above the mean is the evidence.
    assert score_log_likelihood_ratio(1.0, 0.8, 0.2, 0.5, False) == pytest.approx(0.375, rel=1e-12)


def test_score_evidence_waits_for_the_baseline_then_weighs_every_candidate_score() -> None:
    baseline = [0.7, 0.8, 0.9]
    waiting = ScoreEvidence().add([0.5], baseline, 0.5, True, min_baseline=4, max_pending=10)
    assert (waiting.candidate_runs, waiting.pending, waiting.log_likelihood_ratio) == (0, (0.5,), 0.0)
    ready = waiting.add([0.6], [0.8], 0.5, True, min_baseline=4, max_pending=10)
    mean, sd = statistics.mean([0.7, 0.8, 0.9, 0.8]), statistics.stdev([0.7, 0.8, 0.9, 0.8])
    expected = sum(score_log_likelihood_ratio(v, mean, sd, 0.5, True) for v in (0.5, 0.6))
    assert ready.log_likelihood_ratio == pytest.approx(expected, rel=1e-12)
    assert (ready.candidate_runs, ready.pending, ready.baseline_runs) == (2, (), 4)
    assert ready.baseline_mean == pytest.approx(mean) and ready.baseline_sd == pytest.approx(sd)
    assert ScoreEvidence.from_dict(json.loads(json.dumps(ready.to_dict()))) == ready
    result = score_verdict("score", ready, 0.01, 0.2, min_runs=2)
    assert (result.verdict, result.threshold) == (
        "fail" if expected >= math.log(100) else "inconclusive",
        math.log(100),
    )
    assert score_verdict("score", ready, 0.01, 0.2, min_runs=3).verdict == "inconclusive"


def test_score_guard_is_off_by_default_and_needs_an_evaluation_name() -> None:
    assert "score" not in AnalysisConfig().alphas()
    config = merged(AnalysisConfig(), {"score": {"enabled": True, "evaluation": "helpfulness"}})
    assert config.alphas()["score"] == pytest.approx(0.05 * 0.3 / 1.3)
    with pytest.raises(ValueError, match=r"score\.evaluation: name the evaluation"):
        merged(AnalysisConfig(), {"score": {"enabled": True}})
    analysis = RolloutAnalysis(merged(config, {"score": {"min_runs": 1, "min_baseline_runs": 2}}))
    good = VersionSample({"success": 3}, scores={"helpfulness": [0.8, 0.9, 0.7]})
    worse = VersionSample({"success": 1}, scores={"helpfulness": [0.3]})
    result = analysis.observe([Cohort(good, worse)], 0)["score"]
    assert result.statistic == pytest.approx(score_log_likelihood_ratio(0.3, 0.8, 0.1, 0.5, True), rel=1e-12)


def test_a_saved_analysis_is_continued_and_an_unreadable_one_started_again(tmp_path, caplog) -> None:
    """The extension's storage round trip, in process: what one instance saves, the next continues."""
    from agentopz_otel.components import Context
    from agentopz_otel.extensions.canary_analysis import CanaryAnalysisExtension
    from agentopz_otel.extensions.canary_analysis.config import CanaryAnalysisConfig
    from agentopz_otel.extensions.storage import StorageConfig, StorageExtension
    from agentopz_otel.metrics import Registry

    def extension() -> CanaryAnalysisExtension:
        context = Context(metrics=Registry())
        context.extensions["storage"] = StorageExtension("storage", StorageConfig(path=str(tmp_path / "s.sqlite")))
        found = CanaryAnalysisExtension("canary_analysis", CanaryAnalysisConfig(), context)
        found.open_store()
        return found

    rollout = _Rollout()
    first = extension()
    assert first._load(rollout, AnalysisConfig()) is None  # nothing saved: a new analysis, history read
    analysis = RolloutAnalysis(AnalysisConfig())
    analysis.observe([_cohort(_sample(500, 10), _sample(25, 2))], step_index=0)
    first._save(rollout, analysis)
    continued = extension()._load(rollout, AnalysisConfig())
    assert (continued.restarts, continued.candidate_runs, continued.rate) == (1, 27, analysis.rate)
    first._db.execute("UPDATE canary_analysis_state SET body = '{\"analysis\": {}}'")
    with caplog.at_level("WARNING", logger="agentopz_otel.canary_analysis"):
        fresh = extension()._load(rollout, AnalysisConfig())
    assert fresh is None
    assert "the saved analysis of support is unreadable (KeyError: 'rate'); starting it again" in caplog.text


def _clustered() -> KeyClusters:
    """Baseline: key a 3 runs 2 failed, key b 2 runs none, one run without a key that failed;
    candidate: key c 2 runs both failed, key d 2 runs none."""
    clusters = KeyClusters()
    clusters.add("baseline", {"a": (2, 1), "b": (1, 0)}, 4, 2)
    clusters.add("baseline", {"a": (1, 1), "b": (1, 0)}, 2, 1)
    clusters.add("candidate", {"c": (2, 2), "d": (2, 0)}, 4, 2)
    return clusters


def test_design_effect_is_the_anova_estimate_over_targeting_keys() -> None:
    clusters = _clustered()
    # By hand: N 10, 5 clusters in 2 versions; between-key mean square (7/3 - 9/6 + 2 - 4/4) / 3 = 11/18,
    # within 2/3 / 5 = 2/15, n0 = (10 - 14/6 - 8/4) / 3 = 17/9: rho = 129/197; sum n^2 / N = 22/10.
    rho, error = clusters.correlation()
    assert rho == pytest.approx(129 / 197, rel=1e-12)
    assert clusters.design_effect() == pytest.approx(1 + 1.2 * 129 / 197, rel=1e-12)
    # Swiger's standard error: 2 (N - 1) (1 - rho)^2 (1 + (n0 - 1) rho)^2 / (n0^2 (N - k) (k - versions)).
    variance = 2 * 9 * (1 - rho) ** 2 * (1 + (8 / 9) * rho) ** 2 / ((17 / 9) ** 2 * 5 * 3)
    assert error == pytest.approx(math.sqrt(variance), rel=1e-12)
    assert clusters.design_effect(z=0.5) == pytest.approx(1 + 1.2 * (rho + 0.5 * error), rel=1e-12)
    # The correlation's bound is at most 1.
    assert clusters.design_effect(z=10) == pytest.approx(2.2, rel=1e-12)
    # The same counts in one interval give the same estimate (the sums are kept as clusters grow).
    once = KeyClusters()
    once.add("baseline", {"a": (3, 2), "b": (2, 0)}, 6, 3)
    once.add("candidate", {"c": (2, 2), "d": (2, 0)}, 4, 2)
    assert once.design_effect() == pytest.approx(clusters.design_effect(), rel=1e-12)
    restored = KeyClusters.from_dict(json.loads(json.dumps(clusters.to_dict())))
    assert restored.design_effect() == clusters.design_effect()
    assert restored.tracked == 4


def test_design_effect_is_one_without_repeats_or_without_spread_within_a_version() -> None:
    assert KeyClusters().design_effect() == 1.0
    # One key per version that repeated: nothing to estimate from, the bound is the widest.
    single = KeyClusters()
    single.add("baseline", {"a": (4, 1)}, 4, 1)
    assert single.correlation() == (0.0, 1.0)
    assert single.design_effect(z=1.645) == 4.0
    alone = KeyClusters()
    alone.add("baseline", {}, 100, 10)
    alone.add("candidate", {"x": (1, 1), "y": (1, 0)}, 2, 1)
    assert alone.design_effect() == 1.0
    # Every candidate key failed and no baseline key did: a difference between the versions, not
    # clustering within them.
    apart = KeyClusters()
    apart.add("baseline", {"a": (2, 0), "b": (2, 0)}, 4, 0)
    apart.add("candidate", {"c": (2, 2), "d": (2, 2)}, 4, 4)
    assert apart.design_effect() == 1.0


def test_keys_past_the_cap_are_left_out_of_the_estimate() -> None:
    capped = KeyClusters(max_keys=2)
    capped.add("baseline", {"a": (2, 1), "b": (2, 0), "c": (5, 5)}, 9, 6)
    # Key c's runs are in no group; a and b keep growing.
    assert (capped.groups["baseline"].runs, capped.groups["baseline"].failures, capped.tracked) == (4, 1, 2)
    capped.add("baseline", {"a": (1, 1), "c": (1, 1)}, 2, 2)
    assert capped.keys["baseline"] == {"a": [3, 2], "b": [2, 0]}


def test_engine_divides_the_quality_evidence_by_the_estimated_or_given_design_effect() -> None:
    def sample(success: int, failed: int, keys: dict[str, dict[str, int]]) -> VersionSample:
        return VersionSample({"success": success, "llm_error": failed}, keys=keys)

    cohort = _cohort(
        sample(3, 3, {"a": {"success": 1, "llm_error": 2}, "b": {"success": 2}, "e": {"llm_error": 1}}),
        sample(2, 2, {"c": {"llm_error": 2}, "d": {"success": 2}}),
    )
    estimated = RolloutAnalysis(AnalysisConfig())
    result = estimated.observe([cohort], step_index=0)["quality"]
    raw = interval_log_likelihood_ratio(4, 2, 6, 3, 1.0, 3.0)
    # The counts of _clustered (its run without a key is key e here): so few keys that the
    # correlation's 95% bound is 1, so the design effect is sum n^2 / N = 2.2.
    effect = 2.2
    assert estimated.design_effect() == pytest.approx(effect, rel=1e-12)
    assert result.statistic == pytest.approx(raw / effect, rel=1e-12)
    assert result.evidence["design_effect"] == round(effect, 4)
    given = RolloutAnalysis(merged(AnalysisConfig(), {"quality": {"design_effect": 2.0}}))
    assert given.observe([cohort], step_index=0)["quality"].statistic == pytest.approx(raw / 2.0, rel=1e-12)


def test_local_runs_hand_over_outcomes_by_targeting_key() -> None:
    rollout = _Rollout()
    source = LocalRuns(max_samples=2, cohort_seconds=30)
    source.track("support", 7, ("v1", "v2"), 1000.0)
    source.on_runs(
        [
            _Run("v2", "llm_error", 1001, 3, targeting_key="u1"),
            _Run("v2", "success", 1002, 3, targeting_key="u1"),
            _Run("v2", "success", 1003, 3, targeting_key="u2"),
            # A third key in the interval is past max_samples keys: a run without a key.
            _Run("v2", "success", 1004, 3, targeting_key="u3"),
            _Run("v1", "success", 1005, 3),
        ]
    )
    saved = json.loads(json.dumps(source.state(rollout)))
    restarted = LocalRuns(max_samples=2, cohort_seconds=30)
    restarted.restore(rollout, saved)
    (cohort,) = asyncio.run(restarted.cohorts(rollout, 100, 1130))
    assert cohort.candidate.keys == {"u1": {"llm_error": 1, "success": 1}, "u2": {"success": 1}}
    assert cohort.candidate.keyed("not_success") == {"u1": (2, 1), "u2": (1, 0)}
    assert (cohort.candidate.runs, cohort.baseline.keys) == (4, {})
