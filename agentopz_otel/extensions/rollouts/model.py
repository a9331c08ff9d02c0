"""Agents (flags), their prompt versions (variants), rollouts and audit entries, with their validation."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ... import catalogue

ACTIONS = ("promote", "rollback", "pause", "resume", "advance")
ACTOR_KINDS = catalogue.enum("actor_kind")
ACTIVE_STATES = ("progressing", "paused")
# Agent and version names are OFREP flag keys and variants, URL path segments (the console's, and the
# OpenFeature OFREP clients', which join the key into the URL unescaped), Prometheus label values and
# page text: so URL-unreserved ASCII only, starting with a letter or digit (never `.` or `..`).
NAME_GRAMMAR = "1 to 128 characters of A-Z a-z 0-9 . _ ~ -, starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
MAX_STEPS = 20
MAX_VALUE_BYTES = 65_536


class RolloutError(ValueError):
    """An invalid definition or command; `status` is the HTTP status the admin API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class AgentFlag:
    agent: str
    # Prompt version name -> the JSON value the agent uses (None: the name itself is served).
    versions: dict[str, Any]
    baseline: str
    disabled: bool = False
    fallback: str | None = None
    updated_at: float = 0.0

    def value(self, version: str) -> Any:
        value = self.versions[version]
        return version if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rollout:
    id: int
    agent: str
    baseline: str
    candidate: str
    steps: tuple[int, ...]
    step_index: int
    weight: int  # the candidate's share of traffic, 0 to 100
    state: str
    started_at: float
    step_started_at: float
    updated_at: float
    analysis: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["steps"] = list(self.steps)
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Rollout:
        return cls(**{**body, "steps": tuple(body["steps"])})

    def summary(self) -> dict[str, Any]:
        """What an audit entry records before and after a change."""
        return {"state": self.state, "weight": self.weight, "step_index": self.step_index}


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    agent: str
    action: str
    actor: str
    actor_kind: str
    reason: str
    evidence: dict[str, Any] | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The rollout state machine. Every (state, action) pair is one cell: the state the action leads to,
# UNCHANGED when the action is already in effect (a second rollback changes and records nothing), or the
# conflict (HTTP 409) explaining why it is not allowed. `advance` past the last step promotes.
UNCHANGED = "unchanged"
_FINISHED = "the rollout of {candidate!r} is {finished}: nothing to {action}"
TRANSITIONS: dict[str, dict[str, str]] = {
    "progressing": {
        "promote": "promoted",
        "rollback": "rolled_back",
        "pause": "paused",
        "resume": UNCHANGED,
        "advance": "progressing",
    },
    "paused": {
        "promote": "promoted",
        "rollback": "rolled_back",
        "pause": UNCHANGED,
        "resume": "progressing",
        "advance": "the rollout of {candidate!r} is paused: resume it before advancing",
    },
    "promoted": {
        "promote": UNCHANGED,
        "rollback": "the rollout of {candidate!r} was promoted: start a rollout of {baseline!r} to go back",
        "pause": _FINISHED,
        "resume": _FINISHED,
        "advance": _FINISHED,
    },
    "rolled_back": {
        "promote": "the rollout of {candidate!r} was rolled back: start a new one",
        "rollback": UNCHANGED,
        "pause": _FINISHED,
        "resume": _FINISHED,
        "advance": _FINISHED,
    },
}


def check_action(action: Any) -> str:
    if action not in ACTIONS:
        raise RolloutError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    return action


def transition(rollout: Rollout, action: str, now: float) -> Rollout | None:
    """The rollout after `action` at `now`, None when the action is already in effect; RolloutError (409) when
    the rollout's state does not allow it, (400) for an unknown action."""
    cell = TRANSITIONS[rollout.state][check_action(action)]
    if cell == UNCHANGED:
        return None
    if cell not in TRANSITIONS:
        finished = rollout.state.replace("_", " ")
        raise RolloutError(
            cell.format(candidate=rollout.candidate, baseline=rollout.baseline, finished=finished, action=action), 409
        )
    if cell == "rolled_back":
        return replace(rollout, state=cell, weight=0, updated_at=now)
    if cell == "paused":
        return replace(rollout, state=cell, updated_at=now)
    if cell == "promoted":
        last = len(rollout.steps) - 1
        return replace(rollout, state=cell, step_index=last, weight=100, step_started_at=now, updated_at=now)
    if action == "resume":
        return replace(rollout, state=cell, step_started_at=now, updated_at=now)
    next_index = rollout.step_index + 1
    if next_index == len(rollout.steps):
        # Past the last step (the candidate already has 100%): the advance is a promotion.
        return transition(rollout, "promote", now)
    return replace(
        rollout, step_index=next_index, weight=rollout.steps[next_index], step_started_at=now, updated_at=now
    )


