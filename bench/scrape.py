#!/usr/bin/env python
"""Scrape cost at the worst configured cardinality, and span intake while /metrics is scraped.

    .venv/bin/python bench/scrape.py                      # default budgets, 5 s per phase
    .venv/bin/python bench/scrape.py --max-series 50000 --seconds 10

Fills the service's series budget (service.cardinality.max_series) with LLM calls whose service,
agent and model names are all max_value_length characters long (the largest exposition the config
allows), then prints the scrape time and size in both formats, and the intake rate and request
latency of realistic traffic without scrapes and with a scraper looping back to back. The scraper is a
process of its own, as Prometheus is: a thread beside the load generator's would take its interpreter
lock to read each exposition and slow the sending, which would count against the service.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import time
import urllib.request
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

from hostile import Loader, ServiceProcess, combination_requests, send_all, service_config

from bench import build_payloads

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-series", type=int, default=None, help="service.cardinality.max_series")
    parser.add_argument("--value-length", type=int, default=128, help="service.cardinality.max_value_length")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each intake phase")
    args = parser.parse_args()

    cardinality: dict = {"max_value_length": args.value_length}
    if args.max_series is not None:
        cardinality["max_series"] = args.max_series
    # Many distinct agents and models: the per-label caps must not be what stops the fill.
    cardinality["limits"] = {"service": 1000, "agent": 100_000, "model": 100_000}
    cardinality["max_series_per_metric"] = 1_000_000
    service = ServiceProcess(service_config(service={"cardinality": cardinality}))
    try:
        began = time.perf_counter()
        combinations = 0
        while service.value("agentopz_label_overflow_total", label="__budget__") == 0:
            requests = combination_requests(500, args.value_length, first=combinations, open_runs=False)
            send_all(service.grpc_target, requests)
            combinations += 500
        elapsed = time.perf_counter() - began
        print(f"filled the series budget with {combinations} agent x model combinations in {elapsed:.1f} s")

        for name, accept in (("text", ""), ("OpenMetrics", OPENMETRICS)):
            timings = []
            for _ in range(5):
                body, seconds = service.scrape(accept)
                timings.append(seconds)
            samples = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
            print(
                f"scrape {name:<11}: {len(body) / 2**20:6.2f} MiB, {samples} samples, "
                f"median {statistics.median(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms"
            )

        marker = random.Random(7).getrandbits(64).to_bytes(8, "big")
        payloads = build_payloads(20, 200, 7, marker)
        with Loader(service.grpc_target, payloads, marker) as loader:
            time.sleep(1.0)
            loader.window()
            time.sleep(args.seconds)
            quiet = loader.window().summary()
            spawn = multiprocessing.get_context("spawn")
            stop, results = spawn.Event(), spawn.Queue()
            scraper = spawn.Process(target=scrape_loop, args=(service.metrics_url, stop, results))
            scraper.start()
            time.sleep(1.0)  # the scraper's interpreter starting is not the service's cost
            loader.window()
            time.sleep(args.seconds)
            busy = loader.window().summary()
            stop.set()
            scrapes: list[float] = results.get(timeout=120)
            scraper.join()
        for name, stats in (("no scrapes", quiet), ("scraping back to back", busy)):
            print(
                f"intake, {name:<22}: {stats['spans_per_second']:8.0f} spans/s, request latency "
                f"p50 {stats['latency_p50_ms']:.0f} ms, max {stats['latency_max_ms']:.0f} ms"
            )
        print(
            f"scrapes during intake: {len(scrapes)}, median {statistics.median(scrapes) * 1000:.0f} ms, "
            f"max {max(scrapes) * 1000:.0f} ms; service RSS {service.rss_mib():.0f} MiB"
        )
    finally:
        service.stop()


def scrape_loop(url: str, stop: Event, results: Queue) -> None:
    """Scrape `url` back to back until `stop`; put the list of seconds each took on `results`."""
    timings = []
    while not stop.is_set():
        began = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
        timings.append(time.perf_counter() - began)
    results.put(timings)


if __name__ == "__main__":
    main()
