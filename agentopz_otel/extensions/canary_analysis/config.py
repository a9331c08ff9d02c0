"""Configuration of the canary analysis: the extension's settings and each rollout's guards.

The defaults come from `bench/canary_simulation.py` (see the README's canary analysis section).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NOT_SUCCESS = "not_success"
QUALITY_FAILURE = "quality_failure"
# The guards that spend the false-rollback budget.
BUDGETED = ("quality", "cost", "duration", "hard_limits", "score")


class HistoryTest(BaseModel):
    """A rate guard's one-sample test of the candidate against the baseline's history before the
    rollout (at every step, beside the two-sample test against the concurrent baseline)."""

    # The part of the guard's alpha for that test; 0: no history test.
    history_share: float = Field(default=0.8, ge=0.0, lt=1.0)
    # A history of fewer baseline runs is not used (its rate's upper bound would be too loose to help).
    history_min_runs: int = Field(default=200, ge=1)


class QualityGuard(HistoryTest):
    """The share of failed runs, by a one-sided SPRT on the odds ratio against the concurrent baseline."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # not_success: every run whose outcome is not `success`; quality_failure: runs that failed checks.
    count: Literal["not_success", "quality_failure"] = NOT_SUCCESS
    # H0: the candidate's failure odds are at most `tolerance` times the baseline's.
    tolerance: float = Field(default=1.0, ge=1.0)
    # H1: they are `detect_ratio` times the baseline's (the effect the test is tuned to catch fastest).
    detect_ratio: float = Field(default=3.0, gt=1.0)
    # Its part of the rollout's false_rollback_budget (relative to the other enabled guards' shares).
    share: float = Field(default=0.6, gt=0)
    # Unset: the guard's part of the budget. Ville's inequality bounds a healthy candidate's false
    # rollback by alpha over any number of looks.
    alpha: float | None = Field(default=None, gt=0, lt=0.5)
    beta: float = Field(default=0.2, gt=0, lt=0.5)
    min_runs: int = Field(default=20, ge=1)
    # Runs of one targeting key correlate (a conversation): the evidence is divided by this variance
    # inflation, 1 + (runs per key - 1) x within-key correlation. Unset: estimated from the runs'
    # targeting keys (runs without one, and every run read from Prometheus, count as independent).
    design_effect: float | None = Field(default=None, ge=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> QualityGuard:
        if self.detect_ratio <= self.tolerance:
            raise ValueError(f"detect_ratio ({self.detect_ratio}) must exceed tolerance ({self.tolerance})")
        return self


class RankGuard(BaseModel):
    """Cost per run or run duration, by a one-sided Mann-Whitney U test against the scaled baseline."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # H0: the candidate's values are no larger than the baseline's times `tolerance`.
    tolerance: float = Field(default=1.5, ge=1.0)
    share: float = Field(default=0.15, gt=0)
    alpha: float | None = Field(default=None, gt=0, lt=0.5)
    min_runs: int = Field(default=5, ge=2)
    # Looks happen when the candidate's run count grows by this factor; look j spends alpha/(j(j+1)).
    growth: float = Field(default=1.5, gt=1.0)


class HardLimits(HistoryTest):
    """Outcomes (a run over its budget) the candidate may not show more often than the baseline does:
    a one-sided SPRT on the odds ratio against the baseline, and an optional absolute cap."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    outcomes: list[str] = Field(default_factory=lambda: ["budget_exceeded"])
    # H1 of the relative test: the candidate shows the outcomes `detect_ratio` times as often.
    detect_ratio: float = Field(default=5.0, gt=1.0)
    share: float = Field(default=0.1, gt=0)
    alpha: float | None = Field(default=None, gt=0, lt=0.5)
    # Absolute cap: fail at once when more than this many candidate runs show the outcomes; unset: none.
    max_runs: int | None = Field(default=None, ge=0)


class ScoreGuard(BaseModel):
    """A per-run evaluator score (`gen_ai.evaluation.score.value` of one evaluation), by a one-sided
    Gaussian SPRT of each candidate score against the baseline's mean and spread. Off by default: it
    needs an evaluator that scores every run."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    evaluation: str = Field(default="", max_length=128)
    higher_is_better: bool = True
    # H1: the candidate's scores are this many baseline standard deviations worse.
    detect_shift: float = Field(default=0.5, gt=0)
    share: float = Field(default=0.3, gt=0)
    alpha: float | None = Field(default=None, gt=0, lt=0.5)
    beta: float = Field(default=0.2, gt=0, lt=0.5)
    min_runs: int = Field(default=10, ge=1)
    # Baseline scores needed before the candidate's are weighed (the baseline's mean and spread).
    min_baseline_runs: int = Field(default=30, ge=2)

    @model_validator(mode="after")
    def _named(self) -> ScoreGuard:
        if self.enabled and not self.evaluation:
            raise ValueError("score.evaluation: name the evaluation whose score the guard reads")
        return self


class AnalysisConfig(BaseModel):
    """A rollout's `analysis`: its guards and when a step may advance."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # The chance a healthy candidate is rolled back, over the whole rollout (so also per day), split
    # across the enabled guards by their `share`; a guard's explicit `alpha` takes its part first.
    false_rollback_budget: float = Field(default=0.05, gt=0, lt=0.5)
    quality: QualityGuard = Field(default_factory=QualityGuard)
    cost: RankGuard = Field(default_factory=RankGuard)
    duration: RankGuard = Field(default_factory=RankGuard)
    hard_limits: HardLimits = Field(default_factory=HardLimits)
    score: ScoreGuard = Field(default_factory=ScoreGuard)
    # A step advances once it has this many candidate runs, this many seconds, and every guard passes.
    step_min_runs: int = Field(default=20, ge=0)
    step_min_seconds: float = Field(default=600.0, ge=0)
    # The longest a run lasts. Runs are compared by when they started: the runs started in an interval
    # become evidence once the interval is this old, so slow successes count as much as fast failures.
    # A run that finishes later is left out (counted as late) for both versions alike.
    max_run_seconds: float = Field(default=900.0, gt=0)

    @model_validator(mode="after")
    def _within_budget(self) -> AnalysisConfig:
        explicit = sum(alpha for alpha in self._explicit_alphas().values())
        if explicit > self.false_rollback_budget + 1e-12:
            raise ValueError(
                f"the guards' alpha add up to {explicit:g}, over false_rollback_budget ({self.false_rollback_budget:g})"
            )
        return self

    def _enabled(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in BUDGETED if getattr(self, name).enabled}

    def _explicit_alphas(self) -> dict[str, float]:
        return {name: guard.alpha for name, guard in self._enabled().items() if guard.alpha is not None}

    def alphas(self) -> dict[str, float]:
        """Each enabled guard's false-rollback probability: its explicit alpha, else its share of what
        the explicit ones leave of the budget. They add up to at most false_rollback_budget."""
        explicit = self._explicit_alphas()
        rest = {name: guard.share for name, guard in self._enabled().items() if name not in explicit}
        left = self.false_rollback_budget - sum(explicit.values())
        shares = sum(rest.values())
        return {**explicit, **{name: left * share / shares for name, share in rest.items()}}

    def budget_text(self) -> str:
        """The budget and its split, as the console and the CLI show it next to the verdicts."""
        split = ", ".join(f"{name} {alpha:.2%}" for name, alpha in self.alphas().items())
        return (
            f"false-rollback budget {self.false_rollback_budget:.0%} per rollout (so per day), split: {split}; "
            "regression alerts defer to this analysis"
        )


class PrometheusSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="base URL of the Prometheus HTTP API, e.g. http://prometheus:9090")
    timeout_seconds: float = Field(default=5.0, gt=0)
    # Extra label matchers for every query, e.g. job="agentopz".
    selector: str = ""
    # Samples per version and metric read from the histograms (bucket midpoints).
    max_samples: int = Field(default=2000, ge=10)
    # A window of finished runs ends this long before now, so every replica's last scrape is in.
    lag_seconds: float = Field(default=30.0, ge=0)


class CanaryAnalysisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rollouts: str = "rollouts"
    # The storage extension that keeps each active rollout's analysis across restarts.
    storage: str = "storage"
    # Seconds between looks; also the width of the start-time intervals runs are grouped in.
    interval_seconds: float = Field(default=30.0, gt=0)
    # Cost and duration values kept per rollout and version when reading the service's own runs, and
    # targeting keys per interval and version (past it, a new key's runs count as runs without a key).
    max_samples: int = Field(default=2000, ge=10)
    prometheus: PrometheusSource | None = None
    # The baseline's history: each version's finished runs by outcome over this many hours before now
    # (hourly buckets, kept in storage), snapshot when a rollout starts for the quality guard's
    # one-sample test. With a Prometheus source the snapshot is read from Prometheus instead.
    history_hours: float = Field(default=168.0, gt=0, le=24 * 90)
    # (agent, prompt version) pairs the history keeps; runs of further pairs are not kept.
    history_max_series: int = Field(default=1000, ge=1)
    defaults: AnalysisConfig = Field(default_factory=AnalysisConfig)


def merged(defaults: AnalysisConfig, given: dict[str, Any] | None) -> AnalysisConfig:
    """A rollout's analysis: `given` over `defaults`, guard by guard; ValueError with the reason if invalid."""
    base = defaults.model_dump()
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    try:
        return AnalysisConfig.model_validate(base)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'analysis'}: {item['msg']}" for item in error.errors()
        )
        raise ValueError(f"invalid analysis: {problems}") from None
