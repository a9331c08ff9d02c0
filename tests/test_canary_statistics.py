"""The canary analysis statistics and decision rules on constructed samples: exact verdicts and boundaries."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from scipy.stats import mannwhitneyu, nchypergeom_fisher

from agentopz_otel.extensions.canary_analysis.config import AnalysisConfig, merged
from agentopz_otel.extensions.canary_analysis.engine import RolloutAnalysis, VersionSample
from agentopz_otel.extensions.canary_analysis.sources import _bucket_values, _quote, _regex_escape
from agentopz_otel.extensions.canary_analysis.statistics import (
    RankLooks,
    RateEvidence,
    hard_limit_verdict,
    interval_log_likelihood_ratio,
    look_alpha,
    look_due,
    rank_test,
    rate_verdict,
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


def test_hard_limit_acts_on_the_first_run() -> None:
    assert hard_limit_verdict("hard_limits", {"budget_exceeded": 0}, 0).verdict == "pass"
    result = hard_limit_verdict("hard_limits", {"budget_exceeded": 1}, 0)
    assert (result.verdict, result.statistic, result.threshold) == ("fail", 1.0, 1.0)
    assert hard_limit_verdict("hard_limits", {"budget_exceeded": 2}, 2).verdict == "pass"


def _sample(success: int, failed: int, cost: float = 0.01, outcome: str = "llm_error") -> VersionSample:
    return VersionSample({"success": success, outcome: failed}, [cost] * (success + failed), [5.0] * (success + failed))


def test_failures_counted_by_the_quality_guards_choice() -> None:
    sample = VersionSample({"success": 90, "quality_failure": 4, "llm_error": 6})
    assert sample.runs == 100
    assert sample.failures("not_success") == 10
    assert sample.failures("quality_failure") == 4


def test_engine_advances_only_after_step_minimums_with_every_guard_passing() -> None:
    config = AnalysisConfig.model_validate(
        {"step_min_runs": 20, "step_min_seconds": 60, "duration": {"enabled": False}}
    )
    analysis = RolloutAnalysis(config)
    # 19 candidate runs: the quality guard has no decision yet.
    analysis.observe(_sample(1900, 0), _sample(19, 0), step_index=0)
    assert analysis.results["quality"].verdict == "inconclusive"
    assert analysis.decide(600, last_step=False) is None
    analysis.observe(_sample(2000, 0), _sample(20, 0), step_index=0)
    assert {name: r.verdict for name, r in analysis.results.items()} == {
        "quality": "pass",
        "cost": "pass",
        "hard_limits": "pass",
    }
    assert analysis.decide(59.9, last_step=False) is None
    assert analysis.decide(60, last_step=False).action == "advance"
    # A new step counts its own runs from where it began.
    analysis.observe(_sample(2000, 0), _sample(20, 0), step_index=1)
    assert analysis.step_runs() == 0
    assert analysis.decide(600, last_step=False) is None


def test_engine_rolls_back_on_a_hard_limit_at_once() -> None:
    analysis = RolloutAnalysis(AnalysisConfig())
    analysis.observe(_sample(100, 0), _sample(1, 1, outcome="budget_exceeded"), step_index=0)
    decision = analysis.decide(0, last_step=False)
    assert decision.action == "rollback"
    assert decision.reason == "canary analysis: hard_limits failed"
    assert analysis.evidence()["hard_limits"]["evidence"] == {"candidate_runs_by_outcome": {"budget_exceeded": 1}}


def test_engine_ignores_a_counter_going_backwards() -> None:
    analysis = RolloutAnalysis(AnalysisConfig())
    analysis.observe(_sample(1000, 20), _sample(50, 1), step_index=0)
    before = analysis.rate
    analysis.observe(_sample(900, 10), _sample(40, 1), step_index=0)
    assert analysis.rate.candidate_runs == before.candidate_runs
    assert analysis.rate.log_likelihood_ratio == before.log_likelihood_ratio


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


def test_promql_label_values_are_escaped() -> None:
    assert _quote('a"b\\c') == '"a\\"b\\\\c"'
    # A regex metacharacter is escaped for the regex, then the backslash for the string literal.
    assert _quote(_regex_escape("v1.2|x")) == '"v1\\\\.2\\\\|x"'
