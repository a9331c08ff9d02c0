"""The `canary_analysis` extension: guards on every active rollout, automatic advance, promote and rollback.

Every `interval_seconds` it reads the cohorts that became evidence (runs grouped by when they started,
from the service's own finished runs, or Prometheus windows when `prometheus.url` is set), runs each
guard, and acts through the rollouts extension with actor kind `analysis` and the guards' evidence in
the audit log: rollback when a guard fails; advance (promote at the last step) once the step has its
minimum runs and time and every guard passes. A data source it cannot read makes every verdict
inconclusive and pauses the rollout at its weight (resumed when the source answers again); it never
promotes on missing data. An agent under its kill switch is not analysed: nothing advances, promotes
or rolls back until it is enabled again. Each rollout's analysis (its tests' state and the source's
open intervals) is saved in the storage extension after every look, so a restart continues it.
Every agent's finished runs are tallied by version and outcome in hourly buckets (also in storage):
a rollout's first look snapshots its baseline's history from them (or from Prometheus), against
which the quality guard tests the candidate at every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import sqlite3
import sys
import time
from typing import TYPE_CHECKING, Any

from ... import catalogue
from ...components import Context, Factory
from ..storage import StorageExtension
from .config import AnalysisConfig, CanaryAnalysisConfig, merged
from .engine import GUARDS, RolloutAnalysis
from .history import BaselineHistory
from .sources import LocalRuns, PrometheusRuns, SourceError
from .statistics import INCONCLUSIVE, GuardResult

if TYPE_CHECKING:
    from ..rollouts import Rollout, RolloutsExtension

log = logging.getLogger("agentopz_otel.canary_analysis")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS canary_analysis_state (
    rollout_id INTEGER PRIMARY KEY, agent TEXT NOT NULL, saved_at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS canary_analysis_history (
    agent TEXT NOT NULL, prompt_version TEXT NOT NULL, hour INTEGER NOT NULL, outcomes TEXT NOT NULL,
    PRIMARY KEY (agent, prompt_version, hour));
"""

VERDICTS = catalogue.enum("analysis_verdict")
# The guards' tests of significance come from it; it takes a second of CPU to import.
STATISTICS_LIBRARY = "scipy.stats"
ACTOR = "canary_analysis"
ACTOR_KIND = "analysis"


