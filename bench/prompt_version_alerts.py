"""How soon the shipped prompt-version alerts flag a worse canary, and how often they flag a healthy one.

Simulates launches of a canary minute by minute (Poisson traffic, binomial quality failures,
log-normal costs and durations) and evaluates, every minute, the conditions of
PromptVersionQualityRegression, PromptVersionCostRegression and PromptVersionLatencyRegression in
alert-rules/agentopz-alerts.yaml over their 6-hour window. Prints, per case, the share of launches
flagged, the median and p90 time to the first alert, and the canary runs and extra failed runs
(failures beyond the baseline's share) users saw by then; and the share of healthy canaries falsely
flagged within a day.

--promtool N checks the simulation against the real rules: N random launches of the first case are
written as promtool unit tests and their first firing minutes compared with the simulated ones.

    .venv/bin/python bench/prompt_version_alerts.py [--launches 2000] [--promtool 5]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RULES = Path(__file__).resolve().parent.parent / "alert-rules" / "agentopz-alerts.yaml"

# The rules' constants (alert-rules/agentopz-alerts.yaml, group agentopz-prompt-versions).
WINDOW_MINUTES = 360
LN_RATIO, RATIO_MINUS_ONE, EVIDENCE = 1.0986, 2, 4
MIN_RUNS, MIN_FAILURES, MEAN_RATIO = 20, 3, 1.5
MIN_COST_RUNS, MIN_DURATION_RUNS = 50, 30

BASELINE_FAILURES = 0.02
COST_USD, COST_SIGMA = 0.01, 1.0  # log-normal per run: median cost and log-space spread
DURATION_SECONDS, DURATION_SIGMA = 10.0, 0.5
DAY = 1440
CHUNK = 250


@dataclass(frozen=True)
class Case:
    name: str
    runs_per_second: float
    share: float
    failures: float = 1.0  # the candidate's quality failure share, as a multiple of the baseline's
    cost: float = 1.0
    duration: float = 1.0


def window(per_minute: np.ndarray) -> np.ndarray:
    """Sum over the last WINDOW_MINUTES minutes at every minute (what increase()[6h] sees)."""
    total = np.cumsum(per_minute, axis=1)
    total[:, WINDOW_MINUTES:] -= total[:, :-WINDOW_MINUTES].copy()
    return total


def lognormal_sums(rng: np.random.Generator, runs: np.ndarray, median: float, sigma: float) -> np.ndarray:
    """Sum of `runs` log-normal values per cell; normal approximation for busy cells."""
    mean = median * np.exp(sigma**2 / 2)
    variance = (np.exp(sigma**2) - 1) * mean**2
    sums = rng.normal(runs * mean, np.sqrt(runs * variance))
    small = runs <= 30
    flat = runs[small]
    values = rng.lognormal(np.log(median), sigma, int(flat.sum()))
    sums[small] = np.bincount(np.repeat(np.arange(len(flat)), flat), weights=values, minlength=len(flat))
    return np.maximum(sums, 0)


@dataclass
class Launches:
    """Per-minute traffic of many launches of one case, and the minute each alert first fires (-1: never)."""

    canary_runs: np.ndarray
    canary_failures: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    latency: np.ndarray
    series: dict[str, np.ndarray]


def simulate(case: Case, launches: int, minutes: int, rng: np.random.Generator) -> Launches:
    per_minute = case.runs_per_second * 60
    shape = (launches, minutes)
    canary_runs = rng.poisson(per_minute * case.share, shape)
    baseline_runs = rng.poisson(per_minute * (1 - case.share), shape)
    canary_failures = rng.binomial(canary_runs, min(1.0, BASELINE_FAILURES * case.failures))
    baseline_failures = rng.binomial(baseline_runs, BASELINE_FAILURES)
    runs, failures = window(canary_runs), window(canary_failures)
    base_runs, base_failures = window(baseline_runs), window(baseline_failures)
    evidence = failures * LN_RATIO - RATIO_MINUS_ONE * runs * (base_failures + 1) / (base_runs + 1)
    quality = (evidence >= EVIDENCE) & (failures >= MIN_FAILURES) & (runs >= MIN_RUNS)
    series = {
        "canary_runs": canary_runs,
        "canary_failures": canary_failures,
        "baseline_runs": baseline_runs,
        "baseline_failures": baseline_failures,
    }
    means = {}
    for name, median, sigma, factor, min_runs in (
        ("cost", COST_USD, COST_SIGMA, case.cost, MIN_COST_RUNS),
        ("duration", DURATION_SECONDS, DURATION_SIGMA, case.duration, MIN_DURATION_RUNS),
    ):
        canary = lognormal_sums(rng, canary_runs, median * factor, sigma)
        baseline = lognormal_sums(rng, baseline_runs, median, sigma)
        series[f"canary_{name}"], series[f"baseline_{name}"] = canary, baseline
        with np.errstate(invalid="ignore", divide="ignore"):
            means[name] = (runs >= min_runs) & (window(canary) / runs >= MEAN_RATIO * window(baseline) / base_runs)
    return Launches(
        np.cumsum(canary_runs, axis=1),
        np.cumsum(canary_failures, axis=1),
        first_minute(quality),
        first_minute(means["cost"]),
        first_minute(means["duration"]),
        series,
    )


def first_minute(condition: np.ndarray) -> np.ndarray:
    """1-based minute of the first True per launch, -1 where never (an alert at minute m fires at 6h+m)."""
    return np.where(condition.any(axis=1), condition.argmax(axis=1) + 1, -1)


def detection(case: Case, launches: int, rng: np.random.Generator) -> tuple[str, Launches]:
    result = simulate(case, launches, WINDOW_MINUTES, rng)
    first = result.quality if case.failures != 1 else result.cost if case.cost != 1 else result.latency
    fired = first > 0
    if not fired.any():
        return f"{case.name:<40} flagged in 6h: 0%", result
    rows = np.flatnonzero(fired)
    index = first[fired] - 1
    runs = result.canary_runs[rows, index]
    extra = result.canary_failures[rows, index] - BASELINE_FAILURES * runs
    line = (
        f"{case.name:<40} flagged in 6h: {fired.mean():6.1%}  median {np.median(first[fired]):4.0f} min  "
        f"p90 {np.percentile(first[fired], 90):4.0f} min  canary runs {np.median(runs):5.0f}"
    )
    if case.failures != 1:
        line += f"  extra failed runs {np.median(extra):4.1f}"
    return line, result


def promtool_first_minutes(result: Launches, count: int) -> list[int]:
    """The first firing minute of PromptVersionQualityRegression for launches 0..count-1 per promtool."""
    minutes = []
    for launch in range(count):
        values = {name: np.cumsum(per_minute[launch]) for name, per_minute in result.series.items()}
        labels = 'service="sim",agent="sim"'
        series = {
            f'agentopz_runs_total{{{labels},prompt_version="v1",outcome="success"}}': values["baseline_runs"]
            - values["baseline_failures"],
            f'agentopz_runs_total{{{labels},prompt_version="v1",outcome="quality_failure"}}': values[
                "baseline_failures"
            ],
            f'agentopz_runs_total{{{labels},prompt_version="v2",outcome="success"}}': values["canary_runs"]
            - values["canary_failures"],
            f'agentopz_runs_total{{{labels},prompt_version="v2",outcome="quality_failure"}}': values["canary_failures"],
        }
        # The canary's series start at 0 one minute before its first runs (the runs processor's zeros).
        test = {
            "rule_files": [str(RULES)],
            "evaluation_interval": "1m",
            "tests": [
                {
                    "interval": "1m",
                    "input_series": [
                        {"series": name, "values": " ".join(["0", *(f"{v:g}" for v in cumulative)])}
                        for name, cumulative in series.items()
                    ],
                    "alert_rule_test": [
                        {"eval_time": f"{m}m", "alertname": "PromptVersionQualityRegression", "exp_alerts": []}
                        for m in range(1, WINDOW_MINUTES + 1)
                    ],
                }
            ],
        }
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as file:
            json.dump(test, file)
            file.flush()
            output = subprocess.run(["promtool", "test", "rules", file.name], capture_output=True, text=True)
        failures = output.stdout + output.stderr
        times = re.findall(r"alertname: PromptVersionQualityRegression, time: (?:(\d+)h)?(\d+)m", failures)
        minutes.append(int(times[0][0] or 0) * 60 + int(times[0][1]) if times else -1)
    return minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=2000)
    parser.add_argument("--promtool", type=int, default=0, metavar="N")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(
        f"{args.launches} launches per case; baseline {BASELINE_FAILURES:.0%} quality failures, "
        f"costs log-normal (sigma {COST_SIGMA}), durations log-normal (sigma {DURATION_SIGMA})\n"
    )
    cases = [
        Case("3x quality failures, 1 run/s, 5%", 1, 0.05, failures=3),
        Case("5x quality failures, 1 run/s, 5%", 1, 0.05, failures=5),
        Case("3x quality failures, 10 runs/s, 5%", 10, 0.05, failures=3),
        Case("3x quality failures, 1 run/s, 25%", 1, 0.25, failures=3),
        Case("3x cost per run, 1 run/s, 5%", 1, 0.05, cost=3),
        Case("3x run duration, 1 run/s, 5%", 1, 0.05, duration=3),
    ]
    first_case = None
    for case in cases:
        line, result = detection(case, args.launches, rng)
        first_case = first_case or result
        print(line)
    print()
    for runs_per_second, share in ((1, 0.05), (1, 0.25), (10, 0.05)):
        flagged: dict[str, list[np.ndarray]] = {"quality": [], "cost": [], "latency": []}
        for start in range(0, args.launches, CHUNK):  # a day of minutes per launch: a chunk at a time
            healthy = simulate(Case("healthy", runs_per_second, share), min(CHUNK, args.launches - start), DAY, rng)
            for name, chunks in flagged.items():
                chunks.append(getattr(healthy, name) > 0)
        flags = {name: np.concatenate(chunks) for name, chunks in flagged.items()}
        any_flag = flags["quality"] | flags["cost"] | flags["latency"]
        print(
            f"healthy canary, {runs_per_second:g} run/s, {share:.0%}: falsely flagged within a day: "
            + "  ".join(f"{name} {flag.mean():.2%}" for name, flag in flags.items())
            + f"  any {any_flag.mean():.2%}"
        )
    if args.promtool:
        assert first_case is not None
        simulated = [int(m) for m in first_case.quality[: args.promtool]]
        real = promtool_first_minutes(first_case, args.promtool)
        agree = sum(abs(a - b) <= 1 for a, b in zip(simulated, real, strict=True) if (a > 0) == (b > 0))
        print(f"\npromtool check (3x quality): simulated first minutes {simulated}, promtool {real}; ")
        print(f"{agree} of {args.promtool} within a minute")


if __name__ == "__main__":
    main()
