"""The figures the console shows, computed from the run history: per agent, per version, per SLO."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...records import SUCCESS, InFlightRuns
from ...slo import SLO
from ...triage import WINDOW_SECONDS, Counts, Suspect, suspects
from ..probes import ProbeStatus
from .history import WINDOWS, AgentHistory, Buckets, Detail, RunEntry, RunHistory, percentile

P95 = 0.95


@dataclass
class Figures:
    """One agent's (or one version's) figures over one window."""

    runs: int
    runs_per_minute: float
    success_share: float | None
    outcomes: dict[str, int]
    mean_cost: float | None
    wasted_usd: float  # what the window's runs that did not succeed cost
    p95_cost: float | None
    p95_duration: float | None
    per_minute: list[int]
    # The percentiles cover the latest runs kept per agent: how many of the window's runs that is.
    sampled_runs: int


@dataclass
class SLOStatus:
    slo: SLO
    runs: int
    budget_left: float | None  # share of the error budget left at the last day's error rate
    failing: str | None  # why the agent is failing this target, in words; None when it is not


@dataclass
class AgentStatus:
    history: AgentHistory
    figures: Figures
    in_flight: InFlightRuns
    slos: list[SLOStatus] = field(default_factory=list)
    probe: ProbeStatus | None = None  # the last result of the agent's probe, when it is probed

    @property
    def failing(self) -> list[str]:
        return [status.failing for status in self.slos if status.failing]


def figures(buckets: Buckets, entries: list[RunEntry], window: str, now: float, covered: float) -> Figures:
    """Figures over `window` from the buckets (counts) and the kept runs in the window (percentiles);
    `covered` is how many seconds of the window the history has seen (less after a restart)."""
    tally = buckets.window(WINDOWS[window], now)
    minutes = max(min(WINDOWS[window], covered), 60) / 60
    return Figures(
        runs=tally.runs,
        runs_per_minute=tally.runs / minutes,
        success_share=tally.success_share,
        outcomes=dict(sorted(tally.outcomes.items(), key=lambda item: -item[1])),
        mean_cost=tally.mean_cost,
        wasted_usd=tally.wasted_usd,
        p95_cost=percentile([e.cost_usd for e in entries if e.cost_usd is not None], P95),
        p95_duration=percentile([e.duration_seconds for e in entries if e.duration_seconds is not None], P95),
        per_minute=buckets.per_minute(now),
        sampled_runs=len(entries),
    )


def agent_figures(agent: AgentHistory, window: str, now: float, since: float, version: str | None = None) -> Figures:
    buckets = agent.total if version is None else agent.versions[version]
    entries = agent.recent_in(WINDOWS[window], now, version)
    return figures(buckets, entries, window, now, now - since)


def _share(value: float) -> str:
    return f"{value * 100:.1f}%"


def slo_status(slo: SLO, agent: AgentHistory, now: float) -> SLOStatus | None:
    """The SLO's state for this agent from the console's history, as the shipped alerts judge it:
    failing when the error budget burns at the fast-burn page rate over both the last hour and the
    last 5 minutes, or when the last day spent more than the whole budget allows."""
    day = agent.total.window(WINDOWS["24h"], now).slo_events(slo.name)
    if day is None:
        return None
    budget = float(slo.error_budget)
    bad, runs = day
    budget_left = 1 - (bad / runs) / budget if runs else None
    failing = None
    hour_bad, hour_runs = agent.total.window(WINDOWS["1h"], now).slo_events(slo.name) or (0, 0)
    short_bad, short_runs = agent.total.window(WINDOWS["5m"], now).slo_events(slo.name) or (0, 0)
    fast_burn = float(slo.burn_factor(2, "1h"))
    enough = max(slo.min_runs, 1)
    kind = slo.sli.kind
    if (
        hour_runs >= enough
        and short_runs
        and (hour_bad / hour_runs) / budget >= fast_burn
        and (short_bad / short_runs) / budget >= fast_burn
    ):
        failing = (
            f"{slo.name}: {hour_bad} of {hour_runs} runs bad ({kind}) in the last hour, "
            f"{_share(hour_bad / hour_runs)} where {_share(budget)} is allowed: the error budget burns "
            f"{(hour_bad / hour_runs) / budget:.1f}x too fast"
        )
    elif runs >= enough and budget_left is not None and budget_left < 0:
        failing = (
            f"{slo.name}: {bad} of {runs} runs bad ({kind}) in the last day, {_share(bad / runs)} "
            f"where {_share(budget)} is allowed"
        )
    return SLOStatus(slo, runs, budget_left, failing)


def agent_status(
    agent: AgentHistory, slos: list[SLO], window: str, now: float, since: float, in_flight: InFlightRuns | None
) -> AgentStatus:
    statuses = [status for slo in slos if (status := slo_status(slo, agent, now)) is not None]
    return AgentStatus(agent, agent_figures(agent, window, now, since), in_flight or InFlightRuns(), statuses)


def calls_table(calls: dict[str, list[int]]) -> list[tuple[str, int, int, float]]:
    """(name, calls, failed, error share), most failed first."""
    rows = [(name, count, failed, failed / count if count else 0.0) for name, (count, failed) in calls.items()]
    return sorted(rows, key=lambda row: (-row[2], -row[1], row[0]))


def window_detail(agent: AgentHistory, window: str, now: float) -> Detail:
    """Failed checks, tools, models and the most expensive runs of the agent over `window`."""
    detail = agent.total.window(WINDOWS[window], now, detail=True).detail
    assert detail is not None
    return detail


@dataclass
class Triage:
    """Which part of the agent moved: its half hour now against the half hour before (triage.py)."""

    now: Counts
    before: Counts
    suspects: list[Suspect]
    # Mean LLM steps and tool calls per run of the latest runs kept, (before, now); None without runs.
    steps: tuple[float | None, float | None]
    tool_calls: tuple[float | None, float | None]


def _counts(agent: AgentHistory, end: float) -> Counts:
    tally = agent.total.window(WINDOW_SECONDS, end, detail=True)
    assert tally.detail is not None
    versions = {}
    for version, buckets in agent.versions.items():
        version_tally = buckets.window(WINDOW_SECONDS, end)
        if version_tally.runs:
            versions[version] = (version_tally.runs, version_tally.runs - version_tally.outcomes.get(SUCCESS, 0))
    return Counts(
        runs=tally.runs,
        outcomes=dict(tally.outcomes),
        tools={name: (calls, failed) for name, (calls, failed) in tally.detail.tools.items()},
        models={name: (calls, failed) for name, (calls, failed) in tally.detail.models.items()},
        versions=versions,
    )


def _models(buckets: Buckets, end: float) -> dict[str, tuple[int, int]]:
    detail = buckets.window(WINDOW_SECONDS, end, detail=True).detail
    assert detail is not None
    return {name: (calls, failed) for name, (calls, failed) in detail.models.items()}


def _mean(entries: list[RunEntry], field_name: str) -> float | None:
    values = [getattr(entry, field_name) for entry in entries]
    return sum(values) / len(values) if values else None


def triage(history: RunHistory, agent: AgentHistory, now: float) -> Triage:
    """The triage of `agent` from the console's history; upstream models counted across the fleet."""
    current, before = _counts(agent, now), _counts(agent, now - WINDOW_SECONDS)
    fleet_now, fleet_before = _models(history.models, now), _models(history.models, now - WINDOW_SECONDS)
    found = suspects(current, before, fleet_now, fleet_before)
    recent_now = agent.recent_in(WINDOW_SECONDS, now)
    recent_before = [e for e in agent.recent_in(2 * WINDOW_SECONDS, now) if e.recorded_at <= now - WINDOW_SECONDS]
    return Triage(
        current,
        before,
        found,
        (_mean(recent_before, "steps"), _mean(recent_now, "steps")),
        (_mean(recent_before, "tool_calls"), _mean(recent_now, "tool_calls")),
    )
