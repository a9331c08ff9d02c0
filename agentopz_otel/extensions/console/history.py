"""The console's memory: a small, bounded history of finished runs, per agent and per prompt version.

Counts over the recent windows come from time buckets (one per minute for the last hour, one per
hour for the last day), so they are exact however many runs arrive; percentiles and the run lists
come from each agent's latest runs (at most `recent_runs_per_agent`). Agent, version, tool and model
names pass the metrics' cardinality caps, so a name the metrics report as `other` is `other` here
too and the history is bounded by the same caps. Runs are bucketed by the time they were recorded
here (not by the agent's clock), so a skewed client clock cannot put a run outside every window.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ...metrics import Registry
from ...records import QUALITY_FAILURE, SUCCESS, RunRecord
from ...slo import SLO, CostSLI, LatencySLI, QualitySLI, SuccessSLI

WINDOWS = {"5m": 300, "1h": 3600, "24h": 86400}
MINUTE_BUCKETS = 60
HOUR_BUCKETS = 24
TOP_EXPENSIVE = 10


@dataclass(slots=True)
class RunEntry:
    """What the console keeps of one finished run."""

    trace_id: str
    agent: str
    prompt_version: str
    outcome: str
    recorded_at: float
    finished_at: float
    duration_seconds: float | None
    cost_usd: float | None  # None: some LLM call was not priced
    # What its priced calls cost (even when some were not priced), as agentopz_run_cost_usd_total counts it.
    spent_usd: float
    steps: int
    tool_calls: int
    failed_checks: tuple[str, ...]
    input_start: str | None


class Detail:
    """What only the agent-wide tallies keep: failed checks, tools, models, the most expensive runs."""

    __slots__ = ("checks", "expensive", "models", "tools")

    def __init__(self) -> None:
        self.checks: dict[str, int] = {}
        self.tools: dict[str, list[int]] = {}
        self.models: dict[str, list[int]] = {}
        self.expensive: list[tuple[float, int, RunEntry]] = []  # a min-heap of the costliest

    def add(
        self, entry: RunEntry, tools: Iterable[tuple[str, int, int]], models: Iterable[tuple[str, int, int]]
    ) -> None:
        for check in entry.failed_checks:
            self.checks[check] = self.checks.get(check, 0) + 1
        _add_calls(self.tools, tools)
        _add_calls(self.models, models)
        if entry.cost_usd is not None:
            item = (entry.cost_usd, id(entry), entry)
            if len(self.expensive) < TOP_EXPENSIVE:
                heapq.heappush(self.expensive, item)
            elif item[0] > self.expensive[0][0]:
                heapq.heapreplace(self.expensive, item)

    def merge(self, other: Detail) -> None:
        for key, count in other.checks.items():
            self.checks[key] = self.checks.get(key, 0) + count
        for mine, theirs in ((self.tools, other.tools), (self.models, other.models)):
            for key, (count, failed) in theirs.items():
                counts = mine.setdefault(key, [0, 0])
                counts[0] += count
                counts[1] += failed
        self.expensive.extend(other.expensive)  # cut to the top by most_expensive()

    def most_expensive(self) -> list[RunEntry]:
        return [entry for _, _, entry in heapq.nlargest(TOP_EXPENSIVE, self.expensive, key=lambda item: item[0])]


def _add_calls(calls: dict[str, list[int]], items: Iterable[tuple[str, int, int]]) -> None:
    for name, count, failed in items:
        counts = calls.setdefault(name, [0, 0])
        counts[0] += count
        counts[1] += failed


class Tally:
    """Counts over one time bucket (or a merge of several). The agent-wide tallies also count SLO
    events and keep a `Detail`."""

    __slots__ = ("cost_runs", "cost_sum", "detail", "outcomes", "runs", "slo", "wasted_usd")

    def __init__(self, detail: bool = False) -> None:
        self.runs = 0
        self.outcomes: dict[str, int] = {}
        self.cost_sum = 0.0
        self.cost_runs = 0
        self.wasted_usd = 0.0  # what the runs that did not succeed cost
        self.slo: dict[str, list[int]] | None = None  # SLO name -> [bad runs, runs]
        self.detail = Detail() if detail else None

    def add(self, entry: RunEntry) -> None:
        self.runs += 1
        self.outcomes[entry.outcome] = self.outcomes.get(entry.outcome, 0) + 1
        if entry.cost_usd is not None:
            self.cost_sum += entry.cost_usd
            self.cost_runs += 1
        if entry.outcome != SUCCESS:
            self.wasted_usd += entry.spent_usd

    def add_slo_events(self, slo_events: Iterable[tuple[str, bool]]) -> None:
        for name, bad in slo_events:
            if self.slo is None:
                self.slo = {}
            events = self.slo.setdefault(name, [0, 0])
            events[0] += bad
            events[1] += 1

    def merge(self, other: Tally) -> None:
        self.runs += other.runs
        self.cost_sum += other.cost_sum
        self.cost_runs += other.cost_runs
        self.wasted_usd += other.wasted_usd
        for key, count in other.outcomes.items():
            self.outcomes[key] = self.outcomes.get(key, 0) + count
        if other.slo:
            if self.slo is None:
                self.slo = {}
            for key, (bad, runs) in other.slo.items():
                events = self.slo.setdefault(key, [0, 0])
                events[0] += bad
                events[1] += runs
        if self.detail is not None and other.detail is not None:
            self.detail.merge(other.detail)

    def slo_events(self, name: str) -> tuple[int, int] | None:
        """(bad runs, runs) of the SLO, None when it saw none."""
        events = self.slo.get(name) if self.slo else None
        return (events[0], events[1]) if events else None

    @property
    def success_share(self) -> float | None:
        return self.outcomes.get(SUCCESS, 0) / self.runs if self.runs else None

    @property
    def mean_cost(self) -> float | None:
        return self.cost_sum / self.cost_runs if self.cost_runs else None


class Buckets:
    """Tallies by minute (the last hour) and by hour (the last day)."""

    __slots__ = ("detail", "hours", "minutes")

    def __init__(self, detail: bool = False) -> None:
        self.detail = detail
        self.minutes: deque[tuple[int, Tally]] = deque()
        self.hours: deque[tuple[int, Tally]] = deque()

    def current(self, now: float) -> tuple[Tally, Tally]:
        """The tallies of this minute and this hour, dropping buckets past the windows."""
        return self._bucket(self.minutes, int(now // 60), MINUTE_BUCKETS), self._bucket(
            self.hours, int(now // 3600), HOUR_BUCKETS
        )

    def _bucket(self, buckets: deque[tuple[int, Tally]], index: int, keep: int) -> Tally:
        if buckets and buckets[-1][0] == index:
            return buckets[-1][1]
        while buckets and buckets[0][0] <= index - keep:
            buckets.popleft()
        tally = Tally(self.detail)
        buckets.append((index, tally))
        return tally

    def window(self, seconds: int, now: float, detail: bool = False) -> Tally:
        """Runs recorded in the last `seconds`, to the bucket: the last hour and less by minute, else by
        hour; with the agent-wide detail when asked (it costs more to merge). With `now` in the past,
        the `seconds` up to then (within the hour the minute buckets keep)."""
        total = Tally(detail and self.detail)
        for tally in self.tallies(seconds, now):
            total.merge(tally)
        return total

    def tallies(self, seconds: int, now: float) -> list[Tally]:
        """The buckets `window` merges."""
        if seconds <= 3600:
            last = int(now // 60)
            first = last - seconds // 60 + 1
            buckets: Iterable[tuple[int, Tally]] = self.minutes
        else:
            last = int(now // 3600)
            first = last - seconds // 3600 + 1
            buckets = self.hours
        return [tally for index, tally in buckets if first <= index <= last]

    def per_minute(self, now: float) -> list[int]:
        """Runs in each of the last 60 minutes, oldest first (for a sparkline)."""
        last = int(now // 60)
        counts = dict((index, tally.runs) for index, tally in self.minutes)
        return [counts.get(index, 0) for index in range(last - MINUTE_BUCKETS + 1, last + 1)]


@dataclass
class AgentHistory:
    name: str
    first_recorded: float
    service: str = ""
    last_finished_at: float = 0.0
    total: Buckets = field(default_factory=lambda: Buckets(detail=True))
    versions: dict[str, Buckets] = field(default_factory=dict)
    recent: deque[RunEntry] = field(default_factory=deque)

    def recent_in(self, seconds: int, now: float, version: str | None = None) -> list[RunEntry]:
        since = now - seconds
        return [
            entry
            for entry in self.recent
            if entry.recorded_at > since and (version is None or entry.prompt_version == version)
        ]


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (`share` in 0..1) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def slo_event(slo: SLO, record: RunRecord) -> bool | None:
    """Whether the run is bad for the SLO (True), good (False), or not one of its events (None),
    as the SLO's Prometheus rules count it."""
    sli = slo.sli
    if isinstance(sli, SuccessSLI):
        return record.outcome != SUCCESS
    if isinstance(sli, QualitySLI):
        return record.outcome == QUALITY_FAILURE
    if isinstance(sli, LatencySLI):
        return None if record.duration_seconds is None else record.duration_seconds > sli.threshold_seconds
    if isinstance(sli, CostSLI):
        if record.cost_usd is None or not record.cost_complete:
            return None
        return record.cost_usd > sli.threshold_usd
    return None


