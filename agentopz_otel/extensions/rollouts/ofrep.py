"""OFREP v1 evaluation from an immutable in-memory snapshot of the flag set.

The snapshot is rebuilt whenever an agent or rollout changes, so evaluation never touches the
database. Each flag's possible answers are serialized once at build time: evaluating is parsing the
request, one hash for a split, and sending prepared bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ...metrics import Counter, Family
from .model import AgentFlag, ComponentFlag, Rollout
from .split import bucket

JSON = "application/json"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Resolution:
    """One possible answer for one flag: its OFREP success object, ready to send."""

    variant: str
    reason: str
    item: dict[str, Any]
    body: bytes
    evaluations: Counter


@dataclass(frozen=True, slots=True)
class CompiledFlag:
    key: str
    # No split: the one answer. A split: (running weight sum, answer) in flagd's order, total 100.
    static: Resolution | None
    split: tuple[tuple[int, Resolution], ...] = ()

    def resolve(self, targeting_key: str) -> Resolution:
        if self.static is not None:
            return self.static
        point = bucket(self.key, targeting_key, 100)
        for running, resolution in self.split:
            if point < running:
                return resolution
        raise AssertionError("split weights add up to 100")


def split_weights(rollout: Rollout) -> list[tuple[str, int]]:
    """(variant, weight) in evaluation order: the candidate first, so that a key on the candidate at one step
    stays on it at every later step (its bucket is below the candidate's weight, which only grows)."""
    return [(rollout.candidate, rollout.weight), (rollout.baseline, 100 - rollout.weight)]


def rollout_metadata(flag: AgentFlag, rollout: Rollout | None) -> dict[str, Any]:
    """Flat values only, as OFREP requires."""
    metadata: dict[str, Any] = {"baseline": flag.baseline}
    if rollout is not None:
        metadata.update(
            rollout_id=rollout.id,
            rollout_state=rollout.state,
            candidate=rollout.candidate,
            candidate_weight=rollout.weight,
        )
    if flag.disabled:
        metadata["disabled"] = True
    return metadata


def component_metadata(component: ComponentFlag) -> dict[str, Any]:
    return {"agent": component.agent, "component": component.kind}


def component_label(component: ComponentFlag) -> str:
    """The `component` label of agentopz_component_flag_evaluations_total: `tool.<tool>` or `model`."""
    return component.key.removeprefix(component.agent + ".")


class Snapshot:
    """The flag set at one moment: what OFREP and flagd sync serve until the next change."""

    def __init__(
        self,
        agents: Iterable[AgentFlag],
        rollouts: dict[str, Rollout],
        evaluations: Family[Counter],
        components: Iterable[ComponentFlag] = (),
        component_evaluations: Family[Counter] | None = None,
    ) -> None:
        self.flags: dict[str, CompiledFlag] = {}
        disabled = set()
        for flag in agents:
            rollout = rollouts.get(flag.agent)
            self.flags[flag.agent] = self._compile(flag, rollout, evaluations)
            if flag.disabled:
                disabled.add(flag.agent)
        for component in components:
            assert component_evaluations is not None
            self.flags[component.key] = self._compile_component(
                component, component.agent in disabled, component_evaluations
            )
        self.keys = tuple(sorted(self.flags))

    @staticmethod
    def _compile_component(component: ComponentFlag, disabled: bool, evaluations: Family[Counter]) -> CompiledFlag:
        """A component flag has one answer: its value, or, while its agent is switched off by the kill
        switch, reason DISABLED without a value like the agent's own flag (the code default)."""
        item: dict[str, Any] = {"key": component.key, "metadata": component_metadata(component)}
        if disabled:
            item.update(reason="DISABLED", variant="")
        else:
            item.update(value=component.value, reason="STATIC", variant=component.variant)
        counter = evaluations.series((component.agent, component_label(component), item["reason"]))
        return CompiledFlag(component.key, Resolution(item["variant"], item["reason"], item, dumps(item), counter))

    @staticmethod
    def _compile(flag: AgentFlag, rollout: Rollout | None, evaluations: Family[Counter]) -> CompiledFlag:
        metadata = rollout_metadata(flag, rollout)

        def answer(variant: str, reason: str, with_value: bool = True) -> Resolution:
            item: dict[str, Any] = {"key": flag.agent, "reason": reason, "variant": variant, "metadata": metadata}
            if with_value:
                item["value"] = flag.value(variant)
            counter = evaluations.series((flag.agent, variant, reason))
            return Resolution(variant, reason, item, dumps(item), counter)

        if flag.disabled:
            # Without a fallback: no value and no variant, so every client uses the default in its code.
            if flag.fallback is None:
                return CompiledFlag(flag.agent, answer("", "DISABLED", with_value=False))
            return CompiledFlag(flag.agent, answer(flag.fallback, "DISABLED"))
        if rollout is None or not rollout.active:
            return CompiledFlag(flag.agent, answer(flag.baseline, "STATIC"))
        running = 0
        split = []
        for variant, weight in split_weights(rollout):
            running += weight
            split.append((running, answer(variant, "SPLIT")))
        return CompiledFlag(flag.agent, None, tuple(split))


class EvaluationError(Exception):
    def __init__(self, status: int, code: str, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.code = code
        self.details = details


def parse_targeting_key(body: bytes) -> str | None:
    """The request's targeting key (None when absent); EvaluationError for a malformed body or context."""
    if not body.strip():
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise EvaluationError(400, "PARSE_ERROR", f"the request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise EvaluationError(400, "PARSE_ERROR", 'the request body must be a JSON object {"context": {...}}')
    context = document.get("context")
    if context is None:
        return None
    if not isinstance(context, dict):
        raise EvaluationError(400, "INVALID_CONTEXT", "context must be a JSON object")
    targeting_key = context.get("targetingKey")
    if targeting_key is None or targeting_key == "":
        return None
    if not isinstance(targeting_key, str):
        raise EvaluationError(400, "INVALID_CONTEXT", "targetingKey must be a string")
    return targeting_key


def resolve(snapshot: Snapshot, key: str, targeting_key: str | None) -> Resolution:
    """The answer for one flag (not yet counted as an evaluation)."""
    flag = snapshot.flags.get(key)
    if flag is None:
        raise EvaluationError(404, "FLAG_NOT_FOUND", f"no agent or component flag {key!r} is defined")
    if flag.static is None and targeting_key is None:
        raise EvaluationError(
            400,
            "TARGETING_KEY_MISSING",
            f"agent {key!r} has a rollout in progress: give a targetingKey (a conversation or user id) so each "
            "one keeps its version",
        )
    return flag.resolve(targeting_key or "")


def error_response(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=dumps(body), content_type=JSON)


def single_response(snapshot: Snapshot, key: str, body: bytes) -> web.Response:
    try:
        resolution = resolve(snapshot, key, parse_targeting_key(body))
    except EvaluationError as error:
        return error_response(error.status, {"key": key, "errorCode": error.code, "errorDetails": error.details})
    resolution.evaluations.value += 1
    return web.Response(body=resolution.body, content_type=JSON)


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in candidates or etag in candidates


def bulk_response(snapshot: Snapshot, body: bytes, if_none_match: str | None) -> web.Response:
    """All flags for one context; 304 when the client's ETag matches what it would get now."""
    try:
        targeting_key = parse_targeting_key(body)
    except EvaluationError as error:
        return error_response(error.status, {"errorCode": error.code, "errorDetails": error.details})
    items = []
    resolutions = []
    for key in snapshot.keys:
        try:
            resolution = resolve(snapshot, key, targeting_key)
        except EvaluationError as error:
            items.append({"key": key, "errorCode": error.code, "errorDetails": error.details})
            continue
        items.append(resolution.item)
        resolutions.append(resolution)
    payload = dumps({"flags": items})
    # The answer depends on the context too, so the tag is the answer's own digest. A 304 is not counted
    # as evaluations: the client evaluated nothing new.
    etag = '"' + hashlib.blake2b(payload, digest_size=12).hexdigest() + '"'
    if etag_matches(if_none_match, etag):
        return web.Response(status=304, headers={"ETag": etag})
    for resolution in resolutions:
        resolution.evaluations.value += 1
    return web.Response(body=payload, content_type=JSON, headers={"ETag": etag})
