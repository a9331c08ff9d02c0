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


def metrics_handler(registry: Registry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The admin port's /metrics: every family of `registry`, text or OpenMetrics as the scraper asks.

    The values are copied on the event loop, which is quick, and formatted in a worker thread, which
    is not: intake keeps running while a large exposition is built. Scrapes that arrive while one is
    being built share its result, so scraping in a loop costs at most one build at a time per format.
    """
    building: dict[str, asyncio.Future[bytes]] = {}

    async def build(encoder: Callable[[SnapshotCollector], bytes]) -> bytes:
        await registry.refresh()
        collector = SnapshotCollector(registry.snapshot())
        return await asyncio.get_running_loop().run_in_executor(None, encoder, collector)

    async def handle(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        pending = building.get(content_type)
        if pending is None:
            pending = building[content_type] = asyncio.ensure_future(build(encoder))
            pending.add_done_callback(lambda _: building.pop(content_type, None))
        # Shielded: a scraper that hangs up does not cancel the build the others wait for.
        body = await asyncio.shield(pending)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle
