"""The event loop lag probe sees a step that holds the loop: its timer runs late by the rest of the hold."""

from __future__ import annotations

import asyncio
import time

from agentopz_otel.loop_lag import EventLoopLag
from agentopz_otel.metrics import Histogram, Registry

PROBE = 0.2
HOLD = 0.5


def test_a_step_holding_the_loop_makes_the_probe_late_by_the_hold_past_its_due_time() -> None:
    registry = Registry()

    async def hold_once() -> None:
        probe = EventLoopLag(registry, probe_seconds=PROBE)
        probe.start()
        await asyncio.sleep(0)  # the probe's timer is set: due in PROBE seconds
        time.sleep(HOLD)  # one step that does not yield, as an import or a long computation does
        await asyncio.sleep(PROBE / 4)  # the late timer runs; the next one is not due yet
        await probe.stop()

    asyncio.run(hold_once())
    (family,) = [f for f in registry.families if f.name == "agentopz_event_loop_lag_seconds"]
    lag: Histogram = family.series(())
    assert lag.count == 1
    assert HOLD - PROBE <= lag.sum < HOLD - PROBE + 0.1  # 0.3 s, and a busy machine's slack
