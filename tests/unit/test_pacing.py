"""Background work cut in slices: spread over a period, or held to a share of the event loop."""

from __future__ import annotations

import asyncio
import itertools
import time

from agentopz_otel.pacing import paced, throttled, ticks

WORK = 0.02  # seconds of blocking work per item


async def started_at(slices, work: float = WORK) -> list[float]:
    """When the work on each item started, by the event loop's clock; each item blocks the loop."""
    loop = asyncio.get_running_loop()
    starts = []
    async for _ in slices:
        starts.append(loop.time())
        time.sleep(work)
    return starts


def gaps(starts: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(starts)]


def test_paced_items_start_on_their_share_of_the_period():
    starts = asyncio.run(started_at(paced(range(4), 0.4)))
    assert len(starts) == 4
    assert min(gaps(starts)) >= 0.1 * 0.95  # asyncio's timers never fire early


def test_paced_items_that_fall_behind_the_period_follow_one_another():
    starts = asyncio.run(started_at(paced(range(4), 0.01)))
    assert len(starts) == 4
    assert max(gaps(starts)) < 10 * WORK  # no sleep added once behind: each waits for the one before only


def test_throttled_work_takes_at_most_its_share_of_the_event_loop():
    starts = asyncio.run(started_at(throttled(range(4), 0.25)))
    assert len(starts) == 4
    # 20 ms of work in a quarter of the time: the next item no sooner than 80 ms after the last began.
    assert min(gaps(starts)) >= WORK / 0.25 * 0.95


def test_throttled_with_the_whole_loop_adds_no_wait():
    starts = asyncio.run(started_at(throttled(range(4), 1.0)))
    assert max(gaps(starts)) < 10 * WORK


def test_ticks_come_from_start_to_start_and_at_once_after_a_long_tick():
    async def three_ticks() -> list[float]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        times = []
        async for _ in ticks(0.1):
            times.append(loop.time() - began)
            if len(times) == 1:
                time.sleep(0.05)  # half a tick of work: the next still comes 0.1 s after this one
            elif len(times) == 2:
                time.sleep(0.15)  # longer than a tick: the next comes right away
            else:
                return times
        raise AssertionError("ticks ended")

    first, second, third = asyncio.run(three_ticks())
    assert first >= 0.1 * 0.95
    assert 0.1 * 0.95 <= second - first < 0.1 + 5 * WORK
    assert 0.15 <= third - second < 0.15 + 5 * WORK
