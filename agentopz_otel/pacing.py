"""Background work on the event loop, cut in slices and spread over a period.

A request that comes while background work runs waits, at each of its awaits, for the slice running
then. Slices run back to back hold it for the whole burst (a request takes several awaits, each behind
another slice); slices spread over a period hold it for about one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

Item = TypeVar("Item")


async def paced(items: Sequence[Item], seconds: float) -> AsyncIterator[Item]:
    """Yield `items`, the k-th of n no earlier than k/n of `seconds` after the first; when the work
    falls behind that schedule, one after another with a pass of the event loop between."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for number, item in enumerate(items):
        if number:
            await asyncio.sleep(max(0.0, began + seconds * number / len(items) - loop.time()))
        yield item


async def ticks(seconds: float) -> AsyncIterator[None]:
    """Yield every `seconds` from start to start (the work done at a tick counts in its period), the
    first `seconds` from now; right away when the work took longer."""
    loop = asyncio.get_running_loop()
    due = loop.time() + seconds
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        due = loop.time() + seconds
        yield


async def throttled(items: Sequence[Item], share: float) -> AsyncIterator[Item]:
    """Yield `items`, the work on them (the caller's, between two of them) taking at most `share` of
    the event loop's time since the first: for work that may take as long as it needs."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    busy = 0.0
    for number, item in enumerate(items):
        if number:
            await asyncio.sleep(max(0.0, began + busy / share - loop.time()))
        started = loop.time()
        yield item
        busy += loop.time() - started
