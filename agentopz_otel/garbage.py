"""When the cyclic garbage collector runs: on a timer, between two callbacks of the event loop.

CPython starts a young-generation collection when allocations minus deallocations of tracked objects
pass a threshold. In steady state the runs processor frees old runs about as fast as it makes new
ones, so that difference stays flat while the young generation fills with every run made since the
last collection; the collection that comes at last scans them all at once (384,000 objects and a
256 ms pause at 40,000 spans/s, measured). Collected on a timer instead, the young generation holds
what one interval made, and so does each pause. What survives it waits for a full collection on a
longer timer: the only cycles this service makes in steady state (grpc's per-call handler details)
die young, so older garbage is rare.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

YOUNG_SECONDS = 0.5
FULL_SECONDS = 600.0
YOUNG, FULL = 0, 2  # the generations gc.collect is given


class CollectionSchedule:
    """Which generation to collect at each tick: the young one, and all of them once a full interval
    has passed."""

    def __init__(self, now: float, full_seconds: float = FULL_SECONDS) -> None:
        self.full_seconds = full_seconds
        self.next_full = now + full_seconds

    def generation(self, now: float) -> int:
        if now < self.next_full:
            return YOUNG
        self.next_full = now + self.full_seconds
        return FULL


class GarbageCollection:
    """Turns the automatic collector off while the service runs and collects on `CollectionSchedule`."""

    def __init__(
        self,
        young_seconds: float = YOUNG_SECONDS,
        full_seconds: float = FULL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.young_seconds = young_seconds
        self.full_seconds = full_seconds
        self._clock = clock
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        # What start-up made lives as long as the process: never scanned again.
        gc.collect()
        gc.freeze()
        gc.disable()
        self._task = asyncio.create_task(self._collect(CollectionSchedule(self._clock(), self.full_seconds)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        gc.enable()

    async def _collect(self, schedule: CollectionSchedule) -> None:
        while True:
            await asyncio.sleep(self.young_seconds)
            gc.collect(schedule.generation(self._clock()))
