"""The Python interface other extensions use (canary analysis, alert actions, the console), in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentopz_otel.components import Context
from agentopz_otel.extensions.rollouts import RolloutError, RolloutsConfig, RolloutsExtension
from agentopz_otel.extensions.storage import StorageConfig, StorageExtension
from agentopz_otel.metrics import Registry


def started(path: Path, context: Context | None = None) -> RolloutsExtension:
    context = context or Context(metrics=Registry())
    context.extensions["storage"] = StorageExtension("storage", StorageConfig(path=str(path)))
    rollouts = RolloutsExtension("rollouts", RolloutsConfig(max_audit_entries=100), context)
    context.extensions["rollouts"] = rollouts
    asyncio.run(rollouts.start())
    return rollouts


def test_analysis_acts_with_evidence_and_subscribers_see_every_change(tmp_path):
    registry = Registry()
    rollouts = started(tmp_path / "db.sqlite", Context(metrics=registry))
    seen = []
    rollouts.subscribe(lambda rollout: seen.append((rollout.state, rollout.weight)))
    rollouts.register_analysis_validator(lambda config: {"guards": ["quality"], **config})
    rollouts.define_agent("bot", {"v1": None, "v2": None}, "v1", actor="alice")
    rollout = rollouts.start_rollout("bot", "v2", [5, 50, 100], actor="alice", analysis={"min_runs": 30})
    assert rollout.analysis == {"guards": ["quality"], "min_runs": 30}
    assert [r.agent for r in rollouts.active()] == ["bot"]

    advanced = rollouts.act("bot", "advance", actor="canary_analysis", actor_kind="analysis", reason="guards pass")
    assert (advanced.step_index, advanced.weight, advanced.state) == (1, 50, "progressing")
    evidence = {"guard": "quality", "candidate_failure_rate": 0.12, "baseline_failure_rate": 0.02}
    rolled_back = rollouts.act(
        "bot", "rollback", actor="canary_analysis", actor_kind="analysis", reason="quality", evidence=evidence
    )
    again = rollouts.act("bot", "rollback", actor="alertmanager", actor_kind="alert", reason="PromptVersionQuality")
    assert again == rolled_back
    assert rollouts.rollout("bot") == rolled_back
    assert rollouts.active() == []
    assert seen == [("progressing", 5), ("progressing", 50), ("rolled_back", 0)]

    newest = rollouts.history("bot", limit=1)[0]
    assert (newest.action, newest.actor, newest.actor_kind, newest.evidence) == (
        "rollback",
        "canary_analysis",
        "analysis",
        evidence,
    )
    assert (newest.before, newest.after) == (
        {"state": "progressing", "weight": 50, "step_index": 1},
        {"state": "rolled_back", "weight": 0, "step_index": 1},
    )
    assert [entry.action for entry in rollouts.history()] == ["rollback", "advance", "start", "define"]
    family = next(f for f in registry.families if f.name == "agentopz_rollout_actions_total")
    actions = {labels: series.value for labels, series in family.items()}
    assert actions[("bot", "rollback", "analysis")] == 1
    # Every action and actor kind starts at 0 once the agent has a rollout, so increase() sees the first one.
    assert actions[("bot", "rollback", "alert")] == 0


def test_invalid_calls_raise_rollout_errors(tmp_path):
    rollouts = started(tmp_path / "db.sqlite")
    rollouts.register_analysis_validator(lambda config: (_ for _ in ()).throw(ValueError("min_runs must be >= 1")))
    rollouts.define_agent("bot", {"v1": None, "v2": None}, "v1", actor="alice")
    with pytest.raises(RolloutError, match="analysis: min_runs must be >= 1"):
        rollouts.start_rollout("bot", "v2", [100], actor="alice", analysis={"min_runs": 0})
    with pytest.raises(RolloutError, match="has no rollout") as missing:
        rollouts.act("bot", "promote", actor="x", actor_kind="user", reason="")
    assert missing.value.status == 404
    with pytest.raises(RolloutError, match="unknown action 'explode'"):
        rollouts.act("bot", "explode", actor="x", actor_kind="user", reason="")
    rollouts.register_analysis_validator(dict)
    rollouts.start_rollout("bot", "v2", [100], actor="alice")
    with pytest.raises(RolloutError, match="actor_kind 'robot'"):
        rollouts.act("bot", "pause", actor="x", actor_kind="robot", reason="")
    assert rollouts.rollout("bot").state == "progressing"
    assert [entry.action for entry in rollouts.history()] == ["start", "define"]


def test_audit_log_is_bounded(tmp_path):
    rollouts = started(tmp_path / "db.sqlite")
    rollouts.define_agent("bot", {"v1": None, "v2": None}, "v1", actor="alice")
    for _ in range(60):
        rollouts.disable("bot", actor="alice", reason="off")
        rollouts.enable("bot", actor="alice")
    entries = rollouts.history(limit=1000)
    assert len(entries) == 100
    assert entries[0].id == 121 and entries[-1].id == 22
