"""Runs: assemble spans into agent runs, decide each run's outcome, record run and in-flight metrics.

`assembly` groups spans into runs, `outcome` decides how a run ended, `publishing` sends finished
runs on (run log, OTLP log records, the root span with the totals, run metrics), `evaluations`
matches external verdicts to their runs, `processor` drives it all from span intake.
"""

from .outcome import (
    ABANDONED,
    BUDGET_EXCEEDED,
    ERROR,
    LLM_ERROR,
    QUALITY_FAILURE,
    SUCCESS,
    TIMEOUT,
    TOOL_ERROR,
    RunLimit,
    decide_outcome,
)
from .processor import FACTORY, RunsConfig, RunsProcessor
from .publishing import RunLogConfig, RunRecord, run_log_request

__all__ = [
    "ABANDONED",
    "BUDGET_EXCEEDED",
    "ERROR",
    "FACTORY",
    "LLM_ERROR",
    "QUALITY_FAILURE",
    "SUCCESS",
    "TIMEOUT",
    "TOOL_ERROR",
    "RunLimit",
    "RunLogConfig",
    "RunRecord",
    "RunsConfig",
    "RunsProcessor",
    "decide_outcome",
    "run_log_request",
]
