"""The event loop lag probe sees a step that holds the loop: its timer runs late by the rest of the hold.
The alert and the benchmark read the histogram at bucket bounds it has."""

from __future__ import annotations

import asyncio
import re
import time

from support import ROOT, bench_script

from agentopz_otel.loop_lag import LAG_BUCKETS, EventLoopLag
from agentopz_otel.metrics import Histogram, Registry

PROBE = 0.2
HOLD = 0.5


def test_a_step_holding_the_loop_makes_the_probe_late_by_the_hold_past_its_due_time() -> None:
    registry = Registry()

    async def hold_once() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        probe = EventLoopLag(registry, probe_seconds=PROBE)
        before = loop.time()
        probe.start()
        await asyncio.sleep(0)  # the probe's timer is set: due PROBE seconds after `before` or a bit later
        held_from = loop.time()
        time.sleep(HOLD)  # one step that does not yield, as an import or a long computation does
        held_to = loop.time()
        await asyncio.sleep(PROBE / 4)  # the late timer runs; the next one is not due yet
        after = loop.time()
        await probe.stop()
        # Due between `before` and `held_from`, plus PROBE; ran between `held_to` and `after`.
        return held_to - held_from - PROBE, after - before - PROBE

    least, most = asyncio.run(hold_once())
    (family,) = [f for f in registry.families if f.name == "agentopz_event_loop_lag_seconds"]
    lag: Histogram = family.series(())
    assert lag.count == 1
    assert least <= lag.sum <= most
    assert most - least < PROBE  # tight enough to tell a lag counted from the wrong end of the wait


def test_the_alert_and_the_benchmark_read_bounds_the_histogram_has() -> None:
    """A bound the histogram lacks would leave the alert's expression empty: silent for good."""
    rules = (ROOT / "alert-rules" / "agentopz-alerts.yaml").read_text()
    alert_bounds = {
        float(value) for value in re.findall(r'agentopz_event_loop_lag_seconds_bucket\{le="([0-9.]+)"', rules)
    }
    bench = bench_script()
    assert (alert_bounds, bench.LOOP_LATE_BOUNDS) == ({0.25}, (0.05, 0.25))
    assert alert_bounds | set(bench.LOOP_LATE_BOUNDS) <= set(LAG_BUCKETS)
