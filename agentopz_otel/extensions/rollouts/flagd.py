"""The flag set as a flagd flag definition file (https://flagd.dev/schema/v0/flags.json).

A rollout in progress becomes a `fractional` split in the same order this service evaluates it, so
flagd gives every targeting key the same version; a disabled agent without a fallback is a flag with
`state: DISABLED`, which every OpenFeature client answers with the default in its code. Component
flags (`<agent>.tool.<tool>`, `<agent>.model`) have their one variant as default, and are DISABLED
while their agent is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .model import TOOL, TOOL_OFF, TOOL_ON, AgentFlag, ComponentFlag, Rollout
from .ofrep import component_metadata, rollout_metadata, split_weights

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


def flagd_component(component: ComponentFlag, disabled: bool) -> dict[str, Any]:
    if component.kind == TOOL:
        variants: dict[str, Any] = {TOOL_ON: True, TOOL_OFF: False}
    else:
        variants = {component.variant: component.value}
    return {
        "state": "DISABLED" if disabled else "ENABLED",
        "variants": variants,
        "defaultVariant": component.variant,
        "metadata": component_metadata(component),
    }


def flagd_document(
    agents: Iterable[AgentFlag], rollouts: dict[str, Rollout], components: Iterable[ComponentFlag] = ()
) -> dict[str, Any]:
    agents = sorted(agents, key=lambda f: f.agent)
    flags = {flag.agent: flagd_flag(flag, rollouts.get(flag.agent)) for flag in agents}
    disabled = {flag.agent for flag in agents if flag.disabled}
    for component in sorted(components, key=lambda c: c.key):
        flags[component.key] = flagd_component(component, component.agent in disabled)
    return {"$schema": SCHEMA, "flags": flags}
