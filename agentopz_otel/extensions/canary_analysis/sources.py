"""Where the analysis reads what each version served: the service's own finished runs, or Prometheus.

Both give the same thing to the same decision code: cohorts, the runs of each version that are
comparable because they started under the same split. Prometheus sums every replica's series, so a
fleet behind a trace-ID load balancer is analysed as one; its cost and duration values come from the
histograms at bucket resolution.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import PrometheusSource
from .engine import Cohort, VersionSample


class SourceError(Exception):
    """The data source could not be read; the analysis is inconclusive until it can."""


# Open intervals kept per rollout; a run claiming a start further ahead (a skewed clock) is dropped.
MAX_OPEN_COHORTS = 1000
# Evaluation names whose scores are kept per interval and version (the score guard reads one).
MAX_SCORED_EVALUATIONS = 8


@dataclass
class _Served:
    """One version's runs started in one interval."""

    outcomes: Counter[str] = field(default_factory=Counter)
    costs: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    keys: dict[str, Counter[str]] = field(default_factory=dict)  # outcomes by targeting key

    def sample(self) -> VersionSample:
        keys = {key: dict(outcomes) for key, outcomes in self.keys.items()}
        return VersionSample(dict(self.outcomes), tuple(self.costs), tuple(self.durations), self.scores, keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcomes": dict(self.outcomes),
            "costs": self.costs,
            "durations": self.durations,
            "scores": self.scores,
            "keys": {key: dict(outcomes) for key, outcomes in self.keys.items()},
        }

    def add_key(self, key: str, outcome: str, max_keys: int) -> None:
        """Past `max_keys` keys in the interval, a new key's run counts as a run without a key."""
        outcomes = self.keys.get(key)
        if outcomes is None:
            if len(self.keys) >= max_keys:
                return
            outcomes = self.keys[key] = Counter()
        outcomes[outcome] += 1

    def add_scores(self, scores: dict[str, float], max_samples: int) -> None:
        for name, value in scores.items():
            kept = self.scores.get(name)
            if kept is None:
                if len(self.scores) >= MAX_SCORED_EVALUATIONS:
                    continue
                kept = self.scores[name] = []
            if len(kept) < max_samples:
                kept.append(value)


@dataclass
class _Tracked:
    rollout_id: Any
    versions: tuple[str, str]  # baseline, candidate
    origin: float  # the rollout's start: interval k holds runs started in [origin + k w, origin + (k + 1) w)
    cohorts: dict[int, dict[str, _Served]] = field(default_factory=dict)
    closed_before: int = 0  # intervals below this one have been handed to the analysis
    late: int = 0  # runs that finished after their interval became evidence
    dropped: int = 0  # runs past MAX_OPEN_COHORTS intervals ahead


