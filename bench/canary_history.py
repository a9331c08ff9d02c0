"""The canary analysis's baseline history: the finished-runs feed's cost per run, and its memory at its cap.

.venv/bin/python bench/canary_history.py
"""

from __future__ import annotations

import time
import tracemalloc
from types import SimpleNamespace

from agentopz_otel.extensions.canary_analysis.history import BaselineHistory

HOURS = 168
OUTCOMES = ("success", "llm_error", "budget_exceeded")


def main() -> None:
    now = time.time()
    records = [
        SimpleNamespace(
            agent=f"agent-{i % 100}",
            prompt_version=f"v{i % 2}",
            outcome="success" if i % 50 else "llm_error",
            started_at=now - i % 600,
        )
        for i in range(200_000)
    ]
    history = BaselineHistory(HOURS, 1000)
    started = time.perf_counter()
    for start in range(0, len(records), 500):  # the feed's batches
        history.on_runs(records[start : start + 500], now)
    print(f"on_runs: {(time.perf_counter() - started) / len(records) * 1e9:.0f} ns per finished run")
    tracemalloc.start()
    full = BaselineHistory(HOURS, 1000)
    for pair in range(1000):
        for hour in range(HOURS):
            for outcome in OUTCOMES:
                full.add(f"agent-{pair // 2}", f"v{pair % 2}", outcome, now - hour * 3600, now)
    full.changes()
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"at the cap (1000 agent and version pairs x {HOURS} hours x {len(OUTCOMES)} outcomes): {size / 1e6:.1f} MB")
    started = time.perf_counter()
    full.snapshot("agent-1", "v1", now)
    print(f"snapshot of one pair's {HOURS} hours: {(time.perf_counter() - started) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
