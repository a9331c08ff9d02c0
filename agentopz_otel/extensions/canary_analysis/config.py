"""Configuration of the canary analysis: the extension's settings and each rollout's guards.

The defaults come from `bench/canary_simulation.py` (see the README's canary analysis section).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NOT_SUCCESS = "not_success"
QUALITY_FAILURE = "quality_failure"


class QualityGuard(BaseModel):
    """The share of failed runs, by a one-sided SPRT on the odds ratio against the concurrent baseline."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # not_success: every run whose outcome is not `success`; quality_failure: runs that failed checks.
    count: Literal["not_success", "quality_failure"] = NOT_SUCCESS
    # H0: the candidate's failure odds are at most `tolerance` times the baseline's.
    tolerance: float = Field(default=1.0, ge=1.0)
    # H1: they are `detect_ratio` times the baseline's (the effect the test is tuned to catch fastest).
    detect_ratio: float = Field(default=3.0, gt=1.0)
    # Ville's inequality bounds a healthy candidate's false rollback by alpha over any number of looks.
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    beta: float = Field(default=0.2, gt=0, lt=0.5)
    min_runs: int = Field(default=20, ge=1)

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
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_runs: int = Field(default=5, ge=2)
    # Looks happen when the candidate's run count grows by this factor; look j spends alpha/(j(j+1)).
    growth: float = Field(default=1.5, gt=1.0)


class HardLimits(BaseModel):
    """Outcomes the candidate may not show more than `max_runs` times: act at once, no statistics."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    outcomes: list[str] = Field(default_factory=lambda: ["budget_exceeded"])
    max_runs: int = Field(default=0, ge=0)


class AnalysisConfig(BaseModel):
    """A rollout's `analysis`: its guards and when a step may advance."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    quality: QualityGuard = Field(default_factory=QualityGuard)
    cost: RankGuard = Field(default_factory=RankGuard)
    duration: RankGuard = Field(default_factory=RankGuard)
    hard_limits: HardLimits = Field(default_factory=HardLimits)
    # A step advances once it has this many candidate runs, this many seconds, and every guard passes.
    step_min_runs: int = Field(default=20, ge=0)
    step_min_seconds: float = Field(default=600.0, ge=0)


class PrometheusSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="base URL of the Prometheus HTTP API, e.g. http://prometheus:9090")
    timeout_seconds: float = Field(default=5.0, gt=0)
    # Extra label matchers for every query, e.g. job="agentopz".
    selector: str = ""
    # Samples per version and metric read from the histograms (bucket midpoints).
    max_samples: int = Field(default=2000, ge=10)


class CanaryAnalysisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rollouts: str = "rollouts"
    interval_seconds: float = Field(default=30.0, gt=0)
    # Cost and duration values kept per rollout and version when reading the service's own runs.
    max_samples: int = Field(default=2000, ge=10)
    prometheus: PrometheusSource | None = None
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