class LocalRuns:
    """The runs this service finished, grouped by when they started.

    The feed calls `on_runs` on the event loop for every batch of finished runs: one dict lookup per
    run for agents without a rollout under analysis. A run counts in the interval of `cohort_seconds`
    it started in; an interval is handed to the analysis once `max_run_seconds` have passed since its
    end, when every run started in it has finished. Counting by start time keeps the versions' runs
    comparable while the split moves: counted by finish time, a new step's first minutes would hold
    the candidate's fast failures and none of its slow successes.
    """

    name = "local"

    def __init__(self, max_samples: int, cohort_seconds: float) -> None:
        self._max_samples = max_samples
        self._width = cohort_seconds
        self._tracked: dict[str, _Tracked] = {}

    def track(self, agent: str, rollout_id: Any, versions: tuple[str, str], started_at: float) -> None:
        current = self._tracked.get(agent)
        if current is not None and current.rollout_id == rollout_id:
            return
        self._tracked[agent] = _Tracked(rollout_id, versions, started_at)

    def forget_except(self, active: Sequence[Any]) -> None:
        """Drop what is kept for rollouts no longer active."""
        agents = {rollout.agent for rollout in active}
        for agent in [agent for agent in self._tracked if agent not in agents]:
            del self._tracked[agent]

    def on_runs(self, records: Sequence[Any]) -> None:
        tracked = self._tracked
        for record in records:
            found = tracked.get(record.agent)
            if found is None or record.prompt_version not in found.versions or record.started_at < found.origin:
                continue
            index = int((record.started_at - found.origin) // self._width)
            if index < found.closed_before:
                found.late += 1
                continue
            cohort = found.cohorts.get(index)
            if cohort is None:
                if len(found.cohorts) >= MAX_OPEN_COHORTS:
                    found.dropped += 1
                    continue
                cohort = found.cohorts[index] = {version: _Served() for version in found.versions}
            served = cohort[record.prompt_version]
            served.outcomes[record.outcome] += 1
            if record.targeting_key:
                served.add_key(record.targeting_key, record.outcome, self._max_samples)
            # Only complete costs, as the cost histogram Prometheus reads: both sources agree.
            if record.cost_usd is not None and record.cost_complete and len(served.costs) < self._max_samples:
                served.costs.append(record.cost_usd)
            if record.duration_seconds is not None and len(served.durations) < self._max_samples:
                served.durations.append(record.duration_seconds)
            if record.scores:
                served.add_scores(record.scores, self._max_samples)

    async def cohorts(self, rollout: Any, max_run_seconds: float, now: float, evaluation: str = "") -> list[Cohort]:
        """The intervals that became evidence since the last call, oldest first (with every evaluation's
        scores: `evaluation` only names the one a Prometheus source reads)."""
        found = self._tracked.get(rollout.agent)
        if found is None or found.rollout_id != rollout.id:
            return []
        closed_before = max(found.closed_before, math.floor((now - max_run_seconds - found.origin) / self._width))
        ready = sorted(index for index in found.cohorts if index < closed_before)
        found.closed_before = closed_before
        baseline, candidate = found.versions
        cohorts = []
        for index in ready:
            cohort = found.cohorts.pop(index)
            started = found.origin + index * self._width
            cohorts.append(Cohort(cohort[baseline].sample(), cohort[candidate].sample(), started))
        return cohorts

    def state(self, rollout: Any) -> dict[str, Any]:
        """The rollout's open intervals, for storage."""
        found = self._tracked.get(rollout.agent)
        if found is None or found.rollout_id != rollout.id:
            return {}
        return {
            "closed_before": found.closed_before,
            "late": found.late,
            "dropped": found.dropped,
            "cohorts": {
                str(index): {version: served.to_dict() for version, served in cohort.items()}
                for index, cohort in found.cohorts.items()
            },
        }

    def restore(self, rollout: Any, body: dict[str, Any]) -> None:
        """Open intervals saved before a restart; runs that finished since are added to them."""
        self.track(rollout.agent, rollout.id, (rollout.baseline, rollout.candidate), rollout.started_at)
        found = self._tracked[rollout.agent]
        found.closed_before = max(found.closed_before, body.get("closed_before", 0))
        found.late += body.get("late", 0)
        found.dropped += body.get("dropped", 0)
        for index, cohort in body.get("cohorts", {}).items():
            into = found.cohorts.setdefault(int(index), {version: _Served() for version in found.versions})
            for version, served in cohort.items():
                if version in into:
                    into[version].outcomes.update(served["outcomes"])
                    into[version].costs.extend(served["costs"])
                    into[version].durations.extend(served["durations"])
                    for name, values in served["scores"].items():
                        into[version].scores.setdefault(name, []).extend(values)
                    for key, outcomes in served.get("keys", {}).items():
                        into[version].keys.setdefault(key, Counter()).update(outcomes)

    def counts(self, rollout: Any) -> dict[str, int]:
        """Runs left out: finished after their interval became evidence, or started too far ahead."""
        found = self._tracked.get(rollout.agent)
        return {} if found is None else {"late_runs": found.late, "dropped_runs": found.dropped}

    async def close(self) -> None:
        return None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class PrometheusRuns:
    """Cohorts from PromQL over every replica's series, one per look: the runs finished in a window.

    Prometheus counts runs when they finish and cannot key them by start time without a label per
    interval (unbounded series). The equivalent used here: while the split stays constant, runs
    counted by finish time are unbiased once every run finishing in the window started after the last
    weight change, so a window opens `max_run_seconds` after each change (the step's start) and ends
    `lag_seconds` before now (the last scrapes are in). Per series, the counter's value at the window's
    end minus its value at its start: a series born inside counts from 0 (a new replica or version), a
    counter that went down was reset (a restarted replica) and counts its value at the end, a series
    gone by the end (a replaced replica) adds nothing for either version. Exact integer counts, no
    extrapolation, no running maximum.
    """

    name = "prometheus"

    def __init__(self, config: PrometheusSource) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._until: dict[Any, float] = {}  # by rollout id: where the last window ended

    async def _query(self, query: str, at: float) -> list[dict[str, Any]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.timeout_seconds))
        url = self._config.url.rstrip("/") + "/api/v1/query"
        try:
            async with self._session.get(url, params={"query": query, "time": f"{at:.3f}"}) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            raise SourceError(f"prometheus {self._config.url}: {type(error).__name__}: {error}") from None
        if response.status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else None
            raise SourceError(f"prometheus {self._config.url}: HTTP {response.status}: {detail or 'bad response'}")
        return body["data"]["result"]

    async def _increase(self, metric: str, matchers: str, since: float, now: float) -> list[tuple[dict, float]]:
        query = f"{metric}{{{matchers}}}"
        before = {_series_key(item["metric"]): float(item["value"][1]) for item in await self._query(query, since)}
        return [
            (item["metric"], counter_gain(before.get(_series_key(item["metric"])), float(item["value"][1])))
            for item in await self._query(query, now)
        ]

    def window(self, rollout: Any, max_run_seconds: float, now: float) -> tuple[float, float]:
        """The finish-time window the next cohort covers (empty when its end is not after its start)."""
        start = max(self._until.get(rollout.id, rollout.started_at), rollout.step_started_at + max_run_seconds)
        return start, now - self._config.lag_seconds

    async def cohorts(self, rollout: Any, max_run_seconds: float, now: float, evaluation: str = "") -> list[Cohort]:
        """The window's runs by version; with `evaluation` (the score guard's), its scores from the
        `agentopz_evaluation_score` histogram at bucket midpoints."""
        start, end = self.window(rollout, max_run_seconds, now)
        if end <= start:
            return []
        versions = (rollout.baseline, rollout.candidate)
        version_regex = "|".join(_regex_escape(version) for version in versions)
        matchers = f"agent={_quote(rollout.agent)},prompt_version=~{_quote(version_regex)}"
        if self._config.selector:
            matchers += "," + self._config.selector
        outcomes: dict[str, Counter[str]] = {version: Counter() for version in versions}
        for labels, gained in await self._increase("agentopz_runs_total", matchers, start, end):
            if labels.get("prompt_version") in outcomes:
                outcomes[labels["prompt_version"]][labels.get("outcome", "")] += round(gained)
        values: dict[str, dict[str, list[float]]] = {}
        for name, metric in (
            ("costs", "agentopz_run_cost_usd_bucket"),
            ("durations", "agentopz_run_duration_seconds_bucket"),
        ):
            buckets: dict[str, Counter[float]] = {version: Counter() for version in versions}
            for labels, gained in await self._increase(metric, matchers, start, end):
                if labels.get("prompt_version") in buckets:
                    buckets[labels["prompt_version"]][float(labels["le"])] += gained
            values[name] = {version: _bucket_values(buckets[version], self._config.max_samples) for version in versions}
        scores: dict[str, dict[str, list[float]]] = {version: {} for version in versions}
        if evaluation:
            buckets = {version: Counter() for version in versions}
            for labels, gained in await self._increase(
                "agentopz_evaluation_score_bucket", f"{matchers},evaluation={_quote(evaluation)}", start, end
            ):
                if labels.get("prompt_version") in buckets:
                    buckets[labels["prompt_version"]][float(labels["le"])] += gained
            for version in versions:
                scores[version][evaluation] = _bucket_values(buckets[version], self._config.max_samples, linear=True)
        self._until[rollout.id] = end
        baseline, candidate = (
            VersionSample(
                {outcome: count for outcome, count in outcomes[version].items() if count > 0},
                values["costs"][version],
                values["durations"][version],
                scores[version],
            )
            for version in versions
        )
        # Every run finishing in the window started after the step began (it opens max_run_seconds on).
        return [Cohort(baseline, candidate, rollout.step_started_at)]

    async def history(self, rollout: Any, hours: float) -> dict[str, int]:
        """The baseline's runs by outcome over `hours` before the rollout started, every replica's
        (`increase` over the range, so resets and replaced replicas count; `@` pins it to the start)."""
        matchers = f"agent={_quote(rollout.agent)},prompt_version={_quote(rollout.baseline)}"
        if self._config.selector:
            matchers += "," + self._config.selector
        window = f"[{round(hours * 3600)}s] @ {rollout.started_at:.3f}"
        query = f"sum by (outcome) (increase(agentopz_runs_total{{{matchers}}}{window}))"
        found = await self._query(query, rollout.started_at)
        counts = {item["metric"].get("outcome", ""): round(float(item["value"][1])) for item in found}
        return {outcome: count for outcome, count in counts.items() if count > 0}

    def state(self, rollout: Any) -> dict[str, Any]:
        until = self._until.get(rollout.id)
        return {} if until is None else {"until": until}

    def restore(self, rollout: Any, body: dict[str, Any]) -> None:
        if "until" in body:
            self._until[rollout.id] = body["until"]

    def counts(self, rollout: Any) -> dict[str, int]:
        return {}

    def forget_except(self, active: Sequence[Any]) -> None:
        rollout_ids = {rollout.id for rollout in active}
        for rollout_id in [key for key in self._until if key not in rollout_ids]:
            del self._until[rollout_id]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def counter_gain(before: float | None, after: float) -> float:
    """A counter series' increase between two instants: from 0 if it was born since, its value at the
    end if it went down (a reset)."""
    if before is None:
        return after
    return after - before if after >= before else after


