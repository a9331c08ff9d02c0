"""Simulated rollouts through the real canary-analysis source and decision code, on a simulated clock.

Runs arrive at `--rate` per second (Poisson). Each belongs to a targeting key; the key's variant is
sticky (its hash bucket against the candidate's weight, as flagd splits). A run fails with its
version's probability, scaled per conversation by a Beta frailty (within-key correlation); failures
and successes last log-normal durations of their own (failures far faster in the slow shapes); a
share of runs end `budget_exceeded` in both versions. Each run record carries its key (as
`targeting_key`), from which the analysis estimates the design effect. Finished runs go, batch by
batch as their finish times pass, into the real `LocalRuns.on_runs`; every `--interval` the real
`LocalRuns.cohorts` hands the intervals that became evidence to the real `RolloutAnalysis`, which
decides. A restart saves nothing
but what the extension saves after each look (the analysis and the source's open intervals, through
JSON), loses the runs that finished since, and continues. The Prometheus row runs the real
`PrometheusRuns` windows over two simulated replicas' counters (one replaced mid-rollout); the sticky
Prometheus row estimates the design effect from replica a's own runs, as the extension does. Every
rollout starts with the baseline's history (a week at `--rate`, 2% failures and the shape's share of
`budget_exceeded`, through the real `BaselineHistory`); the outage row fails both versions' runs at 15%
for 30 minutes mid-rollout.

Printed per traffic shape: false rollbacks of a healthy candidate walking 5, 25, 50, 100 and held a
day at 5%; for a worse candidate (3x failures, 3x cost) the extra failed runs users saw before the
rollback (candidate runs that failed and would have succeeded on the baseline: coupled draws) and the
candidate runs by then; how long a healthy rollout waits at 100% before it is promoted.

    .venv/bin/python bench/canary_simulation.py --quick      # a few minutes on one core
    .venv/bin/python bench/canary_simulation.py --walks 1000 --days 200
    .venv/bin/python bench/canary_simulation.py --only "both 5 s" --analysis '{"quality": {"detect_ratio": 2}}'
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from agentopz_otel.extensions.canary_analysis.config import AnalysisConfig, PrometheusSource, merged
from agentopz_otel.extensions.canary_analysis.engine import GUARDS, RolloutAnalysis
from agentopz_otel.extensions.canary_analysis.history import BaselineHistory
from agentopz_otel.extensions.canary_analysis.sources import LocalRuns, PrometheusRuns
from agentopz_otel.processors.runs.evaluations import SCORE_BUCKETS

DAY = 86_400.0
AGENT = "agent"
BASELINE, CANDIDATE = "v1", "v2"
STEPS = (5, 25, 50, 100)
SCORED, SCORE_MEAN, SCORE_SD = "helpfulness", 0.7, 0.15
BASE_FAILURE = 0.02
HISTORY_HOURS = 168.0
SCORE_BUCKET_METRIC = "agentopz_evaluation_score_bucket"


class Record(NamedTuple):
    """The fields of a RunRecord the source reads."""

    agent: str
    prompt_version: str
    outcome: str
    started_at: float
    finished_at: float
    duration_seconds: float
    cost_usd: float
    cost_complete: bool
    scores: dict[str, float]
    targeting_key: str


@dataclass(frozen=True)
class Shape:
    name: str
    success_seconds: float = 5.0
    failure_seconds: float = 5.0
    runs_per_key: int = 1
    correlation: float = 0.0
    budget_exceeded: float = 0.0
    restart_hours: float = 0.0
    prometheus: bool = False
    # A provider outage failing both versions' runs started in [start, end) seconds at this rate.
    outage: tuple[float, float, float] | None = None
    analysis: dict[str, Any] | None = None


@dataclass(frozen=True)
class Case:
    shape: Shape
    failure_factor: float = 1.0
    cost_factor: float = 1.0
    # The candidate's evaluator score, in baseline standard deviations below the baseline's.
    score_shift: float = 0.0
    hold: bool = False


@dataclass
class Rollout:
    """What the sources read of a rollout."""

    id: int
    agent: str
    baseline: str
    candidate: str
    started_at: float
    step_started_at: float


@dataclass
class Outcome:
    decision: str  # rollback, promote, none
    seconds: float
    candidate_runs: int
    extra_failures: int
    failed_guards: tuple[str, ...] = ()
    seconds_at_100: float = math.nan
    restarts: int = 0


class Replicas:
    """Two replicas' `agentopz_runs_total` counters and `agentopz_evaluation_score_bucket` histograms as
    Prometheus answers instant queries; at `replace_at` replica b goes away (its series vanish) and
    replica c takes its traces, its series from 0."""

    def __init__(self, replace_at: float) -> None:
        self.replace_at = replace_at
        # By (replica, metric, version, the series' other labels): the times and running totals.
        self.times: dict[tuple, list[float]] = defaultdict(list)
        self.totals: dict[tuple, list[int]] = defaultdict(list)

    def _count(self, at: float, key: tuple, step: int = 1) -> None:
        totals = self.totals[key]
        self.times[key].append(at)
        totals.append((totals[-1] if totals else 0) + step)

    def add(self, at: float, record: Record, index: int) -> None:
        replica = "a" if index % 2 else ("b" if at < self.replace_at else "c")
        version = record.prompt_version
        self._count(at, (replica, "agentopz_runs_total", version, (("outcome", record.outcome),)))
        # A histogram's series has every bucket from its first observation on, as the service exports it.
        for name, score in record.scores.items():
            for bound in (*SCORE_BUCKETS, math.inf):
                le = "+Inf" if bound == math.inf else str(float(bound))
                key = (replica, SCORE_BUCKET_METRIC, version, (("evaluation", name), ("le", le)))
                self._count(at, key, int(score <= bound))

    def answer(self, query: str, at: float) -> list[dict[str, Any]]:
        metric = query.split("{", 1)[0]
        found = []
        for key, times in self.times.items():
            replica, series_metric, version, labels = key
            position = bisect.bisect_right(times, at)
            if series_metric != metric or position == 0 or (replica == "b" and at >= self.replace_at):
                continue
            metric_labels = {"instance": replica, "agent": AGENT, "prompt_version": version, **dict(labels)}
            found.append({"metric": metric_labels, "value": [at, str(self.totals[key][position - 1])]})
        return found


class SimulatedPrometheus(PrometheusRuns):
    """The real windowing and counter arithmetic, reading the simulated replicas instead of HTTP."""

    def __init__(self, replicas: Replicas) -> None:
        super().__init__(PrometheusSource(url="http://simulated", lag_seconds=0))
        self.replicas = replicas

    async def _query(self, query: str, at: float) -> list[dict[str, Any]]:
        return self.replicas.answer(query, at)


def simulate(case: Case, config: AnalysisConfig, interval: float, rng, rate: float) -> Outcome:
    shape = case.shape
    max_run = config.max_run_seconds
    rollout = Rollout(1, AGENT, BASELINE, CANDIDATE, 0.0, 0.0)
    replicas = Replicas(replace_at=1800.0) if shape.prometheus else None
    source: Any = SimulatedPrometheus(replicas) if replicas else LocalRuns(2000, interval)
    # With Prometheus, the deciding replica's (a's) own runs: their targeting keys give the design effect.
    keys = LocalRuns(2000, interval) if replicas else None
    for local in (source, keys):
        if isinstance(local, LocalRuns):
            local.track(AGENT, rollout.id, (BASELINE, CANDIDATE), 0.0)
    analysis = RolloutAnalysis(config)
    evaluation = config.score.evaluation if config.score.enabled else ""
    # The baseline's week before the rollout, through the real tally: its runs at its 2% failures.
    history = BaselineHistory(HISTORY_HOURS, 10)
    before = int(rng.poisson(rate * HISTORY_HOURS * 3600))
    over_before = int(rng.binomial(before, shape.budget_exceeded))
    failed_before = int(rng.binomial(before - over_before, BASE_FAILURE))
    history.add(AGENT, BASELINE, "success", -3600.0, 0.0, before - over_before - failed_before)
    history.add(AGENT, BASELINE, "llm_error", -3600.0, 0.0, failed_before)
    history.add(AGENT, BASELINE, "budget_exceeded", -3600.0, 0.0, over_before)
    analysis.set_history(history.snapshot(AGENT, BASELINE, 0.0))
    base_failure = BASE_FAILURE
    factor = case.failure_factor
    # Beta frailty per key: mean 1, within-key correlation of outcomes `correlation`.
    concentration = (1 / shape.correlation - 1) if shape.correlation else 0.0
    pending: dict[int, list[tuple[float, Record]]] = defaultdict(list)  # by the look that delivers them
    key_bucket: list[float] = []
    key_frailty: list[float] = []
    key_runs: list[int] = []
    open_keys: list[int] = []
    step_index, now, extra = 0, 0.0, 0
    reached_100 = math.nan
    last_restart = 0.0
    horizon = DAY if case.hold else 6 * 3600.0
    loop = asyncio.new_event_loop()
    try:
        while now < horizon:
            weight = STEPS[step_index]
            count = int(rng.poisson(rate * interval))
            starts = now + np.sort(rng.uniform(0, interval, count))
            uniforms = rng.uniform(0, 1, (count, 4))
            for i in range(count):
                # A run continues an open conversation, or starts a new key.
                if shape.runs_per_key > 1 and open_keys and uniforms[i, 3] < 1 - 1 / shape.runs_per_key:
                    key = open_keys[int(uniforms[i, 3] * len(open_keys)) % len(open_keys)]
                else:
                    key = len(key_bucket)
                    key_bucket.append(float(rng.uniform()))
                    key_frailty.append(
                        float(rng.beta(base_failure * concentration, (1 - base_failure) * concentration)) / base_failure
                        if concentration
                        else 1.0
                    )
                    key_runs.append(0)
                    if shape.runs_per_key > 1:
                        open_keys.append(key)
                key_runs[key] += 1
                if shape.runs_per_key > 1 and key_runs[key] >= shape.runs_per_key and key in open_keys:
                    open_keys.remove(key)
                version = CANDIDATE if key_bucket[key] < weight / 100 else BASELINE
                p_base = min(1.0, base_failure * key_frailty[key])
                started = float(starts[i])
                if shape.outage and shape.outage[0] <= started < shape.outage[1]:
                    p_base = min(1.0, shape.outage[2] * key_frailty[key])
                p_cand = min(1.0, p_base * factor)
                p = p_cand if version == CANDIDATE else p_base
                failed = uniforms[i, 0] < p
                if version == CANDIDATE and p_base <= uniforms[i, 0] < p_cand:
                    extra += 1
                if uniforms[i, 1] < shape.budget_exceeded:
                    outcome, failed = "budget_exceeded", True
                else:
                    outcome = "llm_error" if failed else "success"
                median = shape.failure_seconds if failed else shape.success_seconds
                duration = float(median * math.exp(0.5 * rng.standard_normal()))
                cost = float(
                    0.01 * (case.cost_factor if version == CANDIDATE else 1.0) * math.exp(0.6 * rng.standard_normal())
                )
                finished = started + duration
                shift = case.score_shift if version == CANDIDATE else 0.0
                score = SCORE_MEAN + SCORE_SD * (float(rng.standard_normal()) - shift)
                record = Record(
                    AGENT, version, outcome, started, finished, duration, cost, True, {SCORED: score}, f"key-{key}"
                )
                pending[math.ceil(finished / interval)].append((finished, record))
            now += interval
            look = round(now / interval)
            delivered = pending.pop(look, [])
            restart = shape.restart_hours and now - last_restart >= shape.restart_hours * 3600
            if replicas is not None and keys is not None:
                for index, (finished, record) in enumerate(sorted(delivered)):
                    replicas.add(finished, record, index)
                keys.on_runs([record for index, (_, record) in enumerate(sorted(delivered)) if index % 2])
            elif not restart:
                source.on_runs([record for _, record in delivered])
            if restart:
                # The process dies: what finished since the last look is lost; the saved state returns.
                last_restart = now
                saved = json.loads(json.dumps({"analysis": analysis.to_dict(), "source": source.state(rollout)}))
                source = LocalRuns(2000, interval)
                source.restore(rollout, saved["source"])
                analysis = RolloutAnalysis.from_dict(config, saved["analysis"])
            cohorts = loop.run_until_complete(source.cohorts(rollout, max_run, now, evaluation))
            clustering = loop.run_until_complete(keys.cohorts(rollout, max_run, now)) if keys else None
            analysis.observe(cohorts, step_index, rollout.step_started_at, clustering)
            step_age = -1.0 if case.hold else now - rollout.step_started_at
            decision = analysis.decide(step_age, step_index == len(STEPS) - 1)
            if decision is None:
                continue
            if decision.action == "rollback":
                failed_guards = tuple(name for name, result in analysis.results.items() if result.verdict == "fail")
                return Outcome(
                    "rollback", now, analysis.candidate_runs, extra, failed_guards, restarts=analysis.restarts
                )
            if step_index == len(STEPS) - 1:
                return Outcome("promote", now, analysis.candidate_runs, extra, (), now - reached_100, analysis.restarts)
            step_index += 1
            rollout = replace(rollout, step_started_at=now)
            if STEPS[step_index] == 100:
                reached_100 = now
        return Outcome("none", now, analysis.candidate_runs, extra, restarts=analysis.restarts)
    finally:
        loop.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    rolled = [o for o in outcomes if o.decision == "rollback"]
    promoted = [o for o in outcomes if o.decision == "promote"]
    return {
        "n": len(outcomes),
        "rolled_back": len(rolled) / len(outcomes),
        "promoted": len(promoted) / len(outcomes),
        "undecided": sum(o.decision == "none" for o in outcomes) / len(outcomes),
        "runs_p50": percentile([o.candidate_runs for o in rolled], 50),
        "runs_p90": percentile([o.candidate_runs for o in rolled], 90),
        "extra_p50": percentile([o.extra_failures for o in outcomes], 50),
        "extra_p90": percentile([o.extra_failures for o in outcomes], 90),
        "minutes_p50": percentile([o.seconds / 60 for o in rolled], 50),
        "at_100_p50": percentile([o.seconds_at_100 / 60 for o in promoted], 50),
        "at_100_max": max((o.seconds_at_100 / 60 for o in promoted), default=math.nan),
        "by_guard": {g: sum(g in o.failed_guards for o in rolled) for g in GUARDS},
        "restarts": max((o.restarts for o in outcomes), default=0),
    }


def config_for(base: AnalysisConfig, shape: Shape) -> AnalysisConfig:
    # The user sets max_run_seconds to cover their runs: 3x the successes' median (their p98.6).
    given = {"max_run_seconds": 3 * max(shape.success_seconds, shape.failure_seconds), **(shape.analysis or {})}
    return merged(base, given)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walks", type=int, default=400, help="rollouts per walking / worse row (default 400)")
    parser.add_argument("--days", type=int, default=100, help="rollouts per day-held row (default 100; 0: none)")
    parser.add_argument("--quick", action="store_true", help="100 walks and 20 days a row")
    parser.add_argument("--rate", type=float, default=1.0, help="runs per second (default 1)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between looks (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", help="run the shapes whose name contains one of these (comma-separated)")
    parser.add_argument(
        "--analysis",
        type=json.loads,
        default={},
        help='the analysis over the defaults, as JSON, e.g. \'{"quality": {"detect_ratio": 2}}\'',
    )
    args = parser.parse_args()
    walks, days = (100, 20) if args.quick else (args.walks, args.days)
    base = merged(AnalysisConfig(), args.analysis)
    sticky_deff = 1 + (10 - 1) * 0.17
    shapes = [
        Shape("both 5 s"),
        Shape("successes 120 s, failures 5 s", 120.0, 5.0),
        Shape("successes 600 s, failures 10 s", 600.0, 10.0),
        Shape("sticky: 10 runs/key, correlation 0.17", runs_per_key=10, correlation=0.17),
        Shape(
            "sticky, design_effect 2.53",
            runs_per_key=10,
            correlation=0.17,
            analysis={"quality": {"design_effect": sticky_deff}},
        ),
        Shape("score guard on", analysis={"score": {"enabled": True, "evaluation": SCORED}}),
        Shape("restart every 2 h", restart_hours=2.0),
        Shape("restart every 1 h", restart_hours=1.0),
        Shape("budget_exceeded 1 in 1,000", budget_exceeded=1e-3),
        Shape("budget_exceeded 1 in 10,000", budget_exceeded=1e-4),
        Shape("outage: both 2% -> 15% for 30 min from 20 min", outage=(1200.0, 3000.0, 0.15)),
        # The simulated Prometheus serves agentopz_runs_total and the scores' histogram: no cost or duration.
        Shape(
            "Prometheus, a replica replaced at 30 min",
            prometheus=True,
            analysis={"cost": {"enabled": False}, "duration": {"enabled": False}},
        ),
        Shape(
            "score guard on, Prometheus (bucket midpoints)",
            prometheus=True,
            analysis={
                "cost": {"enabled": False},
                "duration": {"enabled": False},
                "score": {"enabled": True, "evaluation": SCORED},
            },
        ),
        # Traces spread over the replicas by trace ID: replica a sees about half of each key's runs.
        Shape(
            "Prometheus, sticky: 10 runs/key, correlation 0.17",
            runs_per_key=10,
            correlation=0.17,
            prometheus=True,
            analysis={"cost": {"enabled": False}, "duration": {"enabled": False}},
        ),
    ]
    started = time.perf_counter()
    print(
        f"{args.rate} run/s, first step 5%, steps {list(STEPS)}, baseline 2% failures, "
        f"a look every {args.interval:.0f} s"
    )
    print(f"budget: {base.budget_text()}")
    print(
        f"{'shape':45s} case                 n   rolled back  undecided  extra failed p50/p90"
        "  cand. runs p50/p90  at 100% min p50/max  by guard"
    )
    rng = np.random.default_rng(args.seed)
    for shape in shapes:
        if args.only and not any(part in shape.name for part in args.only.split(",")):
            continue
        config = config_for(base, shape)
        cases = [("healthy, walk", Case(shape), walks), ("healthy, day at 5%", Case(shape, hold=True), days)]
        if shape.name in ("both 5 s", "successes 600 s, failures 10 s", "sticky: 10 runs/key, correlation 0.17"):
            cases += [
                ("3x failures", Case(shape, failure_factor=3.0), walks),
                ("3x cost", Case(shape, cost_factor=3.0), walks),
            ]
        if shape.name.startswith("Prometheus, sticky"):
            cases.append(("3x failures", Case(shape, failure_factor=3.0), walks))
        if "score guard on" in shape.name:
            cases += [
                ("3x f., score -0.5sd", Case(shape, failure_factor=3.0, score_shift=0.5), walks),
                ("3x f., score -1sd", Case(shape, failure_factor=3.0, score_shift=1.0), walks),
                ("3x f., same score", Case(shape, failure_factor=3.0), walks),
            ]
        for name, case, count in cases:
            if not count:
                continue
            s = summarize([simulate(case, config, args.interval, rng, args.rate) for _ in range(count)])
            guards = " ".join(f"{g} {v}" for g, v in s["by_guard"].items() if v)
            print(
                f"{shape.name:45s} {name:19s} {s['n']:4d} {s['rolled_back']:11.1%} {s['undecided']:9.1%}"
                f"  {s['extra_p50']:9.1f}/{s['extra_p90']:<9.1f}  {s['runs_p50']:8.0f}/{s['runs_p90']:<8.0f}"
                f"  {s['at_100_p50']:7.1f}/{s['at_100_max']:<7.1f}  {guards}"
                + (f"  restarts {s['restarts']}" if s["restarts"] else ""),
                flush=True,
            )
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
