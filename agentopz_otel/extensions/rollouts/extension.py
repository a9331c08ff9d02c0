"""The `rollouts` extension: prompt versions served over OFREP, rollouts by steps, the kill switch.

State lives in the `storage` extension's database and in memory; every change is written with its
audit entry first, then the in-memory evaluation snapshot is rebuilt. Commands are serialized by one
lock, and a command whose effect is already in place (a second rollback) changes and records nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ... import catalogue
from ...admin_auth import ADMIN_AUTH, TokenConfig, bearer_token, token_matches
from ...components import Context
from ..storage import StorageExtension
from .flagd import flagd_document
from .model import (
    ACTIONS,
    ACTOR_KINDS,
    MODEL,
    AgentFlag,
    AuditEntry,
    ComponentFlag,
    Rollout,
    RolloutError,
    check_action,
    check_component,
    check_steps,
    check_versions,
    component_key,
    transition,
)
from .ofrep import Snapshot
from .store import RolloutStore

GAUGE_STATES = catalogue.enum("rollout_state")
MAX_ACTOR_LENGTH = 128
MAX_REASON_LENGTH = 2000


class RolloutsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The storage extension that holds the state and the audit log.
    storage: str = "storage"
    # A token OFREP clients and flagd sync must present (Bearer or X-API-Key); none: evaluation is open.
    evaluation_auth: TokenConfig | None = None
    max_agents: int = Field(default=1000, ge=1)
    max_versions_per_agent: int = Field(default=100, ge=2)
    # Audit entries kept (oldest dropped first) and finished rollouts kept per agent.
    max_audit_entries: int = Field(default=100_000, ge=100)
    max_rollouts_per_agent: int = Field(default=100, ge=1)
    # Component flags (a tool switched off, a fallback model) kept in all.
    max_component_flags: int = Field(default=10_000, ge=1)


def _now() -> float:
    return round(time.time(), 3)


def _agent_summary(flag: AgentFlag | None) -> dict[str, Any] | None:
    if flag is None:
        return None
    return {
        "versions": sorted(flag.versions),
        "baseline": flag.baseline,
        "disabled": flag.disabled,
        "fallback": flag.fallback,
    }


class RolloutsExtension:
    def __init__(self, component_id: str, config: RolloutsConfig, context: Context) -> None:
        self.id = component_id
        self.config = config
        self._context = context
        # Extensions are created in service.extensions order: storage must be listed before rollouts.
        self._storage = context.extension(config.storage, StorageExtension, asked_by=f"extension {component_id}")
        self._lock = threading.RLock()
        self._agents: dict[str, AgentFlag] = {}
        self._rollouts: dict[str, Rollout] = {}
        self._components: dict[str, ComponentFlag] = {}
        self._store: RolloutStore | None = None
        self._subscribers: list[Callable[[Rollout], None]] = []
        self._analysis_validator: Callable[[dict], dict] | None = None
        self._analysis_status: Callable[[Rollout], dict | None] | None = None
        self._evaluation_token: str | None = None
        metrics = context.metrics
        self._evaluations = metrics.metric("agentopz_flag_evaluations_total")
        self._component_evaluations = metrics.metric("agentopz_component_flag_evaluations_total")
        self._weight = metrics.metric("agentopz_rollout_weight")
        self._state = metrics.metric("agentopz_rollout_state")
        self._role = metrics.metric("agentopz_rollout_role")
        self._actions = metrics.metric("agentopz_rollout_actions_total")
        self.snapshot = Snapshot((), {}, self._evaluations)
        self.flagd_body = b""
        self.flagd_etag = ""

    # Lifecycle

    async def start(self) -> None:
        store = RolloutStore(
            self._storage.connect(self.id), self.config.max_audit_entries, self.config.max_rollouts_per_agent
        )
        store.create_schema()
        if self.config.evaluation_auth is not None:
            self._evaluation_token = self.config.evaluation_auth.secret(f"extensions.{self.id}.evaluation_auth")
        with self._lock:
            self._store = store
            self._agents, self._rollouts = store.load()
            self._components = store.load_components()
            self._rebuild()

    async def shutdown(self, timeout: float) -> None:
        """Nothing to flush: every change is committed before it takes effect."""

    # Reading

    def agents(self) -> list[AgentFlag]:
        return sorted(self._agents.values(), key=lambda flag: flag.agent)

    def agent(self, agent: str) -> AgentFlag:
        flag = self._agents.get(agent)
        if flag is None:
            raise RolloutError(f"unknown agent {agent!r}: define it first (agentopz-otel agent define)", 404)
        return flag

    def rollout(self, agent: str) -> Rollout | None:
        """The agent's current rollout, else its last finished one, else None."""
        return self._rollouts.get(agent)

    def active(self) -> list[Rollout]:
        return sorted((r for r in self._rollouts.values() if r.active), key=lambda r: r.agent)

    def state(self, agent: str) -> str:
        """What `agentopz_rollout_state` reports for the agent."""
        if self.agent(agent).disabled:
            return "disabled"
        rollout = self._rollouts.get(agent)
        return "none" if rollout is None else rollout.state

    def components(self, agent: str | None = None) -> list[ComponentFlag]:
        """Component flags (of one agent), by key."""
        found = (c for c in self._components.values() if agent is None or c.agent == agent)
        return sorted(found, key=lambda component: component.key)

    def history(self, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Audit entries, newest first."""
        with self._lock:
            return self._require_store().history(agent, max(1, min(limit, self.config.max_audit_entries)))

    # Hooks for other extensions

    def subscribe(self, callback: Callable[[Rollout], None]) -> None:
        """Call `callback` with the agent's rollout after every change to an agent that has one (its
        versions, kill switch or rollout; component flags do not touch a rollout)."""
        self._subscribers.append(callback)

    def register_analysis_validator(self, validator: Callable[[dict], dict]) -> None:
        """`validator` checks and normalizes a new rollout's `analysis` config; its ValueError is a 400."""
        self._analysis_validator = validator

    def register_analysis_status(self, status: Callable[[Rollout], dict | None]) -> None:
        """`status(rollout)` is the analysis state shown with a rollout: `analysis_status` in the API."""
        self._analysis_status = status

    def view(self, rollout: Rollout) -> dict[str, Any]:
        """A rollout as the API shows it: its fields and its analysis status (None without an analysis)."""
        status = self._analysis_status(rollout) if self._analysis_status is not None else None
        return {**rollout.to_dict(), "analysis_status": status}

    # Commands

    def define_agent(
        self,
        agent: str,
        versions: dict[str, Any],
        baseline: str,
        *,
        actor: str,
        actor_kind: str = "user",
        reason: str = "",
    ) -> AgentFlag:
        with self._lock:
            versions = check_versions(agent, versions, baseline, self.config.max_versions_per_agent)
            existing = self._agents.get(agent)
            if agent in self._components:
                raise RolloutError(f"{agent!r} is the key of a component flag: give the agent another name", 409)
            if existing is None and len(self._agents) >= self.config.max_agents:
                raise RolloutError(f"at most {self.config.max_agents} agents can be defined (max_agents)", 409)
            rollout = self._rollouts.get(agent)
            if rollout is not None and rollout.active:
                if baseline != rollout.baseline:
                    raise RolloutError(
                        f"agent {agent!r} has a rollout in progress from {rollout.baseline!r}: its baseline changes "
                        "when the rollout is promoted, not by redefining it",
                        409,
                    )
                if rollout.candidate not in versions:
                    raise RolloutError(
                        f"agent {agent!r}: version {rollout.candidate!r} is the candidate of the rollout in progress",
                        409,
                    )
            fallback = existing.fallback if existing is not None else None
            if fallback is not None and fallback not in versions:
                raise RolloutError(f"agent {agent!r}: version {fallback!r} is its fallback while it is disabled", 409)
            disabled = existing.disabled if existing is not None else False
            flag = AgentFlag(agent, versions, baseline, disabled, fallback, _now())
            if existing is not None and replace(existing, updated_at=flag.updated_at) == flag:
                return existing
            before, after = _agent_summary(existing), _agent_summary(flag)
            self._commit(agent, "define", actor, actor_kind, reason, None, before, after, flag=flag)
            return flag

    def start_rollout(
        self,
        agent: str,
        candidate: str,
        steps: list[int],
        *,
        actor: str,
        actor_kind: str = "user",
        reason: str = "",
        analysis: dict[str, Any] | None = None,
    ) -> Rollout:
        with self._lock:
            flag = self.agent(agent)
            previous = self._rollouts.get(agent)
            if previous is not None and previous.active:
                raise RolloutError(
                    f"agent {agent!r} already has a rollout in progress ({previous.baseline} -> {previous.candidate} "
                    f"at {previous.weight}%, {previous.state}): promote or roll it back first",
                    409,
                )
            if candidate not in flag.versions:
                raise RolloutError(
                    f"agent {agent!r} has no version {candidate!r} (versions: {', '.join(flag.versions)})", 400
                )
            if candidate == flag.baseline:
                raise RolloutError(f"version {candidate!r} is already the baseline of agent {agent!r}", 400)
            checked_steps = check_steps(steps)
            if analysis is not None and not isinstance(analysis, dict):
                raise RolloutError("analysis must be a JSON object")
            analysis = dict(analysis or {})
            if self._analysis_validator is not None:
                try:
                    analysis = self._analysis_validator(analysis)
                except ValueError as error:
                    raise RolloutError(f"analysis: {error}") from None
            now = _now()
            rollout = Rollout(
                id=self._require_store().next_rollout_id(),
                agent=agent,
                baseline=flag.baseline,
                candidate=candidate,
                steps=checked_steps,
                step_index=0,
                weight=checked_steps[0],
                state="progressing",
                started_at=now,
                step_started_at=now,
                updated_at=now,
                analysis=analysis,
                reason=reason,
            )
            before = previous.summary() if previous is not None else None
            after = {**rollout.summary(), "baseline": flag.baseline, "candidate": candidate}
            self._commit(agent, "start", actor, actor_kind, reason, None, before, after, rollout=rollout)
            return rollout

    def act(
        self,
        agent: str,
        action: str,
        *,
        actor: str,
        actor_kind: str,
        reason: str,
        evidence: dict[str, Any] | None = None,
    ) -> Rollout:
        """Move the agent's rollout; an action already in effect returns the rollout unchanged, unrecorded."""
        check_action(action)
        with self._lock:
            self.agent(agent)
            rollout = self._rollouts.get(agent)
            if rollout is None:
                raise RolloutError(f"agent {agent!r} has no rollout: start one first", 404)
            now = _now()
            changed = transition(rollout, action, now)
            if changed is None:
                return rollout
            if changed.state == "promoted" and rollout.state != "promoted":
                action = "promote"
            flag = None
            if changed.state == "promoted":
                flag = replace(self._agents[agent], baseline=changed.candidate, updated_at=now)
            self._commit(
                agent,
                action,
                actor,
                actor_kind,
                reason,
                evidence,
                rollout.summary(),
                changed.summary(),
                flag=flag,
                rollout=changed,
            )
            return changed

    def disable(
        self, agent: str, *, actor: str, actor_kind: str = "user", reason: str, fallback: str | None = None
    ) -> AgentFlag:
        """Kill switch: clients get reason DISABLED and no value (their code default), or the fallback version."""
        with self._lock:
            flag = self.agent(agent)
            if fallback is not None and fallback not in flag.versions:
                known = ", ".join(flag.versions)
                raise RolloutError(f"agent {agent!r} has no version {fallback!r} to fall back to (versions: {known})")
            if flag.disabled and flag.fallback == fallback:
                return flag
            changed = replace(flag, disabled=True, fallback=fallback, updated_at=_now())
            self._commit(
                agent,
                "disable",
                actor,
                actor_kind,
                reason,
                None,
                _agent_summary(flag),
                _agent_summary(changed),
                flag=changed,
            )
            return changed

    def enable(self, agent: str, *, actor: str, actor_kind: str = "user", reason: str = "") -> AgentFlag:
        with self._lock:
            flag = self.agent(agent)
            if not flag.disabled:
                return flag
            changed = replace(flag, disabled=False, fallback=None, updated_at=_now())
            self._commit(
                agent,
                "enable",
                actor,
                actor_kind,
                reason,
                None,
                _agent_summary(flag),
                _agent_summary(changed),
                flag=changed,
            )
            return changed

    def route(
        self,
        agent: str,
        kind: str,
        name: str = "",
        value: bool | str | None = None,
        *,
        actor: str,
        actor_kind: str = "user",
        reason: str = "",
        evidence: dict[str, Any] | None = None,
    ) -> ComponentFlag:
        """Set a component flag: a tool on or off, or the model to fall back to. The agent need not have
        prompt versions defined; while it is disabled its component flags answer DISABLED. Setting the
        value a flag already has changes and records nothing."""
        with self._lock:
            component = check_component(agent, kind, name, value)
            if component.key in self._agents:
                raise RolloutError(f"{component.key!r} is the name of an agent: rename one of them", 409)
            existing = self._components.get(component.key)
            if existing is None and len(self._components) >= self.config.max_component_flags:
                raise RolloutError(
                    f"at most {self.config.max_component_flags} component flags can be set (max_component_flags)", 409
                )
            if existing is not None and existing.value == component.value:
                return existing
            component = replace(component, updated_at=_now())
            action = "fallback" if kind == MODEL else "tool_on" if value else "tool_off"
            before = existing.summary() if existing is not None else None
            after = component.summary()
            self._commit(agent, action, actor, actor_kind, reason, evidence, before, after, component=component)
            return component

    def clear_route(
        self, agent: str, kind: str, name: str = "", *, actor: str, actor_kind: str = "user", reason: str = ""
    ) -> ComponentFlag | None:
        """Remove a component flag (clients get the default in their code); the flag removed, None if none was set."""
        with self._lock:
            existing = self._components.get(component_key(agent, kind, name))
            if existing is None:
                return None
            self._commit(
                agent,
                "clear",
                actor,
                actor_kind,
                reason,
                None,
                existing.summary(),
                None,
                removed_component=existing.key,
            )
            return existing

    # Evaluation access

    def evaluation_allowed(self, request: web.Request) -> int | None:
        """None when `request` may evaluate flags, else the HTTP status to refuse it with (401 or 403)."""
        if self._evaluation_token is None:
            return None
        presented = request.headers.get("X-API-Key") or bearer_token(request)
        if presented is None:
            return 401
        admin_token = request.app[ADMIN_AUTH].token
        if token_matches(presented, self._evaluation_token) or (
            admin_token is not None and token_matches(presented, admin_token)
        ):
            return None
        return 403

    # Internals

    def _require_store(self) -> RolloutStore:
        if self._store is None:
            raise RuntimeError(f"{self.id}: not started")
        return self._store

    def _commit(
        self,
        agent: str,
        action: str,
        actor: str,
        actor_kind: str,
        reason: str,
        evidence: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        *,
        flag: AgentFlag | None = None,
        rollout: Rollout | None = None,
        component: ComponentFlag | None = None,
        removed_component: str | None = None,
    ) -> None:
        if actor_kind not in ACTOR_KINDS:
            raise RolloutError(f"actor_kind {actor_kind!r} is not one of {', '.join(ACTOR_KINDS)}")
        if not isinstance(actor, str) or not actor.strip() or len(actor) > MAX_ACTOR_LENGTH:
            raise RolloutError(f"actor must be a name of 1 to {MAX_ACTOR_LENGTH} characters")
        if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
            raise RolloutError(f"reason must be text of at most {MAX_REASON_LENGTH} characters")
        if evidence is not None:
            json.dumps(evidence)  # fails now, before anything is written, if it cannot be stored
        entry = AuditEntry(0, _now(), agent, action, actor.strip(), actor_kind, reason, evidence, before, after)
        self._require_store().commit(
            entry, agent=flag, rollout=rollout, component=component, removed_component=removed_component
        )
        if flag is not None:
            self._agents[agent] = flag
        if rollout is not None:
            self._rollouts[agent] = rollout
        if component is not None:
            self._components[component.key] = component
        if removed_component is not None:
            del self._components[removed_component]
        self._actions.series((agent, action, actor_kind)).value += 1
        self._rebuild()
        current = self._rollouts.get(agent)
        if current is not None and (flag is not None or rollout is not None):
            for callback in self._subscribers:
                try:
                    callback(current)
                except Exception:
                    self._context.logger.exception("%s: a rollout subscriber failed; continuing", self.id)

    def _rebuild(self) -> None:
        components = self._components.values()
        self.snapshot = Snapshot(
            self._agents.values(), self._rollouts, self._evaluations, components, self._component_evaluations
        )
        document = flagd_document(self._agents.values(), self._rollouts, components)
        self.flagd_body = json.dumps(document, indent=2).encode() + b"\n"
        self.flagd_etag = '"' + hashlib.blake2b(self.flagd_body, digest_size=12).hexdigest() + '"'
        for flag in self._agents.values():
            served = self._served_weights(flag)
            rollout = self._rollouts.get(flag.agent)
            candidate = None if rollout is None else rollout.candidate
            for version in flag.versions:
                self._weight.series((flag.agent, version)).value = served.get(version, 0)
                self._role.series((flag.agent, version, "baseline")).value = 1 if version == flag.baseline else 0
                self._role.series((flag.agent, version, "candidate")).value = 1 if version == candidate else 0
            if rollout is not None:
                # Born at 0, so that increase() in an alert sees an agent's first rollback.
                for action in ACTIONS:
                    for actor_kind in ACTOR_KINDS:
                        self._actions.series((flag.agent, action, actor_kind))
            current = self.state(flag.agent)
            for state in GAUGE_STATES:
                self._state.series((flag.agent, state)).value = 1 if state == current else 0

    def _served_weights(self, flag: AgentFlag) -> dict[str, int]:
        if flag.disabled:
            return {} if flag.fallback is None else {flag.fallback: 100}
        rollout = self._rollouts.get(flag.agent)
        if rollout is None or not rollout.active:
            return {flag.baseline: 100}
        return {rollout.candidate: rollout.weight, rollout.baseline: 100 - rollout.weight}