def _series_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _regex_escape(value: str) -> str:
    return "".join("\\" + char if char in r".^$*+?()[]{}|\\" else char for char in value)


def _bucket_values(cumulative: Counter[float], max_samples: int, linear: bool = False) -> list[float]:
    """A histogram's observations as values at each bucket's geometric midpoint (`linear`: arithmetic,
    for evenly spaced buckets such as scores'; twice the last bound for +Inf), at most `max_samples` of
    them in the buckets' proportions."""
    bounds = sorted(cumulative)
    counts, previous = [], 0.0
    for bound in bounds:
        counts.append(max(0.0, cumulative[bound] - previous))
        previous = max(previous, cumulative[bound])
    total = sum(counts)
    if total <= 0:
        return []
    scale = min(1.0, max_samples / total)
    values: list[float] = []
    lower = 0.0
    finite = [bound for bound in bounds if math.isfinite(bound)]
    for bound, count in zip(bounds, counts, strict=True):
        if math.isfinite(bound) and linear:
            middle = (lower + bound) / 2 if bound > lower else bound
            lower = bound
        elif math.isfinite(bound):
            middle = math.sqrt(lower * bound) if lower > 0 else bound / 2
            lower = bound
        else:
            middle = 2 * finite[-1] if finite else 1.0
        values.extend([middle] * round(count * scale))
    return values
