"""The cyclic garbage collector on a timer: the young generation stays as small as one interval's
objects under steady churn, where CPython's own trigger lets it grow without end."""

from __future__ import annotations

import asyncio
import gc
import json
from collections import deque

from agentopz_otel.config import parse_config
from agentopz_otel.garbage import FULL, YOUNG, CollectionSchedule, GarbageCollection
from agentopz_otel.service import Service


class Run:
    """A tracked object standing for an open run's state."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number


def test_the_schedule_collects_the_young_generation_until_a_full_interval_has_passed():
    schedule = CollectionSchedule(now=100.0, full_seconds=600.0)
    assert schedule.generation(100.5) == YOUNG
    assert schedule.generation(699.999) == YOUNG
    assert schedule.generation(700.0) == FULL  # exactly at the interval
    assert schedule.generation(700.5) == YOUNG
    assert schedule.generation(1299.9) == YOUNG
    assert schedule.generation(1300.0) == FULL


async def _churn(steps: int, per_step: int, live: int) -> int:
    """Keep `live` runs, making `steps * per_step` new ones while as many old ones are freed, with the
    event loop running between steps; the size of the young generation at the end."""
    runs: deque[Run] = deque((Run(n) for n in range(live)), maxlen=live)
    gc.collect()
    for step in range(steps):
        for n in range(per_step):
            runs.append(Run(step * per_step + n))  # the oldest is freed as the new one comes
        await asyncio.sleep(0.002)
    return len(gc.get_objects(0))


def test_under_steady_churn_the_young_generation_holds_only_what_one_interval_made():
    steps, per_step, live = 150, 200, 20_000  # every live run is made during the churn
    try:
        # CPython's trigger: allocations minus deallocations never pass the threshold, so nothing is
        # collected and every live run is young.
        gc.enable()
        assert asyncio.run(_churn(steps, per_step, live)) >= live

        async def on_a_timer() -> tuple[bool, int]:
            collection = GarbageCollection(young_seconds=0.02, full_seconds=3600)
            collection.start()
            try:
                young = await _churn(steps, per_step, live)
                return gc.isenabled(), young
            finally:
                await collection.stop()

        enabled, young = asyncio.run(on_a_timer())
        assert not enabled
        assert gc.isenabled()  # given back when the service stops
        # An interval of 0.02 s makes at most 10 steps' runs (2 ms of sleep a step).
        assert young < live // 4
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_service_turns_the_automatic_collector_off_while_it_runs_and_back_on_when_it_stops():
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:0"}}}},
        "exporters": {"prometheus": {}},
        "service": {
            "admin": {"endpoint": "127.0.0.1:0"},
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": [], "exporters": ["prometheus"]}},
        },
    }

    async def run() -> tuple[bool, bool]:
        service = Service(parse_config(json.dumps(config)))
        await service.start()
        try:
            return gc.isenabled(), service._garbage._task is not None and not service._garbage._task.done()
        finally:
            await service.shutdown()

    try:
        enabled, collecting = asyncio.run(run())
        assert not enabled
        assert collecting
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