def slo_matches(slo: SLO, service: str, agent: str) -> bool:
    """Anchored regex match on service and agent, as the SLO's PromQL matchers select."""
    return all(
        pattern is None or re.fullmatch(pattern, value) is not None
        for pattern, value in ((slo.match.service, service), (slo.match.agent, agent))
    )


class RunHistory:
    """Every agent's recent runs. Not thread-safe: one thread owns it (the console's worker)."""

    def __init__(self, registry: Registry, slos: Sequence[SLO], recent_runs_per_agent: int, now: float) -> None:
        self.registry = registry
        self.slos = list(slos)
        self.recent_runs_per_agent = recent_runs_per_agent
        self.since = now
        self.agents: dict[str, AgentHistory] = {}
        # LLM calls of every agent by model (the detail's models only), for the triage's upstream suspect.
        self.models = Buckets(detail=True)

    def add(self, records: Iterable[RunRecord], now: float) -> None:
        label = self.registry.label_value
        for record in records:
            agent_name = label("agent", record.agent)
            version = label("prompt_version", record.prompt_version)
            agent = self.agents.get(agent_name)
            if agent is None:
                agent = self.agents[agent_name] = AgentHistory(
                    agent_name, now, recent=deque(maxlen=self.recent_runs_per_agent)
                )
            agent.service = label("service", record.service)
            agent.last_finished_at = max(agent.last_finished_at, record.finished_at)
            entry = RunEntry(
                trace_id=record.trace_id,
                agent=agent_name,
                prompt_version=version,
                outcome=record.outcome,
                recorded_at=now,
                finished_at=record.finished_at,
                duration_seconds=record.duration_seconds,
                cost_usd=record.cost_usd if record.cost_complete else None,
                spent_usd=record.cost_usd or 0.0,
                steps=record.steps,
                tool_calls=record.tool_calls,
                failed_checks=tuple(record.failed_checks),
                input_start=record.input_start,
            )
            agent.recent.append(entry)
            minute, hour = agent.total.current(now)
            tools = [(label("tool", name), calls, failed) for name, (calls, failed) in record.calls_by_tool.items()]
            models = [(label("model", name), calls, failed) for name, (calls, failed) in record.calls_by_model.items()]
            slo_events = [
                (slo.name, bad)
                for slo in self.slos
                if slo_matches(slo, record.service, record.agent) and (bad := slo_event(slo, record)) is not None
            ]
            for tally in (minute, hour):
                tally.add(entry)
                tally.add_slo_events(slo_events)
                assert tally.detail is not None
                tally.detail.add(entry, tools, models)
            fleet_minute = self.models.current(now)[0].detail
            assert fleet_minute is not None
            _add_calls(fleet_minute.models, models)
            buckets = agent.versions.get(version)
            if buckets is None:
                buckets = agent.versions[version] = Buckets()
            for tally in buckets.current(now):
                tally.add(entry)
