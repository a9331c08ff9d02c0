"""Golden cases for the rollout state machine: a rollout and an action in
(tests/golden/rollouts/<case>.json), the rollout after it, `unchanged`, or the error and its HTTP status out
(<case>.expected.json). The transition is a pure function of (rollout, action, now); `UPDATE_GOLDEN=1`
rewrites the expected files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import golden

from agentopz_otel.extensions.rollouts.extension import RolloutsExtension
from agentopz_otel.extensions.rollouts.model import Rollout, RolloutError

CASES = golden.cases("rollouts")

# The state machine, wherever it lives: (rollout, action, now) -> the new rollout, or None when the action
# is already in effect; RolloutError when it is not allowed.
transition = RolloutsExtension._transition


def outcome(rollout: Rollout, action: str, now: float) -> Any:
    try:
        changed = transition(rollout, action, now)
    except RolloutError as error:
        return {"error": error.message, "status": error.status}
    return "unchanged" if changed is None else changed.to_dict()


@pytest.mark.parametrize("case", CASES, ids=golden.name)
def test_golden_transitions(case: Path) -> None:
    document = golden.load(case)
    results = [
        {
            "name": row["name"],
            "result": outcome(Rollout.from_dict({**document["rollout"], **row["rollout"]}), row["action"], row["now"]),
        }
        for row in document["transitions"]
    ]
    actual = {"transitions": results}
    assert actual == golden.expected(case, actual)