class CanaryAnalysisExtension:
    def __init__(self, component_id: str, config: CanaryAnalysisConfig, context: Context) -> None:
        self.id = component_id
        self.config = config
        self._context = context
        self.source: LocalRuns | PrometheusRuns = (
            PrometheusRuns(config.prometheus)
            if config.prometheus
            else LocalRuns(config.max_samples, config.interval_seconds)
        )
        # Extensions are created in service.extensions order: storage must be listed before this one.
        self._storage = context.extension(config.storage, StorageExtension, asked_by=f"extension {component_id}")
        self._db: sqlite3.Connection | None = None
        # This service's finished runs by start interval: the source itself, or beside Prometheus (whose
        # counts have no targeting keys) the runs whose keys estimate the quality guard's design effect.
        self._local = (
            self.source
            if isinstance(self.source, LocalRuns)
            else LocalRuns(config.max_samples, config.interval_seconds)
        )
        context.finished_runs.subscribe(self._local.on_runs)
        # Every agent's runs by version and outcome, for the baseline's history when a rollout starts.
        self.history = BaselineHistory(config.history_hours, config.history_max_series)
        context.finished_runs.subscribe(self._on_finished)
        self._rollouts: RolloutsExtension | None = None
        self._analyses: dict[Any, RolloutAnalysis] = {}
        self._paused_by_analysis: set[Any] = set()
        self._status: dict[str, dict[str, Any]] = {}  # by agent: the last look at its latest rollout
        self._task: asyncio.Task | None = None
        registry = context.metrics
        self._verdicts = registry.metric("agentopz_rollout_analysis")
        self._statistics = registry.metric("agentopz_rollout_analysis_statistic")
        self._thresholds = registry.metric("agentopz_rollout_analysis_threshold")
        self._runs = registry.metric("agentopz_rollout_analysis_runs")
        self._decisions = registry.metric("agentopz_rollout_analysis_decisions_total")
        self._last_look = registry.metric("agentopz_rollout_analysis_last_look_timestamp_seconds")
        self._last_decision = registry.metric("agentopz_rollout_analysis_last_decision_timestamp_seconds")
        self._source_errors = registry.metric("agentopz_rollout_analysis_source_errors_total")
        self._source_up = registry.metric("agentopz_rollout_analysis_source_up")

    def validate(self, analysis: dict[str, Any]) -> dict[str, Any]:
        """A rollout's `analysis` over the defaults, normalized; ValueError with the reason if invalid."""
        return merged(self.config.defaults, analysis).model_dump()

    def status(self, rollout: Rollout) -> dict[str, Any] | None:
        found = self._status.get(rollout.agent)
        return found if found is not None and found["rollout_id"] == rollout.id else None

    async def start(self) -> None:
        # Imported here so the statistics and the engine stand alone (the simulation imports them).
        from ..rollouts import RolloutsExtension

        rollouts = self._context.extension(self.config.rollouts, RolloutsExtension, asked_by=self.id)
        self._rollouts = rollouts
        self.open_store()
        rollouts.register_analysis_validator(self.validate)
        rollouts.register_analysis_status(self.status)
        rollouts.subscribe(self._on_rollout)
        for rollout in rollouts.active():
            self._on_rollout(rollout)
        self._source_up.series((self.source.name,)).value = 1
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def open_store(self) -> None:
        """Connect to the storage extension (the tables created if new) and load the saved history."""
        self._db = self._storage.connect(self.id)
        self._db.executescript(_SCHEMA)
        rows = self._db.execute("SELECT agent, prompt_version, hour, outcomes FROM canary_analysis_history")
        self.history.load(
            ((agent, version, hour, json.loads(body)) for agent, version, hour, body in rows), time.time()
        )

    def _on_finished(self, records: Any) -> None:
        self.history.on_runs(records, time.time())

    def save_history(self, now: float) -> None:
        """Write the history's buckets changed since the last look, delete those that left the window."""
        assert self._db is not None
        dropped = self.history.prune(now)
        changed = [(a, v, hour, json.dumps(outcomes)) for a, v, hour, outcomes in self.history.changes()]
        try:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM canary_analysis_history WHERE agent = ? AND prompt_version = ? AND hour = ?", dropped
            )
            self._db.executemany(
                "INSERT INTO canary_analysis_history (agent, prompt_version, hour, outcomes) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (agent, prompt_version, hour) DO UPDATE SET outcomes = excluded.outcomes",
                changed,
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            # The tally in memory goes on; a restart before the next save loses those buckets' last runs.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            log.warning("canary analysis: saving the baseline history failed: %s", error)

    async def shutdown(self, timeout: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.source.close()

    def _on_rollout(self, rollout: Rollout) -> None:
        """Start counting a rollout's runs the moment it starts, not at the next look."""
        if rollout.active:
            self._local.track(rollout.agent, rollout.id, (rollout.baseline, rollout.candidate), rollout.started_at)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_seconds)
            try:
                await self.look()
            except Exception:
                log.exception("canary analysis: a look failed; trying again at the next interval")

    async def look(self) -> None:
        """One look at every active rollout (the loop calls this every interval)."""
        assert self._rollouts is not None
        if STATISTICS_LIBRARY not in sys.modules and any(
            merged(self.config.defaults, rollout.analysis).enabled for rollout in self._rollouts.active()
        ):
            # Imported by a guard on the event loop, it would stop intake and scrapes for that second;
            # on a thread the loop keeps its turns (the interpreter switches threads every few ms). Done
            # before the rollouts are read: one may be stopped or started meanwhile.
            await asyncio.to_thread(importlib.import_module, STATISTICS_LIBRARY)
        active = self._rollouts.active()
        self.source.forget_except(active)
        self._local.forget_except(active)
        live = {rollout.id for rollout in active}
        for rollout_id in [key for key in self._analyses if key not in live]:
            del self._analyses[rollout_id]
        self._forget_saved(live)
        self._paused_by_analysis &= live
        self.save_history(time.time())
        for rollout in active:
            config = merged(self.config.defaults, rollout.analysis)
            if not config.enabled:
                continue
            if self._rollouts.agent(rollout.agent).disabled:
                self._publish_disabled(rollout, config)
                continue
            await self._look_at(rollout, config)

    async def _look_at(self, rollout: Rollout, config: AnalysisConfig) -> None:
        assert self._rollouts is not None
        now = time.time()
        analysis = self._analyses.get(rollout.id)
        if analysis is None and (loaded := self._load(rollout, config)) is not None:
            analysis = self._analyses[rollout.id] = loaded
        # A new analysis is kept once its history is read (a source error means: again next look).
        new = analysis is None
        if analysis is None:
            analysis = RolloutAnalysis(config, self.config.max_samples)
        self._on_rollout(rollout)
        self._last_look.series((rollout.agent,)).value = now
        try:
            if new:
                analysis.set_history(await self._history_before(rollout))
            evaluation = config.score.evaluation if config.score.enabled else ""
            cohorts = await self.source.cohorts(rollout, config.max_run_seconds, now, evaluation)
            clustering = None
            if self._local is not self.source:
                clustering = await self._local.cohorts(rollout, config.max_run_seconds, now)
        except SourceError as error:
            self._source_errors.series((self.source.name,)).value += 1
            self._source_up.series((self.source.name,)).value = 0
            results = {
                guard: GuardResult(guard, INCONCLUSIVE, 0.0, 0.0, {"error": str(error)})
                for guard in GUARDS
                if guard in analysis.results or getattr(config, guard).enabled
            }
            self._publish(rollout, results, analysis, str(error))
            if rollout.state == "progressing":
                self._paused_by_analysis.add(rollout.id)
                self._act(rollout, "pause", f"canary analysis: data source unreachable, paused at its weight: {error}")
            return
        self._analyses[rollout.id] = analysis
        self._source_up.series((self.source.name,)).value = 1
        if rollout.state == "paused" and rollout.id in self._paused_by_analysis:
            self._paused_by_analysis.discard(rollout.id)
            rollout = self._act(rollout, "resume", "canary analysis: data source answers again")
        results = analysis.observe(cohorts, rollout.step_index, rollout.step_started_at, clustering)
        self._save(rollout, analysis)
        runs = {rollout.baseline: analysis.baseline_runs, rollout.candidate: analysis.candidate_runs}
        for version, count in runs.items():
            self._runs.series((rollout.agent, version)).value = count
        self._publish(rollout, results, analysis, None)
        decision = analysis.decide(now - rollout.step_started_at, rollout.step_index == len(rollout.steps) - 1)
        if decision is None or (decision.action == "advance" and rollout.state != "progressing"):
            return
        evidence = {
            "baseline": rollout.baseline,
            "candidate": rollout.candidate,
            "weight": rollout.weight,
            "runs": runs,
            "step_runs": analysis.step_runs(),
            "source": self.source.name,
            "cohorts": analysis.cohorts,
            "restarts": analysis.restarts,
            **self.source.counts(rollout),
            "budget": {name: round(alpha, 6) for name, alpha in config.alphas().items()},
            "guards": analysis.evidence(),
        }
        if decision.action == "rollback":
            evidence["failed_guards"] = [name for name, result in results.items() if result.verdict == "fail"]
        self._act(rollout, decision.action, decision.reason, evidence)

    async def _history_before(self, rollout: Rollout) -> dict[str, int]:
        """The baseline's runs by outcome over `history_hours` before the rollout started: from the
        fleet's counters with a Prometheus source, else from this service's own tally."""
        if isinstance(self.source, PrometheusRuns):
            return await self.source.history(rollout, self.config.history_hours)
        return self.history.snapshot(rollout.agent, rollout.baseline, rollout.started_at)

    def _load(self, rollout: Rollout, config: AnalysisConfig) -> RolloutAnalysis | None:
        """The rollout's saved analysis continued (its source's open intervals restored); None if there
        is none to continue."""
        assert self._db is not None
        row = self._db.execute("SELECT body FROM canary_analysis_state WHERE rollout_id = ?", (rollout.id,)).fetchone()
        if row is None:
            return None
        try:
            body = json.loads(row[0])
            analysis = RolloutAnalysis.from_dict(config, body["analysis"], self.config.max_samples)
            self.source.restore(rollout, body["source"])
            if self._local is not self.source and "keys" in body:
                self._local.restore(rollout, body["keys"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # Unreadable (written by another version, or damaged): a new analysis beats none at all.
            log.warning(
                "canary analysis: the saved analysis of %s is unreadable (%s: %s); starting it again",
                rollout.agent,
                type(error).__name__,
                error,
            )
            return None
        log.info(
            "canary analysis: continuing the analysis of %s (%s -> %s) from storage: %d cohorts, %d candidate runs",
            rollout.agent,
            rollout.baseline,
            rollout.candidate,
            analysis.cohorts,
            analysis.candidate_runs,
        )
        return analysis

    def _save(self, rollout: Rollout, analysis: RolloutAnalysis) -> None:
        assert self._db is not None
        saved = {"analysis": analysis.to_dict(), "source": self.source.state(rollout)}
        if self._local is not self.source:
            saved["keys"] = self._local.state(rollout)
        body = json.dumps(saved, separators=(",", ":"))
        try:
            self._db.execute(
                "INSERT INTO canary_analysis_state (rollout_id, agent, saved_at, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (rollout_id) DO UPDATE SET saved_at = excluded.saved_at, body = excluded.body",
                (rollout.id, rollout.agent, time.time(), body),
            )
        except sqlite3.Error as error:
            # The look still decides; a restart before the next saved look continues from the last one.
            log.warning("canary analysis: saving the analysis of %s failed: %s", rollout.agent, error)

    def _forget_saved(self, live: set[Any]) -> None:
        """Finished rollouts' analyses are in their audit entries: their saved state goes."""
        assert self._db is not None
        saved = [row[0] for row in self._db.execute("SELECT rollout_id FROM canary_analysis_state")]
        gone = [(rollout_id,) for rollout_id in saved if rollout_id not in live]
        if gone:
            self._db.executemany("DELETE FROM canary_analysis_state WHERE rollout_id = ?", gone)

    def _publish_disabled(self, rollout: Rollout, config: AnalysisConfig) -> None:
        """Under the kill switch nothing is served as the rollout says: no look, no action."""
        analysis = self._analyses.get(rollout.id) or self._load(rollout, config)
        if analysis is None:  # not looked at yet: its history is read at its first look
            analysis = RolloutAnalysis(config, self.config.max_samples)
        else:
            self._analyses[rollout.id] = analysis
        self._publish(rollout, analysis.results, analysis, None, suspended="the agent is disabled (kill switch)")

    def _act(self, rollout: Rollout, action: str, reason: str, evidence: dict[str, Any] | None = None) -> Rollout:
        from ..rollouts import RolloutError

        assert self._rollouts is not None
        try:
            after = self._rollouts.act(
                rollout.agent, action, actor=ACTOR, actor_kind=ACTOR_KIND, reason=reason, evidence=evidence
            )
        except RolloutError as error:  # someone acted in between (a user promoted): theirs stands
            log.info("canary analysis: %s of %s not done: %s", action, rollout.agent, error)
            return rollout
        decision = "promote" if after.state == "promoted" else action
        self._decisions.series((rollout.agent, decision)).value += 1
        self._last_decision.series((rollout.agent,)).value = time.time()
        status = self._status.get(rollout.agent)
        if status is not None:
            status.update(decision=decision, decision_reason=reason, decided_at=time.time())
        log.info(
            "canary analysis: %s %s (%s -> %s): %s", decision, rollout.agent, rollout.candidate, after.state, reason
        )
        return after

    def _publish(
        self,
        rollout: Rollout,
        results: dict[str, GuardResult],
        analysis: RolloutAnalysis,
        error: str | None,
        suspended: str | None = None,
    ) -> None:
        for guard, result in results.items():
            for verdict in VERDICTS:
                self._verdicts.series((rollout.agent, guard, verdict)).value = 1 if verdict == result.verdict else 0
            self._statistics.series((rollout.agent, guard)).value = result.statistic
            self._thresholds.series((rollout.agent, guard)).value = result.threshold
        previous = self._status.get(rollout.agent)
        carried = previous if previous is not None and previous["rollout_id"] == rollout.id else {}
        self._status[rollout.agent] = {
            "rollout_id": rollout.id,
            "enabled": True,
            "source": self.source.name,
            "source_error": error,
            "looked_at": time.time(),
            "runs": {rollout.baseline: analysis.baseline_runs, rollout.candidate: analysis.candidate_runs},
            "step_runs": analysis.step_runs(),
            "cohorts": analysis.cohorts,
            "restarts": analysis.restarts,
            "history_runs": analysis.history_runs,
            "suspended": suspended,
            "budget": analysis.budget_text(),
            "guards": {guard: result.to_dict() for guard, result in results.items()},
            "decision": carried.get("decision"),
            "decision_reason": carried.get("decision_reason"),
            "decided_at": carried.get("decided_at"),
        }


def _create(component_id: str, config: CanaryAnalysisConfig, context: Context) -> CanaryAnalysisExtension:
    return CanaryAnalysisExtension(component_id, config, context)


FACTORY = Factory(type="canary_analysis", kind="extension", config_type=CanaryAnalysisConfig, create=_create)
