"""The admin port's /metrics: every family of a registry, text or OpenMetrics by content negotiation
(OpenMetrics carries the exemplars), built off the event loop from a snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Exemplar

from .metrics import Counter, FamilySnapshot, Histogram, Registry

# After a build of the exposition this long or longer, the next waits BUILD_PAUSE_FACTOR times as long
# (6: a scraper looping back to back costs intake 11-17% at the worst cardinality, bench/scrape.py; 4
# cost 23-31%).
SLOW_BUILD_SECONDS = 0.1
BUILD_PAUSE_FACTOR = 6


class SnapshotCollector:
    """Adapts a snapshot of our lock-free families to prometheus_client's exposition."""

    def __init__(self, snapshot: list[FamilySnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        for family in self._snapshot:
            if family.kind is Histogram:
                metric = HistogramMetricFamily(family.name, family.documentation, labels=family.labelnames)
                for labels, (counts, total, exemplars) in family.series:
                    metric.add_metric(labels, _buckets(family.buckets, counts, exemplars), total)
            else:
                kind = CounterMetricFamily if family.kind is Counter else GaugeMetricFamily
                metric = kind(family.name, family.documentation, labels=family.labelnames)
                for labels, value in family.series:
                    metric.add_metric(labels, value)
            yield metric


def _buckets(bounds: tuple[float, ...], counts: tuple[int, ...], exemplars: tuple | None) -> list:
    buckets = []
    cumulative = 0
    for index, bound in enumerate((*bounds, float("inf"))):
        cumulative += counts[index]
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        exemplar = exemplars[index] if exemplars else None
        if exemplar is None:
            buckets.append((le, cumulative))
        else:
            trace_id, value = exemplar
            buckets.append((le, cumulative, Exemplar({"trace_id": trace_id}, value)))
    return buckets


def next_build_at(began: float, ended: float, slow_build_seconds: float, pause_factor: float) -> float:
    """When the next exposition may be built: at once after a quick build; after one that took
    `slow_build_seconds` or more, once `pause_factor` times its duration has passed."""
    took = ended - began
    return ended + pause_factor * took if took >= slow_build_seconds else ended


def metrics_handler(
    registry: Registry, slow_build_seconds: float = SLOW_BUILD_SECONDS, pause_factor: float = BUILD_PAUSE_FACTOR
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The admin port's /metrics: every family of `registry`, text or OpenMetrics as the scraper asks.

    The values are copied on the event loop, which is quick, and formatted in a worker thread, which
    is not: intake keeps running while a large exposition is built. Scrapes that arrive while one is
    being built share its result, so scraping in a loop costs at most one build at a time per format.
    The worker thread and the sending of a large body still take turns with intake for the
    interpreter, so the next build waits (`next_build_at`): a scraper looping back to back gets a fresh
    body at most every (1 + `pause_factor`) build times, and takes at most a seventh of the CPU.
    """
    building: dict[str, asyncio.Future[bytes]] = {}
    # Per format: when the next build may start (loop time).
    ready_at: dict[str, float] = {}

    async def build(encoder: Callable[[SnapshotCollector], bytes], content_type: str) -> bytes:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await registry.refresh()
        collector = SnapshotCollector(registry.snapshot())
        body = await loop.run_in_executor(None, encoder, collector)
        ready_at[content_type] = next_build_at(began, loop.time(), slow_build_seconds, pause_factor)
        return body

    async def handle(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        wait = ready_at.get(content_type, 0.0) - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        pending = building.get(content_type)
        if pending is None:
            pending = building[content_type] = asyncio.ensure_future(build(encoder, content_type))
            pending.add_done_callback(lambda _: building.pop(content_type, None))
        # Shielded: a scraper that hangs up does not cancel the build the others wait for.
        body = await asyncio.shield(pending)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle
