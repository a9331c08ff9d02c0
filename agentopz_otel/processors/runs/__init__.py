"""Runs: assemble spans into agent runs, decide each run's outcome, record run and in-flight metrics.

`assembly` groups spans into runs, `outcome` decides how a run ended, `publishing` sends finished
runs on (run log, OTLP log records, the root span with the totals, run metrics), `evaluations`
matches external verdicts to their runs, `processor` drives it all from span intake.
"""

from .outcome import RunLimit, decide_outcome
from .processor import FACTORY, RunsProcessor
from .publishing import run_log_request
from .settings import RunLogConfig, RunsConfig

__all__ = [
    "FACTORY",
    "RunLimit",
    "RunLogConfig",
    "RunsConfig",
    "RunsProcessor",
    "decide_outcome",
    "run_log_request",
]