def check_name(what: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RolloutError(f"{what} {name!r} is not a valid name: {NAME_GRAMMAR}")
    return name


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    kind = type(value).__name__
    raise RolloutError(f"a version's value must be a JSON object, string, number or boolean, not {kind}")


def check_versions(agent: str, versions: Any, baseline: Any, max_versions: int) -> dict[str, Any]:
    """Versions of one agent: named, at most `max_versions`, values of one JSON type, baseline among them."""
    check_name("agent", agent)
    if not isinstance(versions, dict) or not versions:
        raise RolloutError(f"agent {agent!r}: give at least one version")
    if len(versions) > max_versions:
        raise RolloutError(f"agent {agent!r}: {len(versions)} versions, at most {max_versions} are allowed")
    types = {}
    for name, value in versions.items():
        check_name("version", name)
        if len(json.dumps(value)) > MAX_VALUE_BYTES:
            raise RolloutError(f"version {name!r}: its value is larger than {MAX_VALUE_BYTES} bytes of JSON")
        types[name] = _json_type(name if value is None else value)
    if len(set(types.values())) > 1:
        described = ", ".join(f"{name}: {kind}" for name, kind in types.items())
        raise RolloutError(
            f"agent {agent!r}: every version's value must be of one JSON type, since clients ask for one type "
            f"(a version without a value serves its name, a string); got {described}"
        )
    if baseline not in versions:
        raise RolloutError(f"agent {agent!r}: baseline {baseline!r} is not one of its versions ({', '.join(versions)})")
    return dict(versions)


def check_steps(steps: Any) -> tuple[int, ...]:
    """Candidate weights: integers from 1 to 100, strictly increasing, ending at 100."""
    if not isinstance(steps, (list, tuple)) or not steps:
        raise RolloutError("steps: give the candidate's weights, e.g. [5, 25, 50, 100]")
    if len(steps) > MAX_STEPS:
        raise RolloutError(f"steps: at most {MAX_STEPS} steps")
    for step in steps:
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 100:
            raise RolloutError(f"steps: {step!r} is not a whole percentage from 1 to 100")
    for earlier, later in itertools.pairwise(steps):
        if later <= earlier:
            raise RolloutError(f"steps must increase: {later} follows {earlier} in {list(steps)}")
    if steps[-1] != 100:
        raise RolloutError(
            f"steps must end at 100 (the candidate and the baseline add up to 100%, and the last step gives the "
            f"candidate all of it): {list(steps)}"
        )
    return tuple(steps)


# Component flags: per agent, a tool switched off or a fallback model, served beside the agent's
# prompt-version flag over the same OFREP endpoint. Keys: `<agent>.tool.<tool>` (boolean: true = use
# the tool) and `<agent>.model` (string: the model to use instead of the one in the agent's code).
TOOL = "tool"
MODEL = "model"
COMPONENT_KINDS = (TOOL, MODEL)
# Variants: a tool flag is `on` or `off`; a model flag serves its `fallback`.
TOOL_ON = "on"
TOOL_OFF = "off"
FALLBACK = "fallback"
# Audit actions of component flags (also `agentopz_rollout_actions_total{action}`).
ROUTE_ACTIONS = ("tool_off", "tool_on", "fallback", "clear")
# The OFREP providers for Python and Node put the key into the URL path without encoding it, so a key
# keeps to the characters a path segment carries as they are (RFC 3986 unreserved).
_KEY = re.compile(r"^[A-Za-z0-9._~-]{1,255}$")
_MODEL_VALUE = re.compile(r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,254}[^\s\x00-\x1f\x7f])?$")


def component_key(agent: str, kind: str, name: str = "") -> str:
    return f"{agent}.{TOOL}.{name}" if kind == TOOL else f"{agent}.{MODEL}"


@dataclass(frozen=True)
class ComponentFlag:
    agent: str
    kind: str  # TOOL or MODEL
    name: str  # the tool; "" for the model
    value: bool | str  # a tool: True to use it; the model: the model to use
    updated_at: float = 0.0

    @property
    def key(self) -> str:
        return component_key(self.agent, self.kind, self.name)

    @property
    def variant(self) -> str:
        if self.kind == MODEL:
            return FALLBACK
        return TOOL_ON if self.value else TOOL_OFF

    def summary(self) -> dict[str, Any]:
        """What an audit entry records before and after a change."""
        return {"key": self.key, "value": self.value}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key, "variant": self.variant}


def check_component(agent: Any, kind: str, name: Any = "", value: Any = None) -> ComponentFlag:
    """A component flag with a key OFREP clients can send and a value of the kind's type."""
    check_name("agent", agent)
    if kind not in COMPONENT_KINDS:
        raise RolloutError(f"unknown component {kind!r}: one of {', '.join(COMPONENT_KINDS)}")
    if kind == TOOL:
        check_name("tool", name)
        if not isinstance(value, bool):
            raise RolloutError("a tool flag's value is true (use the tool) or false (skip it)")
    elif not isinstance(value, str) or not _MODEL_VALUE.match(value):
        raise RolloutError("the fallback model must be 1 to 256 printable characters, e.g. anthropic/claude-sonnet-4")
    key = component_key(agent, kind, name)
    if not _KEY.match(key):
        raise RolloutError(
            f"flag key {key!r}: OpenFeature's OFREP providers send the key in the URL path unencoded, so agent and "
            "tool names of component flags may only use letters, digits and . _ ~ - (at most 255 in all)"
        )
    return ComponentFlag(agent, kind, name if kind == TOOL else "", value)
