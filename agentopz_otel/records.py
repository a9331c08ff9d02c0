"""What finished runs are made of, shared by the pipeline and the extensions that read it: run
outcomes, quality verdicts, evaluator results, the run record, the finished-runs feed and the view of
runs in flight. The ground floor: it imports nothing from the package but other ground-floor modules.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import catalogue

# Quality verdicts (agentopz.quality.verdict, agentopz_quality_checks_total{verdict}); a run's is one of
# the first three, CHECK_ERROR is a check that raised: counted, never a pass. Declared in the catalogue.
PASS, FAIL, UNKNOWN, CHECK_ERROR = catalogue.enum("quality_verdict")

# Run outcomes, exactly one per run (agentopz_runs_total{outcome}, agentopz.run.outcome), in the order
# the catalogue declares them.
OUTCOMES = catalogue.enum("outcome")
SUCCESS, QUALITY_FAILURE, LLM_ERROR, TOOL_ERROR, BUDGET_EXCEEDED, TIMEOUT, ABANDONED, ERROR = OUTCOMES


@dataclass(frozen=True)
class Evaluation:
    """One evaluator verdict (gen_ai.evaluation.result or an OpenInference annotation)."""

    name: str
    score: float | None = None
    label: str | None = None
    explanation: str | None = None
    response_id: str | None = None


@dataclass
class RunRecord:
    """A finished run: what the run log writes and the quality checks receive."""

    trace_id: str
    root_span_id: str
    service: str
    agent: str
    prompt_version: str
    outcome: str
    started_at: float
    finished_at: float
    duration_seconds: float | None
    cost_usd: float | None
    cost_complete: bool
    tokens: dict[str, int]
    steps: int
    llm_calls: int
    llm_errors: int
    tool_calls: int
    tool_errors: int
    sub_agents: int
    models: list[str]
    # Per model and per tool: [calls, failed calls] (at most MAX_MODELS_PER_RUN and MAX_TOOLS_PER_RUN names).
    calls_by_model: dict[str, list[int]] = field(default_factory=dict)
    calls_by_tool: dict[str, list[int]] = field(default_factory=dict)
    quality_verdict: str = UNKNOWN
    failed_checks: list[str] = field(default_factory=list)
    limit_exceeded: str | None = None
    # Evaluator scores by evaluation name (the last of each name; at most MAX_EVALUATIONS_PER_RUN).
    scores: dict[str, float] = field(default_factory=dict)
    # The targeting key its prompt version's flag was evaluated for (`feature_flag.context.id`): the
    # user or conversation whose runs share a variant. Canary analysis treats a key's runs as a cluster.
    targeting_key: str | None = None
    # The start of the run's input, only when an extension displays content (Context.run_input_chars).
    input_start: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), sort_keys=True)


class RunFeed:
    """Finished runs, published by runs processors to whoever subscribed (extensions such as the
    console or canary analysis). Subscribers are called on the event loop and must be quick."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Sequence[RunRecord]], None]] = []

    def subscribe(self, callback: Callable[[Sequence[RunRecord]], None]) -> None:
        self._subscribers.append(callback)

    def publish(self, records: Sequence[RunRecord]) -> None:
        for callback in self._subscribers:
            try:
                callback(records)
            except Exception:
                logging.getLogger("agentopz_otel").exception("a finished-runs subscriber failed; continuing")


@dataclass
class InFlightRuns:
    """Runs in progress of one (service, agent): how many, and the most expensive one so far."""

    runs: int = 0
    max_cost_usd: float = 0.0
    max_cost_trace_id: str = ""
    max_steps: int = 0
