#!/usr/bin/env python
"""Soak: good and hostile traffic together for a while, against the service as a process on
loopback that forwards to a loopback OTLP/gRPC sink, with /metrics scraped throughout.

    .venv/bin/python bench/soak.py                 # 60 s
    .venv/bin/python bench/soak.py --seconds 600

Good traffic: realistic agent traces (bench.py's generator) from two senders. Hostile traffic, one
sender cycling through: agent x model combinations with names of 128 characters, distinct unknown
model names, runs whose agent span never arrives, unusable token counts, a 1 MiB model name, distinct
16 KiB system prompts. Then the traffic stops, the service is left to settle for --settle seconds
(runs are abandoned after --abandon-after and forgotten --late-window later) and is stopped with
SIGTERM. Prints peak and final RSS, scrape times, intake, and spans acknowledged versus delivered.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc
from hostile import (
    Loader,
    ServiceProcess,
    combination_requests,
    huge_name_requests,
    invalid_attribute_requests,
    model_name_requests,
    open_run_requests,
    service_config,
    system_prompt_requests,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from bench import EXPORT_METHOD, build_payloads

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.otlp_sinks import GrpcSink


class CountingSink(GrpcSink):
    """A loopback OTLP/gRPC backend that counts spans and log records instead of keeping them."""

    def __init__(self) -> None:
        super().__init__()
        self.span_count = 0
        self.log_record_count = 0

    def record(self, request: ExportTraceServiceRequest, metadata: dict[str, str]) -> None:
        spans = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        with self._lock:
            self.span_count += spans

    def record_logs(self, request) -> None:
        records = sum(len(scope.log_records) for resource in request.resource_logs for scope in resource.scope_logs)
        with self._lock:
            self.log_record_count += records


def hostile_batches() -> itertools.cycle:
    """One request of each hostile kind in turn; every request's names and ids are new."""
    step = itertools.count()

    def kinds():
        for round_ in step:
            yield from combination_requests(100, 128, first=round_ * 100)
            yield from model_name_requests(500, 40, first=round_ * 500)
            yield from open_run_requests(50, first=round_ * 50)
            yield from invalid_attribute_requests(100, first=round_ * 100)
            yield from huge_name_requests(1)
            yield from system_prompt_requests(20, 16_000, first=round_ * 20)

    return kinds()


def send_hostile(target: str, stop: threading.Event, totals: dict[str, int]) -> None:
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
        export = channel.unary_unary(EXPORT_METHOD)
        for body in hostile_batches():
            if stop.is_set():
                return
            request = ExportTraceServiceRequest.FromString(body)
            spans = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
            try:
                response = ExportTraceServiceResponse.FromString(export(body, timeout=30))
            except grpc.RpcError:
                totals["refused_requests"] += 1
                time.sleep(0.05)
                continue
            totals["acked"] += spans - response.partial_success.rejected_spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the traffic runs")
    parser.add_argument("--settle", type=float, default=45.0, help="quiet time before the final RSS")
    parser.add_argument("--abandon-after", type=float, default=15.0, help="processors.runs.abandon_after_seconds")
    parser.add_argument("--late-window", type=float, default=15.0, help="processors.runs.late_window_seconds")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes")
    args = parser.parse_args()

    sink = CountingSink()
    sink.start()
    runs = {"abandon_after_seconds": args.abandon_after, "late_window_seconds": args.late_window}
    service = ServiceProcess(service_config(runs=runs, downstream=sink.endpoint))
    rss: list[float] = []
    scrapes: list[float] = []
    sizes: list[int] = []
    stop_scraping = threading.Event()

    def watch() -> None:
        while not stop_scraping.wait(args.scrape_interval):
            body, seconds = service.scrape()
            scrapes.append(seconds)
            sizes.append(len(body))
            rss.append(service.rss_mib())

    try:
        started_rss = service.rss_mib()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        marker = random.Random(11).getrandbits(64).to_bytes(8, "big")
        hostile = {"acked": 0, "refused_requests": 0}
        stop_hostile = threading.Event()
        attacker = threading.Thread(target=send_hostile, args=(service.grpc_target, stop_hostile, hostile))
        with Loader(service.grpc_target, build_payloads(20, 200, 11, marker), marker) as loader:
            attacker.start()
            time.sleep(args.seconds)
            stop_hostile.set()
            attacker.join()
        good = loader.stats.summary()
        end_of_traffic_rss = service.rss_mib()
        time.sleep(args.settle)
        final_rss = service.rss_mib()
        stop_scraping.set()
        watcher.join()
        peak_rss = service.peak_rss_mib()
        failed = service.value("agentopz_exporter_failed_spans_total")
        service.stop()
        acked = good["acked_spans"] + hostile["acked"]
        deadline = time.monotonic() + 30
        while sink.span_count < acked and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        service.stop()
        sink.stop()

    print(f"traffic {args.seconds:.0f} s, settle {args.settle:.0f} s, runs abandoned after {args.abandon_after:.0f} s")
    print(
        f"good intake: {good['spans_per_second']:.0f} spans/s, request latency p50 {good['latency_p50_ms']:.0f} ms, "
        f"max {good['latency_max_ms']:.0f} ms; hostile spans acknowledged: {hostile['acked']}, "
        f"hostile requests refused: {hostile['refused_requests']}"
    )
    print(
        f"scrapes: {len(scrapes)}, median {statistics.median(scrapes) * 1000:.0f} ms, "
        f"max {max(scrapes) * 1000:.0f} ms, largest {max(sizes) / 2**20:.2f} MiB"
    )
    print(
        f"RSS: start {started_rss:.0f} MiB, peak {peak_rss:.0f} MiB, at the end of the traffic "
        f"{end_of_traffic_rss:.0f} MiB, final {final_rss:.0f} MiB"
    )
    print(
        f"spans acknowledged: {acked}, delivered to the sink: {sink.span_count}, "
        f"lost: {max(0, acked - sink.span_count)}, counted as failed by the exporter: {failed:.0f}; "
        f"run log records delivered: {sink.log_record_count}"
    )


if __name__ == "__main__":
    main()
