"""The pure-Python path stays: the in-process suite passes with every module imported from its source."""

from __future__ import annotations

import os
import subprocess
import sys

import support

from agentopz_otel.compiled import PURE_PYTHON_ENV


def test_the_unit_suite_passes_on_the_pure_python_path() -> None:
    env = {**os.environ, PURE_PYTHON_ENV: "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"],
        cwd=support.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
