"""Prompt rollouts: agents' prompt versions served as OpenFeature flags over OFREP, rolled out by steps.

Other extensions use the Python interface of `RolloutsExtension` (look it up with
`context.extension("rollouts", RolloutsExtension, asked_by=...)`).
"""

from .api import FACTORY
from .extension import RolloutsConfig, RolloutsExtension
from .model import ACTIONS, ACTIVE_STATES, ACTOR_KINDS, AgentFlag, AuditEntry, Rollout, RolloutError

__all__ = [
    "ACTIONS",
    "ACTIVE_STATES",
    "ACTOR_KINDS",
    "FACTORY",
    "AgentFlag",
    "AuditEntry",
    "Rollout",
    "RolloutError",
    "RolloutsConfig",
    "RolloutsExtension",
]
