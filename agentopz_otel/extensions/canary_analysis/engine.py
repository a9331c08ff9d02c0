"""One rollout's analysis: guards over what each version served, and the decision they lead to (pure).

The same code decides whatever the data source (the service's own runs or Prometheus) and inside the
simulation (`bench/canary_simulation.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from ... import catalogue
from ...records import SUCCESS
from .config import NOT_SUCCESS, AnalysisConfig
from .statistics import FAIL, PASS, GuardResult, RankLooks, RateEvidence, hard_limit_verdict, rank_test, rate_verdict

GUARDS = catalogue.enum("analysis_guard")


@dataclass(frozen=True)
class VersionSample:
    """What one version served since the rollout started: runs by outcome, and bounded recent values."""

    outcomes: dict[str, int] = field(default_factory=dict)
    costs: Sequence[float] = ()
    durations: Sequence[float] = ()

    @cached_property
    def runs(self) -> int:
        return sum(self.outcomes.values())

    def failures(self, count: str) -> int:
        if count == NOT_SUCCESS:
            return self.runs - self.outcomes.get(SUCCESS, 0)
        return self.outcomes.get(count, 0)


@dataclass(frozen=True)
class Decision:
    action: Literal["rollback", "advance"]
    reason: str


class RolloutAnalysis:
    """Feed it cumulative samples on every look; it keeps the sequential tests' state between looks."""

    def __init__(self, config: AnalysisConfig) -> None:
        self.config = config
        self.rate = RateEvidence()
        self.cost = RankLooks()
        self.duration = RankLooks()
        self.results: dict[str, GuardResult] = {}
        self.candidate_runs = 0
        self.baseline_runs = 0
        self._counted = (0, 0, 0, 0)
        self._step_index: int | None = None
        self._step_start_runs = 0

    def observe(self, baseline: VersionSample, candidate: VersionSample, step_index: int) -> dict[str, GuardResult]:
        config = self.config
        if step_index != self._step_index:
            # The first step began with the rollout; a later one first seen now (after a restart) counts from now.
            first_look_at_first_step = self._step_index is None and step_index == 0
            self._step_index = step_index
            self._step_start_runs = 0 if first_look_at_first_step else candidate.runs
        self.candidate_runs, self.baseline_runs = candidate.runs, baseline.runs
        results: dict[str, GuardResult] = {}
        quality = config.quality
        if quality.enabled:
            counted = (
                candidate.runs,
                candidate.failures(quality.count),
                baseline.runs,
                baseline.failures(quality.count),
            )
            # A source may briefly report less than before (a replica's counter reset): count no negatives.
            pairs = list(zip(counted, self._counted, strict=True))
            gained = [max(0, now - before) for now, before in pairs]
            self._counted = (max(pairs[0]), max(pairs[1]), max(pairs[2]), max(pairs[3]))
            self.rate = self.rate.add(*gained, quality.tolerance, quality.detect_ratio)
            results["quality"] = rate_verdict("quality", self.rate, quality.alpha, quality.beta, quality.min_runs)
        for name, values in (("cost", "costs"), ("duration", "durations")):
            guard = getattr(config, name)
            if not guard.enabled:
                continue
            looks = rank_test(
                name,
                getattr(self, name),
                getattr(candidate, values),
                getattr(baseline, values),
                candidate.runs,
                guard.tolerance,
                guard.alpha,
                guard.min_runs,
                guard.growth,
            )
            setattr(self, name, looks)
            assert looks.last is not None
            results[name] = looks.last
        if config.hard_limits.enabled:
            counts = {outcome: candidate.outcomes.get(outcome, 0) for outcome in config.hard_limits.outcomes}
            results["hard_limits"] = hard_limit_verdict("hard_limits", counts, config.hard_limits.max_runs)
        self.results = results
        return results

    def step_runs(self) -> int:
        return self.candidate_runs - self._step_start_runs

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
