"""Golden cases for the rollout state machine: a rollout and an action in
(tests/golden/rollouts/<case>.json), the rollout after it, `unchanged`, or the error and its HTTP status out
(<case>.expected.json). The transition is a pure function of (rollout, action, now); `UPDATE_GOLDEN=1`
rewrites the expected files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import golden

from agentopz_otel import catalogue
from agentopz_otel.extensions.rollouts.model import (
    ACTIONS,
    ACTIVE_STATES,
    TRANSITIONS,
    UNCHANGED,
    Rollout,
    RolloutError,
    transition,
)

CASES = golden.cases("rollouts")


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


def test_every_state_answers_every_action() -> None:
    """The table is the whole machine: each active or finished state has a cell for each action, and a cell
    that is not a conflict names a state of the table (or UNCHANGED)."""
    assert set(TRANSITIONS) == {*ACTIVE_STATES, "promoted", "rolled_back"}
    assert set(catalogue.enum("rollout_state")) - set(TRANSITIONS) == {"none", "disabled"}
    for cells in TRANSITIONS.values():
        assert tuple(cells) == ACTIONS
    targets = {cell for cells in TRANSITIONS.values() for cell in cells.values() if "{" not in cell}
    assert targets == {*TRANSITIONS, UNCHANGED}


def test_unknown_action_is_refused_with_400() -> None:
    document = golden.load(CASES[0])
    with pytest.raises(RolloutError) as raised:
        transition(Rollout.from_dict(document["rollout"]), "finish", 2000.0)
    assert (raised.value.message, raised.value.status) == (
        "unknown action 'finish': one of promote, rollback, pause, resume, advance",
        400,
    )
