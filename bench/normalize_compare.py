#!/usr/bin/env python
"""normalize's CPU cost per span in two checkouts, measured in turns so that other work on a shared
machine weighs on both alike.

    .venv/bin/python bench/normalize_compare.py /work/main .             # the benchmark's agent traces
    .venv/bin/python bench/normalize_compare.py /work/main . --workload http --rounds 9

Each round runs one process per checkout (its package first on PYTHONPATH): the requests are parsed
afresh for each repetition, as the receiver would, and only the normalize processor's `views` is timed
(given the request's bytes too, as the receiver gives them, when the checkout takes them)
(time.process_time, garbage collection set as the service sets it). `agents` is bench.py's realistic
agent traces; `http` is plain HTTP server spans of 12 attributes and no GenAI attribute, the traffic a
service sends beside its agents. Prints the best and the median µs per span of each checkout.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
HTTP_ATTRIBUTES = {
    "http.request.method": "GET",
    "url.path": "/api/orders/42",
    "url.scheme": "https",
    "server.address": "shop.example",
    "server.port": 443,
    "http.route": "/api/orders/{id}",
    "http.response.status_code": 200,
    "user_agent.original": "Mozilla/5.0",
    "network.protocol.version": "1.1",
    "client.address": "10.1.2.3",
    "url.query": "expand=items",
    "http.request.body.size": 0,
}


def payloads(workload: str, count: int) -> list[bytes]:
    if workload == "agents":
        from bench import build_payloads

        marker = random.Random(7).getrandbits(64).to_bytes(8, "big")
        return [body for body, _ in build_payloads(count, 512, 7, marker)]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attribute = resource_spans.resource.attributes.add(key="service.name")
    attribute.value.string_value = "shop"
    spans = resource_spans.scope_spans.add().spans
    for index in range(512):
        span = spans.add(name="GET /api/orders/{id}", trace_id=os.urandom(16), span_id=(index + 1).to_bytes(8, "big"))
        span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_250_000_000
        for key, value in HTTP_ATTRIBUTES.items():
            any_value = span.attributes.add(key=key).value
            if isinstance(value, int):
                any_value.int_value = value
            else:
                any_value.string_value = value
    return [request.SerializeToString()] * count


def measure(workload: str, repeat: int) -> float:
    """Best µs per span of `repeat` passes over freshly parsed requests, in this process."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from agentopz_otel.components import Context
    from agentopz_otel.metrics import Registry
    from agentopz_otel.processors.normalize import FACTORY

    normalizer = FACTORY.create("normalize", FACTORY.config_type(), Context(metrics=Registry()))
    takes_wire = "wire" in inspect.signature(normalizer.views).parameters
    bodies = payloads(workload, 16)
    gc.set_threshold(50_000, 50, 100)  # as the service runs (service.start)
    gc.freeze()
    best = float("inf")
    for _ in range(repeat):
        requests = []
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            requests.append((request, body))
        started = time.process_time()
        if takes_wire:  # as the receiver hands it over: with the bytes the request was parsed from
            spans = sum(len(normalizer.views(request, body)) for request, body in requests)
        else:  # a checkout from before normalize read attributes from the bytes
            spans = sum(len(normalizer.views(request)) for request, _ in requests)
        best = min(best, (time.process_time() - started) / spans * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", help="checkouts whose agentopz_otel package is measured")
    parser.add_argument("--workload", choices=("agents", "http"), default="agents")
    parser.add_argument("--rounds", type=int, default=5, help="turns of one process per checkout")
    parser.add_argument("--repeat", type=int, default=3, help="passes per process; its best is its figure")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.workload, args.repeat)))
        return
    checkouts = [str(Path(checkout).resolve()) for checkout in args.checkouts]
    figures: dict[str, list[float]] = {checkout: [] for checkout in checkouts}
    for _ in range(args.rounds):
        for checkout in checkouts:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join((checkout, str(BENCH)))}
            command = [sys.executable, __file__, "--measure", "--workload", args.workload, "--repeat", str(args.repeat)]
            output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
            figures[checkout].append(json.loads(output))
    print(f"normalize, µs per span ({args.workload}, {args.rounds} rounds, best of {args.repeat} each)")
    for checkout, values in figures.items():
        print(
            f"{checkout:40s} best {min(values):5.2f}  median {statistics.median(values):5.2f}  "
            f"all {', '.join(f'{value:.2f}' for value in values)}"
        )


if __name__ == "__main__":
    main()
