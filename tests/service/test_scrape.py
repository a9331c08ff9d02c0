"""/metrics under the worst cardinality the config allows: bounded by the series budget, and built
without stalling span intake."""

from __future__ import annotations

import itertools
import threading
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families
from support.otlp_proto import make_request, make_span
from support.sdk_agent import chat_attributes
from support.service import metric_samples, service_body

from agentopz_otel.metrics import OVERFLOW_VALUE

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
NAME_LENGTH = 128
MAX_SERIES = 50_000
# Per-label caps out of the way, so the series budget is what bounds the exposition.
WIDE = service_body(
    service={
        "cardinality": {
            "max_series": MAX_SERIES,
            "max_series_per_metric": 1_000_000,
            "max_value_length": NAME_LENGTH,
            "limits": {"service": 10_000, "agent": 100_000, "model": 100_000},
        }
    }
)


def long_name(prefix: str, index: int) -> str:
    stem = f"{prefix}-{index}-"
    return stem + "x" * (NAME_LENGTH - len(stem))


def fill(export, combinations: int, per_request: int = 250) -> None:
    """LLM calls of `combinations` distinct (agent, model) pairs with names of the maximum length."""
    for start in range(0, combinations, per_request):
        spans = [
            make_span(
                "chat",
                chat_attributes(model=long_name("model", index), **{"gen_ai.agent.name": long_name("agent", index)}),
            )
            for index in range(start, start + per_request)
        ]
        export(make_request(spans, service=long_name("service", start)).SerializeToString(), timeout=30)


def test_the_exposition_stays_within_the_series_budget_and_intake_flows_while_it_is_built(start_service):
    service = start_service(WIDE)
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        export = channel.unary_unary(EXPORT)
        fill(export, 3_000)  # 22 series per pair (calls, 3 token types, a 17-sample histogram, unpriced)

        scraped: list[tuple[bytes, float]] = []

        def scrape() -> None:
            began = time.perf_counter()
            with urllib.request.urlopen(f"{service.admin_url}/metrics", timeout=60) as response:
                body = response.read()
            scraped.append((body, time.perf_counter() - began))

        scraper = threading.Thread(target=scrape)
        began = time.perf_counter()
        scraper.start()
        answered = [began]
        small = make_request([make_span("chat", chat_attributes())]).SerializeToString()
        while scraper.is_alive():
            export(small, timeout=30)
            answered.append(time.perf_counter())
        scraper.join()
    body, seconds = scraped[0]
    ended = began + seconds
    answered = [moment for moment in answered if moment <= ended] + [ended]
    longest_wait = max(later - earlier for earlier, later in itertools.pairwise(answered))
    # A build on the event loop would hold every request for the whole scrape.
    assert seconds > 0.3, "the exposition is too small to show anything"
    assert longest_wait < seconds / 2, (longest_wait, seconds, len(answered))

    text = body.decode()
    families = list(text_string_to_metric_families(text))
    # Past the budget two kinds of series are still made: each metric's one series of 'other', and the
    # overflow counter's report of it (by label). Every other series is within the budget.
    reports = [s for f in families for s in f.samples if s.name == "agentopz_label_overflow_total"]
    own = [
        s
        for f in families
        for s in f.samples
        if OVERFLOW_VALUE not in s.labels.values() and s.name != "agentopz_label_overflow_total"
    ]
    overflowed = [s for f in families for s in f.samples if OVERFLOW_VALUE in s.labels.values()]
    assert len(own) <= MAX_SERIES
    assert [s.labels["label"] for s in reports] == ["__budget__"]
    assert len(own) > MAX_SERIES - 22  # the budget ran out within one pair's series
    assert overflowed, "pairs past the budget go to the series of 'other'"
    samples = metric_samples(text)
    assert samples[("agentopz_label_overflow_total", frozenset({("label", "__budget__")}))] > 0
    assert ("agentopz_label_overflow_total", frozenset({("label", "agent")})) not in samples
