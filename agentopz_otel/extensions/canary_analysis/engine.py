"""One rollout's analysis: guards over the runs each version started, and the decision they lead to (pure).

The same code decides whatever the data source (the service's own runs or Prometheus) and inside the
simulation (`bench/canary_simulation.py`). Its whole state is a plain dict (`to_dict`, `from_dict`),
which the extension keeps in storage so that a restart continues the tests instead of starting them
again with their full alpha.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

from ... import catalogue
from ...records import SUCCESS
from .config import NOT_SUCCESS, AnalysisConfig, HistoryTest
from .statistics import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    GuardResult,
    HistoryEvidence,
    IntervalCounts,
    KeyClusters,
    RankLooks,
    RateEvidence,
    ScoreEvidence,
    hard_limit_verdict,
    history_verdict,
    rank_test,
    rate_verdict,
    score_verdict,
)

GUARDS = catalogue.enum("analysis_guard")
ROLES = catalogue.enum("rollout_role")
# Targeting keys tracked per rollout for the design effect (KeyClusters says what happens past it).
MAX_KEYS = 10_000
# The design effect uses the within-key correlation's estimate plus this many standard errors
# (one-sided 95%): an estimate from few repeating keys is uncertain, and too low a one rolls back.
CORRELATION_Z = 1.645
# Of a rate guard's alpha, the part spent on the baseline rate's upper bound at the 100% step (the
# chance it is below the true rate); the rest is the SPRT's threshold.
BASELINE_BOUND_PART = 0.1
# The guards whose failure-share tests run against the concurrent baseline and the baseline's history.
RATE_GUARDS = ("quality", "hard_limits")


def failures(outcomes: Mapping[str, int], count: str) -> int:
    """Runs counted as failed: every one not `success` (not_success), or those of outcome `count`."""
    if count == NOT_SUCCESS:
        return sum(outcomes.values()) - outcomes.get(SUCCESS, 0)
    return outcomes.get(count, 0)


@dataclass(frozen=True)
class VersionSample:
    """Runs of one version by outcome, with their cost and duration values and evaluator scores."""

    outcomes: dict[str, int] = field(default_factory=dict)
    costs: Sequence[float] = ()
    durations: Sequence[float] = ()
    scores: Mapping[str, Sequence[float]] = field(default_factory=dict)
    # Outcomes of the runs that named a targeting key, by key (the other runs are in `outcomes` only).
    keys: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @cached_property
    def runs(self) -> int:
        return sum(self.outcomes.values())

    def failures(self, count: str) -> int:
        return failures(self.outcomes, count)

    def keyed(self, count: str) -> dict[str, tuple[int, int]]:
        """(runs, failures) per targeting key."""
        return {key: (sum(outcomes.values()), failures(outcomes, count)) for key, outcomes in self.keys.items()}

    def counted(self, outcomes: Sequence[str]) -> int:
        return sum(self.outcomes.get(outcome, 0) for outcome in outcomes)


@dataclass(frozen=True)
class Cohort:
    """The runs each version started in one interval (or, from Prometheus, finished in a window where
    every finishing run started under the current split), once none of them can still be running."""

    baseline: VersionSample
    candidate: VersionSample
    started_at: float = -math.inf  # when the interval (or the window's runs at the earliest) started


@dataclass(frozen=True)
class Decision:
    action: Literal["rollback", "advance"]
    reason: str


class RolloutAnalysis:
    """Feed it the cohorts that became evidence since the last look; it keeps the tests' state."""

    def __init__(self, config: AnalysisConfig, max_samples: int = 2000) -> None:
        self.config = config
        self.max_samples = max_samples
        self.rate = RateEvidence()
        self.limits = RateEvidence()
        self.clusters = KeyClusters(MAX_KEYS)
        self.limit_counts: Counter[str] = Counter()
        self.cost = RankLooks()
        self.duration = RankLooks()
        self.score = ScoreEvidence()
        # The quality and hard-limit guards' one-sample tests against the baseline's pre-rollout history
        # (set_history); None without a usable history, and then the two-sample test has the whole alpha.
        self.history: HistoryEvidence | None = None
        self.limits_history: HistoryEvidence | None = None
        self.history_runs = 0
        # Runs whose keys fed the design effect when they are not the test's own (Prometheus): 0 else.
        self.clustered_runs = 0
        self.values: dict[str, dict[str, deque[float]]] = {
            role: {name: deque(maxlen=max_samples) for name in ("costs", "durations")} for role in ROLES
        }
        self.results: dict[str, GuardResult] = {}
        self.candidate_runs = 0
        self.baseline_runs = 0
        self.cohorts = 0
        self.restarts = 0
        self._step_index: int | None = None
        self._step_runs = 0

    def set_history(self, outcomes: Mapping[str, int]) -> None:
        """The baseline's runs by outcome before the rollout started (its snapshot, taken once)."""
        quality, limits = self.config.quality, self.config.hard_limits
        self.history_runs = sum(outcomes.values())
        self.history = self._history_test("quality", quality, failures(outcomes, quality.count))
        counted = sum(outcomes.get(outcome, 0) for outcome in limits.outcomes)
        self.limits_history = self._history_test("hard_limits", limits, counted)

    def _history_test(self, name: str, guard: HistoryTest, counted: int) -> HistoryEvidence | None:
        if not guard.history_share > 0 or self.history_runs < guard.history_min_runs:
            return None
        delta = self.config.alphas().get(name, 0.0) * guard.history_share * BASELINE_BOUND_PART
        return HistoryEvidence.of(self.history_runs, counted, delta) if delta > 0 else None

    def _histories(self) -> dict[str, HistoryEvidence | None]:
        return {"quality": self.history, "hard_limits": self.limits_history}

    def rate_alphas(self, name: str) -> tuple[tuple[float, float], tuple[float, float]]:
        """(threshold alpha, bound delta) of a rate guard's two-sample test and of its one-sample test
        against the history: the guard's alpha split by `history_share` (all to the two-sample test
        without a history), each part's BASELINE_BOUND_PART spent on its baseline rate's upper bound."""
        alpha = self.config.alphas().get(name, 0.0)  # 0: the guard is disabled
        guard: HistoryTest = getattr(self.config, name)
        part = guard.history_share if self._histories()[name] is not None else 0.0
        two, one = alpha * (1 - part), alpha * part
        return (
            (two * (1 - BASELINE_BOUND_PART), two * BASELINE_BOUND_PART),
            (one * (1 - BASELINE_BOUND_PART), one * BASELINE_BOUND_PART),
        )

    def observe(
        self,
        cohorts: Sequence[Cohort],
        step_index: int,
        step_started_at: float = -math.inf,
        clustering: Sequence[Cohort] | None = None,
    ) -> dict[str, GuardResult]:
        """Add the cohorts; a step's own runs are those of cohorts that started after it began, so it
        advances on what its own weight served, not on runs still finishing from the step before.
        `clustering`, when given, are the cohorts whose targeting keys estimate the design effect
        instead of those of `cohorts` (Prometheus counts have no keys; this replica's own runs do)."""
        config = self.config
        alphas = config.alphas()
        if step_index != self._step_index:
            self._step_index = step_index
            self._step_runs = 0
        quality, limits, score = config.quality, config.hard_limits, config.score
        (two_alpha, two_delta), (history_alpha, _) = self.rate_alphas("quality")
        (limits_alpha, limits_delta), (limits_history_alpha, _) = self.rate_alphas("hard_limits")
        for cohort in cohorts:
            baseline, candidate = cohort.baseline, cohort.candidate
            self.cohorts += 1
            self.candidate_runs += candidate.runs
            if cohort.started_at >= step_started_at:
                self._step_runs += candidate.runs
            self.baseline_runs += baseline.runs
            if quality.enabled:
                counts = IntervalCounts(
                    candidate.runs, candidate.failures(quality.count), baseline.runs, baseline.failures(quality.count)
                )
                self.rate, self.history = add_rate(
                    self.rate, self.history, counts, quality.tolerance, quality.detect_ratio, two_delta
                )
                if clustering is None:
                    self._add_clusters(cohort)
            if limits.enabled:
                counts = IntervalCounts(
                    candidate.runs,
                    candidate.counted(limits.outcomes),
                    baseline.runs,
                    baseline.counted(limits.outcomes),
                )
                self.limits, self.limits_history = add_rate(
                    self.limits, self.limits_history, counts, 1.0, limits.detect_ratio, limits_delta
                )
                for outcome in limits.outcomes:
                    self.limit_counts[outcome] += candidate.outcomes.get(outcome, 0)
            if score.enabled:
                self.score = self.score.add(
                    candidate.scores.get(score.evaluation, ()),
                    baseline.scores.get(score.evaluation, ()),
                    score.detect_shift,
                    score.higher_is_better,
                    score.min_baseline_runs,
                    self.max_samples,
                )
            for role, sample in (("baseline", baseline), ("candidate", candidate)):
                self.values[role]["costs"].extend(sample.costs)
                self.values[role]["durations"].extend(sample.durations)
        if quality.enabled:
            for cohort in clustering or ():
                self._add_clusters(cohort)
                self.clustered_runs += cohort.baseline.runs + cohort.candidate.runs
        results: dict[str, GuardResult] = {}
        if quality.enabled:
            results["quality"] = self._quality_verdict(two_alpha, history_alpha)
        for name in ("cost", "duration"):
            guard = getattr(config, name)
            if not guard.enabled:
                continue
            looks = rank_test(
                name,
                getattr(self, name),
                self.values["candidate"][name + "s"],
                self.values["baseline"][name + "s"],
                self.candidate_runs,
                guard.tolerance,
                alphas[name],
                guard.min_runs,
                guard.growth,
            )
            setattr(self, name, looks)
            assert looks.last is not None
            results[name] = looks.last
        if limits.enabled:
            counts = {outcome: self.limit_counts[outcome] for outcome in limits.outcomes}
            result = hard_limit_verdict("hard_limits", self.limits, counts, limits_alpha, limits.max_runs)
            # The guard passes unless it fails: only the history test's fail counts (its beta and
            # minimum runs are the quality guard's, for the evidence's pass and wait only).
            results["hard_limits"] = with_history(
                result, self.limits_history, limits_history_alpha, quality.beta, 1, 1.0, self.history_runs
            )
        if score.enabled:
            results["score"] = score_verdict("score", self.score, alphas["score"], score.beta, score.min_runs)
        self.results = results
        return results

    def _add_clusters(self, cohort: Cohort) -> None:
        count = self.config.quality.count
        for role, sample in (("baseline", cohort.baseline), ("candidate", cohort.candidate)):
            self.clusters.add(role, sample.keyed(count), sample.runs, sample.failures(count))

    def _quality_verdict(self, two_alpha: float, history_alpha: float) -> GuardResult:
        quality = self.config.quality
        design_effect = self.design_effect()
        result = rate_verdict("quality", self.rate, two_alpha, quality.beta, quality.min_runs, design_effect)
        return with_history(
            result, self.history, history_alpha, quality.beta, quality.min_runs, design_effect, self.history_runs
        )

    def design_effect(self) -> float:
        """The quality guard's `design_effect` when set, else the one its runs' targeting keys show.
        Keys from this replica's share of the fleet's runs (`clustering`) have their clusters scaled
        by the fleet's runs over the replica's: right when traces spread over the replicas by trace
        ID, too large (conservative) when each key stays on one replica."""
        given = self.config.quality.design_effect
        if given is not None:
            return given
        scale = 1.0
        if self.clustered_runs:
            scale = max(1.0, (self.candidate_runs + self.baseline_runs) / self.clustered_runs)
        return self.clusters.design_effect(CORRELATION_Z, scale)

    def budget_text(self) -> str:
        """The budget's split as the console shows it, with a rate guard's own split when a history
        test shares its alpha."""
        text = self.config.budget_text()
        alphas = self.config.alphas()
        for name, history in self._histories().items():
            if history is None or name not in alphas:
                continue
            part, alpha = getattr(self.config, name).history_share, alphas[name]
            text += (
                f"; {name}'s {alpha:.2%}: {alpha * part:.2%} against the baseline's history "
                f"({self.history_runs} runs), {alpha * (1 - part):.2%} against its concurrent runs"
            )
        return text

    def step_runs(self) -> int:
        return self._step_runs

    def decide(self, step_age_seconds: float, last_step: bool) -> Decision | None:
        """Roll back on any failing guard; advance (promote at the last step) once the step has its
        minimum runs and time and every guard passes; else wait."""
        failing = [name for name, result in self.results.items() if result.verdict == FAIL]
        if failing:
            return Decision("rollback", "canary analysis: " + ", ".join(f"{name} failed" for name in failing))
        if not self.results or any(result.verdict != PASS for result in self.results.values()):
            return None
        if self.step_runs() < self.config.step_min_runs or step_age_seconds < self.config.step_min_seconds:
            return None
        what = "promote" if last_step else "advance"
        return Decision("advance", f"canary analysis: every guard passed; {what}")

    def evidence(self) -> dict[str, Any]:
        return {name: result.to_dict() for name, result in self.results.items()}

    def to_dict(self) -> dict[str, Any]:
        """Everything the tests have accumulated, as JSON-ready data."""
        return {
            "rate": self.rate.to_dict(),
            "limits": self.limits.to_dict(),
            "clusters": self.clusters.to_dict(),
            "limit_counts": dict(self.limit_counts),
            "cost": self.cost.to_dict(),
            "duration": self.duration.to_dict(),
            "score": self.score.to_dict(),
            "history": None if self.history is None else self.history.to_dict(),
            "limits_history": None if self.limits_history is None else self.limits_history.to_dict(),
            "history_runs": self.history_runs,
            "clustered_runs": self.clustered_runs,
            "values": {
                role: {name: list(values) for name, values in kinds.items()} for role, kinds in self.values.items()
            },
            "candidate_runs": self.candidate_runs,
            "baseline_runs": self.baseline_runs,
            "cohorts": self.cohorts,
            "restarts": self.restarts,
            "step_index": self._step_index,
            "step_runs": self._step_runs,
        }

    @classmethod
    def from_dict(cls, config: AnalysisConfig, body: dict[str, Any], max_samples: int = 2000) -> RolloutAnalysis:
        """The analysis `to_dict` saved, continued after a restart (counted in `restarts`)."""
        analysis = cls(config, max_samples)
        analysis.rate = RateEvidence(**body["rate"])
        analysis.limits = RateEvidence(**body["limits"])
        # Saved before targeting keys were kept: the test goes on, its key counts start now.
        if "clusters" in body:
            analysis.clusters = KeyClusters.from_dict(body["clusters"])
        analysis.limit_counts = Counter(body["limit_counts"])
        analysis.cost = RankLooks.from_dict(body["cost"])
        analysis.duration = RankLooks.from_dict(body["duration"])
        analysis.score = ScoreEvidence.from_dict(body["score"])
        # Saved before histories were kept: the two-sample test goes on alone.
        if body.get("history") is not None:
            analysis.history = HistoryEvidence.from_dict(body["history"])
        if body.get("limits_history") is not None:
            analysis.limits_history = HistoryEvidence.from_dict(body["limits_history"])
        analysis.history_runs = body.get("history_runs", 0)
        analysis.clustered_runs = body.get("clustered_runs", 0)
        for role, kinds in body["values"].items():
            for name, values in kinds.items():
                analysis.values[role][name].extend(values)
        analysis.candidate_runs = body["candidate_runs"]
        analysis.baseline_runs = body["baseline_runs"]
        analysis.cohorts = body["cohorts"]
        analysis.restarts = body["restarts"] + 1
        analysis._step_index = body["step_index"]
        analysis._step_runs = body["step_runs"]
        return analysis


