"""Where the analysis reads what each version served: the service's own finished runs, or Prometheus.

Both give the same thing, a `VersionSample` per version over the rollout's period, to the same
decision code. Prometheus sums every replica's series, so a fleet behind a trace-ID load balancer is
analysed as one; its cost and duration values come from the histograms at bucket resolution.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import PrometheusSource
from .engine import VersionSample


class SourceError(Exception):
    """The data source could not be read; the analysis is inconclusive until it can."""


@dataclass
class _Served:
    outcomes: Counter[str] = field(default_factory=Counter)
    costs: deque[float] = field(default_factory=deque)
    durations: deque[float] = field(default_factory=deque)

    def sample(self) -> VersionSample:
        return VersionSample(dict(self.outcomes), tuple(self.costs), tuple(self.durations))


@dataclass
class _Tracked:
    rollout_id: Any
    versions: dict[str, _Served]


class LocalRuns:
    """Samples from the runs this service finished, counted from when the rollout was first seen.

    The feed calls `on_runs` on the event loop for every batch of finished runs: one dict lookup per
    run for agents without a rollout under analysis.
    """

    name = "local"

    def __init__(self, max_samples: int) -> None:
        self._max_samples = max_samples
        self._tracked: dict[str, _Tracked] = {}

    def track(self, agent: str, rollout_id: Any, versions: Sequence[str]) -> None:
        current = self._tracked.get(agent)
        if current is not None and current.rollout_id == rollout_id:
            return
        self._tracked[agent] = _Tracked(
            rollout_id,
            {
                version: _Served(costs=deque(maxlen=self._max_samples), durations=deque(maxlen=self._max_samples))
                for version in versions
            },
        )

    def untrack_except(self, agents: set[str]) -> None:
        for agent in [agent for agent in self._tracked if agent not in agents]:
            del self._tracked[agent]

    def on_runs(self, records: Sequence[Any]) -> None:
        tracked = self._tracked
        for record in records:
            found = tracked.get(record.agent)
            if found is None:
                continue
            served = found.versions.get(record.prompt_version)
            if served is None:
                continue
            served.outcomes[record.outcome] += 1
            if record.cost_usd is not None:
                served.costs.append(record.cost_usd)
            if record.duration_seconds is not None:
                served.durations.append(record.duration_seconds)

    async def samples(self, agent: str, rollout_id: Any, versions: Sequence[str], since: float, now: float):
        found = self._tracked.get(agent)
        if found is None or found.rollout_id != rollout_id:
            return {version: VersionSample() for version in versions}
        return {version: found.versions[version].sample() for version in versions}

    async def close(self) -> None:
        return None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class PrometheusRuns:
    """Samples from PromQL over every replica's series, between the rollout's start and now.

    Per series, the counter's value now minus its value at the start (0 for a series born since, so
    a new version's first run counts; the value now alone after a counter reset), summed by version:
    exact integer counts, no extrapolation.
    """

    name = "prometheus"

    def __init__(self, config: PrometheusSource) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None

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
        gained = []
        for item in await self._query(query, now):
            value = float(item["value"][1])
            start = before.get(_series_key(item["metric"]), 0.0)
            gained.append((item["metric"], value - start if value >= start else value))
        return gained

    async def samples(self, agent: str, rollout_id: Any, versions: Sequence[str], since: float, now: float):
        version_regex = "|".join(_regex_escape(version) for version in versions)
        matchers = f"agent={_quote(agent)},prompt_version=~{_quote(version_regex)}"
        if self._config.selector:
            matchers += "," + self._config.selector
        outcomes: dict[str, Counter[str]] = {version: Counter() for version in versions}
        for labels, gained in await self._increase("agentopz_runs_total", matchers, since, now):
            if labels.get("prompt_version") in outcomes:
                outcomes[labels["prompt_version"]][labels.get("outcome", "")] += round(gained)
        values: dict[str, dict[str, list[float]]] = {}
        for name, metric in (
            ("costs", "agentopz_run_cost_usd_bucket"),
            ("durations", "agentopz_run_duration_seconds_bucket"),
        ):
            buckets: dict[str, Counter[float]] = {version: Counter() for version in versions}
            for labels, gained in await self._increase(metric, matchers, since, now):
                if labels.get("prompt_version") in buckets:
                    buckets[labels["prompt_version"]][float(labels["le"])] += gained
            values[name] = {version: _bucket_values(buckets[version], self._config.max_samples) for version in versions}
        return {
            version: VersionSample(
                {outcome: count for outcome, count in outcomes[version].items() if count > 0},
                values["costs"][version],
                values["durations"][version],
            )
            for version in versions
        }

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _series_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _regex_escape(value: str) -> str:
    return "".join("\\" + char if char in r".^$*+?()[]{}|\\" else char for char in value)


def _bucket_values(cumulative: Counter[float], max_samples: int) -> list[float]:
    """A histogram's observations as values at each bucket's geometric midpoint (twice the last bound
    for +Inf), at most `max_samples` of them in the buckets' proportions."""
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
        if math.isfinite(bound):
            middle = math.sqrt(lower * bound) if lower > 0 else bound / 2
            lower = bound
        else:
            middle = 2 * finite[-1] if finite else 1.0
        values.extend([middle] * round(count * scale))
    return values
