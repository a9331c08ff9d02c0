"""How late the event loop runs what is due: one loop serves intake, scrapes, admin requests and every
background job, so a step that holds it (a long computation, an import, a collection) delays them all.
A timer is probed every `PROBE_SECONDS`: a hold longer than that always shows, as one probe late by the
hold less the time its timer still had to wait (up to a probe interval); a shorter one shows when a
timer falls due during it."""

from __future__ import annotations

import asyncio

from .metrics import Registry

PROBE_SECONDS = 0.25
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EventLoopLag:
    """Observes, at every probe, how long after its due time the loop ran the probe's timer."""

    def __init__(self, metrics: Registry, probe_seconds: float = PROBE_SECONDS) -> None:
        self.probe_seconds = probe_seconds
        self._lag = metrics.metric("agentopz_event_loop_lag_seconds", LAG_BUCKETS).series(())
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.probe_seconds
            await asyncio.sleep(self.probe_seconds)
            self._lag.observe(max(0.0, loop.time() - due))
