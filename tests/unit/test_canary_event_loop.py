"""The canary analysis shares the service's event loop with intake and scrapes: its first look must not
hold the loop for the second the statistics library takes to import (a scrape timed out on it)."""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
import threading
import time
from types import SimpleNamespace

import scipy.stats

from agentopz_otel.components import Context
from agentopz_otel.extensions.canary_analysis import STATISTICS_LIBRARY, CanaryAnalysisExtension
from agentopz_otel.extensions.canary_analysis.config import CanaryAnalysisConfig
from agentopz_otel.extensions.rollouts import RolloutsConfig, RolloutsExtension
from agentopz_otel.extensions.storage import StorageConfig, StorageExtension
from agentopz_otel.metrics import Registry


class ImportWatch(importlib.abc.MetaPathFinder):
    """Notes, for each import of the library, whether it ran on the event loop's (the main) thread."""

    def __init__(self) -> None:
        self.on_the_loop: list[bool] = []

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == STATISTICS_LIBRARY:
            self.on_the_loop.append(threading.current_thread() is threading.main_thread())


def test_the_first_look_at_a_rollout_imports_the_statistics_library_on_a_thread(tmp_path, monkeypatch) -> None:
    # The library not imported yet, as in a service that just started (other tests here imported it; its
    # submodules stay loaded, so the import is quick: what is checked is the thread it runs on).
    monkeypatch.delitem(sys.modules, STATISTICS_LIBRARY)
    monkeypatch.setattr(scipy, "stats", scipy.stats)  # the import rebinds it: put the original back after
    watch = ImportWatch()
    monkeypatch.setattr(sys, "meta_path", [watch, *sys.meta_path])

    async def looks() -> tuple[list[bool], int]:
        context = Context(metrics=Registry())
        context.extensions["storage"] = StorageExtension("storage", StorageConfig(path=str(tmp_path / "s.sqlite")))
        rollouts = context.extensions["rollouts"] = RolloutsExtension("rollouts", RolloutsConfig(), context)
        analysis = CanaryAnalysisExtension("canary_analysis", CanaryAnalysisConfig(interval_seconds=3600), context)
        await rollouts.start()
        await analysis.start()
        # The baseline's history is long enough to test against: the first look takes its failure rate's
        # upper bound, a beta quantile.
        before = time.time() - 60
        outcomes = ["success"] * 270 + ["llm_error"] * 30
        analysis._on_finished(
            [SimpleNamespace(agent="bot", prompt_version="v1", outcome=o, started_at=before) for o in outcomes]
        )
        for agent in ("bot", "unwatched"):
            rollouts.define_agent(agent, {"v1": None, "v2": None}, "v1", actor="alice")
        await analysis.look()
        rollouts.start_rollout("unwatched", "v2", [5, 50, 100], actor="alice", analysis={"enabled": False})
        await analysis.look()
        idle = list(watch.on_the_loop)  # no rollout it analyses yet: nothing to import for
        rollouts.start_rollout("bot", "v2", [5, 50, 100], actor="alice")
        await analysis.look()
        history_runs = analysis._analyses[rollouts.rollout("bot").id].history_runs
        await analysis.shutdown(1)
        await rollouts.shutdown(1)
        return idle, history_runs

    idle, history_runs = asyncio.run(looks())
    assert (idle, watch.on_the_loop, history_runs) == ([], [False], 300)
