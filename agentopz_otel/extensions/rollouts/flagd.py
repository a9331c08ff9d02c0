"""The flag set as a flagd flag definition file (https://flagd.dev/schema/v0/flags.json).

A rollout in progress becomes a `fractional` split in the same order this service evaluates it, so
flagd gives every targeting key the same version; a disabled agent without a fallback is a flag with
`state: DISABLED`, which every OpenFeature client answers with the default in its code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .model import AgentFlag, Rollout
from .ofrep import rollout_metadata, split_weights

SCHEMA = "https://flagd.dev/schema/v0/flags.json"


def flagd_flag(flag: AgentFlag, rollout: Rollout | None) -> dict[str, Any]:
    variants = {name: flag.value(name) for name in flag.versions}
    body: dict[str, Any] = {"state": "ENABLED", "variants": variants, "defaultVariant": flag.baseline}
    if flag.disabled:
        if flag.fallback is None:
            body["state"] = "DISABLED"
        else:
            body["defaultVariant"] = flag.fallback
    elif rollout is not None and rollout.active:
        body["targeting"] = {"fractional": [[variant, weight] for variant, weight in split_weights(rollout)]}
    body["metadata"] = rollout_metadata(flag, rollout)
    return body


def flagd_document(agents: Iterable[AgentFlag], rollouts: dict[str, Rollout]) -> dict[str, Any]:
    flags = {flag.agent: flagd_flag(flag, rollouts.get(flag.agent)) for flag in sorted(agents, key=lambda f: f.agent)}
    return {"$schema": SCHEMA, "flags": flags}
