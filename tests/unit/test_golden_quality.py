"""Golden cases for the quality checks: a check table and a table of finished runs in
(tests/golden/quality/<case>.json), each run's verdict, failed checks and per-check results out
(<case>.expected.json). A run row gives only the fields that differ from BASE_RUN; `output` is the
(format, raw) content pair normalize finds, or null when content was not captured. `UPDATE_GOLDEN=1`
rewrites the expected files; review them against the check definitions before committing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import golden

from agentopz_otel.processors.quality import FinishedRun, QualityConfig, QualityEvaluator
from agentopz_otel.records import Evaluation

CASES = golden.cases("quality")
BASE_RUN: dict[str, Any] = {
    "service": "weather-svc",
    "agent": "weather_agent",
    "prompt_version": "v1",
    "steps": 2,
    "llm_calls": 2,
    "tool_calls": 1,
    "tool_errors": 0,
    "cost_usd": 0.007,
    "duration_seconds": 3.0,
    "tools": [],
    "finish_reason": "stop",
    "output": None,
}


def finished_run(row: dict[str, Any]) -> FinishedRun:
    fields = {**BASE_RUN, **row}
    output = fields.pop("output")
    return FinishedRun(
        **{key: value for key, value in fields.items() if key not in ("name", "evaluations", "tools")},
        tools=frozenset(fields["tools"]),
        output_source=tuple(output) if output is not None else None,
    )


@pytest.mark.parametrize("case", CASES, ids=golden.name)
def test_golden_verdicts(case: Path) -> None:
    document = golden.load(case)
    evaluator = QualityEvaluator(QualityConfig.model_validate(document["config"]))
    verdicts = []
    for row in document["runs"]:
        evaluations = [Evaluation(**evaluation) for evaluation in row.get("evaluations", ())]
        verdict = evaluator.judge(finished_run(row), evaluations)
        verdicts.append(
            {
                "run": row["name"],
                "verdict": verdict.verdict,
                "failed_checks": verdict.failed_checks,
                "results": [list(result) for result in verdict.results],
            }
        )
    actual = {"verdicts": verdicts}
    assert actual == golden.expected(case, actual)