def add_rate(
    rate: RateEvidence,
    history: HistoryEvidence | None,
    counts: IntervalCounts,
    tolerance: float,
    detect_ratio: float,
    delta: float,
) -> tuple[RateEvidence, HistoryEvidence | None]:
    """A rate guard's two tests plus one interval. With a history, a step without concurrent baseline
    runs (100%) is the one-sample test's alone: it keeps the baseline's last shift state, which the
    two-sample test's fallback (the rollout's own earlier baseline runs) would not."""
    if history is None or counts.baseline_runs > 0:
        rate = rate.add(*counts, tolerance, detect_ratio, delta)
    if history is not None:
        history = history.add(counts, tolerance, detect_ratio)
    return rate, history


def with_history(
    result: GuardResult,
    history: HistoryEvidence | None,
    alpha: float,
    beta: float,
    min_runs: int,
    design_effect: float,
    history_runs: int,
) -> GuardResult:
    """A rate guard's verdict: fails when either test fails, each within its own part of the guard's
    alpha (so the union stays within the guard's alpha); else passes when either test accepts,
    inconclusive otherwise."""
    if history is None:
        return replace(result, evidence={**result.evidence, "history_runs": history_runs})
    verdict, details = history_verdict(history, alpha, beta, min_runs, design_effect)
    evidence = {**result.evidence, "history": details}
    if result.verdict != FAIL and verdict == FAIL:
        return GuardResult(result.guard, FAIL, details["statistic"], details["threshold"], evidence)
    if result.verdict == INCONCLUSIVE and verdict == PASS:
        return replace(result, verdict=PASS, evidence=evidence)
    return replace(result, evidence=evidence)
