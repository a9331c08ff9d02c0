"""Each prompt version's finished runs by outcome in start-time buckets: the baseline's history (pure).

When a rollout starts, the baseline's runs over the window before it are its known failure rate: the
quality guard's one-sample test weighs every candidate interval against it. The tally is fed by the
finished-runs feed for every agent, bucketed by the hour the run started, pruned to the window, and
bounded: at most `max_series` (agent, prompt version) pairs; a run of a pair past that is not kept
(counted in `refused`); at most the window's buckets per pair; outcomes are the catalogue's few.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BUCKET_SECONDS = 3600.0

Series = tuple[str, str]  # (agent, prompt version)


class BaselineHistory:
    def __init__(self, hours: float, max_series: int) -> None:
        self.window = hours * 3600.0
        self.max_series = max_series
        self._series: dict[Series, dict[int, Counter[str]]] = {}
        self._dirty: set[tuple[str, str, int]] = set()  # buckets changed since the last `changes`
        self.refused = 0

    def add(self, agent: str, version: str, outcome: str, started_at: float, now: float, runs: int = 1) -> None:
        """`runs` runs of a version that started at `started_at` and finished with `outcome`."""
        bucket = math.floor(started_at / BUCKET_SECONDS)
        if bucket < math.floor((now - self.window) / BUCKET_SECONDS) or started_at > now + BUCKET_SECONDS:
            return  # older than the window, or from a clock far ahead
        buckets = self._series.get((agent, version))
        if buckets is None:
            if len(self._series) >= self.max_series:
                self.refused += runs
                return
            buckets = self._series[(agent, version)] = {}
        buckets.setdefault(bucket, Counter())[outcome] += runs
        self._dirty.add((agent, version, bucket))

    def on_runs(self, records: Sequence[Any], now: float) -> None:
        for record in records:
            self.add(record.agent, record.prompt_version, record.outcome, record.started_at, now)

    def snapshot(self, agent: str, version: str, until: float) -> dict[str, int]:
        """The version's runs by outcome that started in the window before `until`."""
        since = math.floor((until - self.window) / BUCKET_SECONDS)
        total: Counter[str] = Counter()
        for bucket, outcomes in self._series.get((agent, version), {}).items():
            # A bucket counts whole when it starts in the window: the one holding `until` is the runs
            # started before it that have finished, nothing later has.
            if since <= bucket and bucket * BUCKET_SECONDS < until:
                total.update(outcomes)
        return dict(total)

    def prune(self, now: float) -> list[tuple[str, str, int]]:
        """Drop the buckets that left the window (and pairs left empty); the dropped buckets."""
        oldest = math.floor((now - self.window) / BUCKET_SECONDS)
        dropped = []
        for (agent, version), buckets in list(self._series.items()):
            for bucket in [bucket for bucket in buckets if bucket < oldest]:
                del buckets[bucket]
                self._dirty.discard((agent, version, bucket))
                dropped.append((agent, version, bucket))
            if not buckets:
                del self._series[(agent, version)]
        return dropped

    def changes(self) -> list[tuple[str, str, int, dict[str, int]]]:
        """The buckets changed since the last call, with their counts (for storage)."""
        changed = [
            (agent, version, bucket, dict(self._series[(agent, version)][bucket]))
            for agent, version, bucket in sorted(self._dirty)
        ]
        self._dirty.clear()
        return changed

    def load(self, rows: Iterable[tuple[str, str, int, Mapping[str, int]]], now: float) -> None:
        """Buckets saved before a restart (not marked changed)."""
        for agent, version, bucket, outcomes in rows:
            for outcome, runs in outcomes.items():
                self.add(agent, version, outcome, bucket * BUCKET_SECONDS, now, runs)
        self._dirty.clear()

    def series(self) -> int:
        return len(self._series)
