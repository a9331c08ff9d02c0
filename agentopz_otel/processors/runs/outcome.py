"""Run outcomes: exactly one per run, most specific cause first, with the limits that decide budget and timeout."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from ...records import (
    ABANDONED,
    BUDGET_EXCEEDED,
    ERROR,
    FAIL,
    LLM_ERROR,
    QUALITY_FAILURE,
    SUCCESS,
    TIMEOUT,
    TOOL_ERROR,
    RunRecord,
)
from .assembly import NO_RARE, NO_ROOT

if TYPE_CHECKING:
    from .assembly import Group


class RunLimit(BaseModel):
    """Limits for runs of matching agents (glob patterns); the first matching entry applies."""

    model_config = ConfigDict(extra="forbid")

    agent: str = "*"
    service: str = "*"
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    max_duration_seconds: float | None = Field(default=None, gt=0)

    def matches(self, service: str, agent: str) -> bool:
        return fnmatch.fnmatchcase(agent, self.agent) and fnmatch.fnmatchcase(service, self.service)


def decide_outcome(group: Group, record: RunRecord, limit: RunLimit | None, quality_verdict: str) -> str:
    """Exactly one outcome per run, most specific cause first."""
    rooted = group.rooted or NO_ROOT
    rare = group.rare or NO_RARE
    if rooted.root is None and not rooted.root_span_id:
        return ABANDONED
    if limit is not None:
        if limit.max_cost_usd is not None and group.cost > limit.max_cost_usd:
            record.limit_exceeded = "max_cost_usd"
            return BUDGET_EXCEEDED
        if limit.max_steps is not None and group.steps > limit.max_steps:
            record.limit_exceeded = "max_steps"
            return BUDGET_EXCEEDED
        duration = record.duration_seconds
        if limit.max_duration_seconds is not None and duration is not None and duration > limit.max_duration_seconds:
            record.limit_exceeded = "max_duration_seconds"
            return TIMEOUT
    if rooted.failed:
        # The failure closest to the end explains it: a recovered earlier error does not.
        if rare.last_llm_error and rare.last_llm_error >= rare.last_tool_error:
            return LLM_ERROR
        if rare.last_tool_error:
            return TOOL_ERROR
        return ERROR
    if quality_verdict == FAIL:
        return QUALITY_FAILURE
    return SUCCESS
