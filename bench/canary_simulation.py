"""Simulated rollouts through the real canary-analysis decision code: what detection can promise.

Each rollout walks the steps (first step = the canary share) with the analysis looking every
`--interval` seconds, as the extension does. Runs arrive as a Poisson process; each run fails with
its version's probability; cost and duration are log-normal. Printed per traffic level and canary
share:

- a worse candidate (3x failures, or 3x cost per run): time to rollback, candidate runs by then,
  and the exposure, the extra failed runs users saw (candidate runs that failed and would have
  succeeded on the baseline, the two outcomes of a run drawn together);
- a healthy candidate: false rollbacks while it walks the steps to promotion, and over a day held
  at its first step (the worst case: a paused or slow rollout under analysis all day).

    .venv/bin/python bench/canary_simulation.py               # < 1 minute
    .venv/bin/python bench/canary_simulation.py --rollouts 2000 --grid
    .venv/bin/python bench/canary_simulation.py --quality-alpha 0.2   # faster rollback, more false ones
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from agentopz_otel.extensions.canary_analysis.config import AnalysisConfig, merged
from agentopz_otel.extensions.canary_analysis.engine import GUARDS, RolloutAnalysis, VersionSample

DAY = 86_400.0
COST_SIGMA = 0.6
DURATION_SIGMA = 0.6


@dataclass(frozen=True)
class Scenario:
    runs_per_second: float
    first_step: int
    baseline_failure: float = 0.02
    failure_factor: float = 1.0
    cost_factor: float = 1.0
    hold_first_step: bool = False


@dataclass
class Outcome:
    decision: str  # rollback, promote, none
    seconds: float
    candidate_runs: int
    extra_failures: int
    failed_guards: tuple[str, ...] = ()


class Draws:
    """Log-normal values drawn in blocks (one numpy call per few thousand runs, not per look)."""

    def __init__(self, rng, median: float, sigma: float, block: int = 20_000) -> None:
        self._rng, self._median, self._sigma, self._block = rng, median, sigma, block
        self._values: list[float] = []
        self._next = 0

    def take(self, count: int) -> list[float]:
        if self._next + count > len(self._values):
            size = max(self._block, count)
            self._values = (self._median * self._rng.lognormal(0, self._sigma, size)).tolist()
            self._next = 0
        taken = self._values[self._next : self._next + count]
        self._next += count
        return taken


def simulate(scenario: Scenario, config: AnalysisConfig, interval: float, max_samples: int, rng) -> Outcome:
    steps = [scenario.first_step, *[w for w in (25, 50, 100) if w > scenario.first_step]]
    analysis = RolloutAnalysis(config)
    failure = {
        "baseline": scenario.baseline_failure,
        "candidate": min(1.0, scenario.baseline_failure * scenario.failure_factor),
    }
    # Of the candidate's failed runs, the share that would have succeeded on the baseline (coupled draws).
    extra_share = max(0.0, 1 - failure["baseline"] / failure["candidate"]) if failure["candidate"] else 0.0
    outcomes = {"baseline": {"success": 0, "error": 0}, "candidate": {"success": 0, "error": 0}}
    costs = {version: deque(maxlen=max_samples) for version in outcomes}
    durations = {version: deque(maxlen=max_samples) for version in outcomes}
    cost_draws = {
        "baseline": Draws(rng, 0.01, COST_SIGMA),
        "candidate": Draws(rng, 0.01 * scenario.cost_factor, COST_SIGMA),
    }
    duration_draws = {version: Draws(rng, 5.0, DURATION_SIGMA) for version in outcomes}
    extra = 0
    step_index, step_started, now = 0, 0.0, 0.0
    while now < DAY:
        now += interval
        total = int(rng.poisson(scenario.runs_per_second * interval))
        candidate = int(rng.binomial(total, steps[step_index] / 100))
        for version, runs in (("baseline", total - candidate), ("candidate", candidate)):
            if not runs:
                continue
            failed = int(rng.binomial(runs, failure[version]))
            if version == "candidate" and failed and extra_share:
                extra += int(rng.binomial(failed, extra_share))
            outcomes[version]["error"] += failed
            outcomes[version]["success"] += runs - failed
            costs[version].extend(cost_draws[version].take(runs))
            durations[version].extend(duration_draws[version].take(runs))
        samples = {
            version: VersionSample(dict(outcomes[version]), costs[version], durations[version]) for version in outcomes
        }
        analysis.observe(samples["baseline"], samples["candidate"], step_index)
        step_age = -1.0 if scenario.hold_first_step else now - step_started
        decision = analysis.decide(step_age, step_index == len(steps) - 1)
        if decision is None:
            continue
        runs = samples["candidate"].runs
        if decision.action == "rollback":
            failed_guards = tuple(name for name, result in analysis.results.items() if result.verdict == "fail")
            return Outcome("rollback", now, runs, extra, failed_guards)
        if step_index == len(steps) - 1:
            return Outcome("promote", now, runs, extra)
        step_index, step_started = step_index + 1, now
    return Outcome("none", now, samples["candidate"].runs, extra)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarize(outcomes: list[Outcome]) -> dict[str, float]:
    rolled = [o for o in outcomes if o.decision == "rollback"]
    return {
        "rolled_back": len(rolled) / len(outcomes),
        "promoted": sum(o.decision == "promote" for o in outcomes) / len(outcomes),
        "minutes_p50": percentile([o.seconds / 60 for o in rolled], 50),
        "minutes_p90": percentile([o.seconds / 60 for o in rolled], 90),
        "runs_p50": percentile([o.candidate_runs for o in rolled], 50),
        "runs_p90": percentile([o.candidate_runs for o in rolled], 90),
        "extra_p50": percentile([o.extra_failures for o in outcomes], 50),
        "extra_p90": percentile([o.extra_failures for o in outcomes], 90),
        "by_guard": {g: sum(g in o.failed_guards for o in rolled) / len(outcomes) for g in GUARDS},
        "promote_minutes_p50": percentile([o.seconds / 60 for o in outcomes if o.decision == "promote"], 50),
    }


def run(scenario: Scenario, config: AnalysisConfig, count: int, interval: float, max_samples: int, seed: int):
    rng = np.random.default_rng(seed)
    return summarize([simulate(scenario, config, interval, max_samples, rng) for _ in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rollouts", type=int, default=200, help="simulated rollouts per row (default 200; a quarter for a day held)"
    )
    parser.add_argument("--grid", action="store_true", help="also 0.2 and 5 runs/s and 25%% canaries")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between looks (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quality-alpha", type=float, help="the quality guard's alpha instead of its default")
    args = parser.parse_args()
    config = AnalysisConfig()
    if args.quality_alpha is not None:
        config = merged(config, {"quality": {"alpha": args.quality_alpha}})
    max_samples = 2000
    traffic = [(1.0, 5)] + ([(0.2, 5), (5.0, 5), (1.0, 25), (5.0, 25)] if args.grid else [])
    started = time.perf_counter()
    print(f"defaults: {config.model_dump()}")
    print(
        f"a look every {args.interval:.0f} s, baseline 2% failures, steps {{canary}},25,50,100 (held: never advanced)"
    )
    print(
        "runs/s canary  case                    n  rolled back  minutes p50/p90  cand. runs p50/p90"
        "  extra failed p50/p90  rolled back by"
    )
    figures: dict[tuple[float, int, str], dict] = {}
    for rate, share in traffic:
        cases = [
            ("3x failures", Scenario(rate, share, failure_factor=3.0)),
            ("3x cost/run", Scenario(rate, share, cost_factor=3.0)),
            ("healthy, walk", Scenario(rate, share)),
            ("healthy, a day held", Scenario(rate, share, hold_first_step=True)),
        ]
        for name, scenario in cases:
            count = args.rollouts if not scenario.hold_first_step else max(25, args.rollouts // 4)
            s = figures[(rate, share, name)] = run(scenario, config, count, args.interval, max_samples, args.seed)
            promoted = (
                f"; promoted {s['promoted']:.1%}, p50 {s['promote_minutes_p50']:.0f} min" if s["promoted"] else ""
            )
            print(
                f"{rate:6.1f} {share:5d}%  {name:20s} {count:4d} {s['rolled_back']:11.1%}  "
                f"{s['minutes_p50']:7.1f}/{s['minutes_p90']:<7.1f}  {s['runs_p50']:8.0f}/{s['runs_p90']:<8.0f}"
                f"  {s['extra_p50']:9.1f}/{s['extra_p90']:<9.1f}  "
                + " ".join(f"{g} {v:.1%}" for g, v in s["by_guard"].items() if v)
                + promoted
            )
    worse, costly = figures[(1.0, 5, "3x failures")], figures[(1.0, 5, "3x cost/run")]
    walk, held = figures[(1.0, 5, "healthy, walk")], figures[(1.0, 5, "healthy, a day held")]
    print("targets at 1 run/s, 5% canary:")
    expected = worse["runs_p50"] * 0.02 * (3 - 1)
    print(
        f"  3x failures rolled back, median extra failed runs <= 3: {worse['extra_p50']:.1f} "
        f"(expected from the median {worse['runs_p50']:.0f} candidate runs: {expected:.1f})"
    )
    print(
        f"  healthy candidate falsely rolled back within a day <= 5%: {held['rolled_back']:.1%} held at 5% all day, "
        f"{walk['rolled_back']:.1%} walking to promotion"
    )
    print(f"  3x cost per run rolled back within 10 candidate runs (median): {costly['runs_p50']:.0f}")
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
