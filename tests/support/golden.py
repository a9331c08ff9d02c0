"""Golden files: `<case>.json` holds a case's input, `<case>.expected.json` what the code must produce.

A runner test computes the actual output of each case and asserts it equals `expected(case, actual)`.
With `UPDATE_GOLDEN=1` in the environment the expected file is rewritten from the actual output; review
the diff before committing, since an expected file is a claim about the reference, not a snapshot of
whatever the code does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def cases(kind: str) -> list[Path]:
    """The input files of one kind of golden case (tests/golden/<kind>/<case>.json), by name; none is an
    error, so a moved folder cannot turn a runner into a test that runs nothing."""
    found = sorted(path for path in (GOLDEN / kind).glob("*.json") if not path.name.endswith(".expected.json"))
    if not found:
        raise AssertionError(f"no golden cases in {GOLDEN / kind}")
    return found


def name(case: Path) -> str:
    """A case's name: its input file's name without `.json` (also its pytest id)."""
    return case.name.removesuffix(".json")


def load(case: Path) -> dict[str, Any]:
    document = json.loads(case.read_text())
    if not document.get("source"):
        raise AssertionError(f"{case.name}: say in `source` where the expected values come from")
    return document


def expected_file(case: Path) -> Path:
    return case.with_name(name(case) + ".expected.json")


def expected(case: Path, actual: Any) -> Any:
    """The case's expected output, to compare `actual` with; under UPDATE_GOLDEN=1 `actual` is written
    as the expected output first."""
    expected_path = expected_file(case)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    if not expected_path.exists():
        raise AssertionError(f"{expected_path.name} is missing: write it, or run with UPDATE_GOLDEN=1 and review")
    return json.loads(expected_path.read_text())
