#!/usr/bin/env python
"""CPU cost of each pipeline stage, in process: microseconds per span, no network, no event loop.

    .venv/bin/python bench/pipeline_stages.py                 # the built-in default with runs
    .venv/bin/python bench/pipeline_stages.py --no-runs --requests 400

Replays bench.py's realistic agent traces (fresh trace ids per request) through the pipeline of the
service's own config: the receiver's protobuf parse and id check, each processor, then the exporters;
the runs processor finishes every quiet run after each request as its ticker would. Figures are CPU
seconds of this process (time.process_time), so they hold on a shared machine better than wall time;
still, repeat and compare in one run. The end-to-end figure (bench.py) adds gRPC and the event loop.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections import defaultdict

from agentopz_otel.config import parse_config
from agentopz_otel.receivers.otlp import parse_protobuf_request, remove_invalid_spans
from agentopz_otel.service import Service
from agentopz_otel.spans import Batch
from bench import build_payloads, service_config

RECEIVE = "receive (parse, ids)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests replayed per repetition")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; the best is printed with the spread")
    parser.add_argument("--no-runs", action="store_true", help="without the runs processor")
    parser.add_argument("--payloads", type=int, default=32)
    parser.add_argument("--spans-per-request", type=int, default=512)
    args = parser.parse_args()

    marker = random.Random(7).getrandbits(64).to_bytes(8, "big")
    payloads = build_payloads(args.payloads, args.spans_per_request, 7, marker)
    config = json.loads(service_config(4317, 4318, 9464, None, not args.no_runs))
    service = Service(parse_config(json.dumps(config)))
    pipeline = service.pipelines[0]
    runs = next((p for p in pipeline.processors if hasattr(p, "tick")), None)
    stages = [(type(p).__name__, p.process) for p in pipeline.processors]
    stages += [(type(e).__name__, e.export) for e in pipeline.exporters]
    gc.set_threshold(50_000, 50, 100)  # as the service runs (service.start)
    gc.freeze()

    rounds: list[dict[str, float]] = []
    counter = 0
    for _ in range(args.repeat):
        spent: dict[str, float] = defaultdict(float)
        spans = 0
        for index in range(args.requests):
            body, _ = payloads[index % len(payloads)]
            counter += 1
            body = body.replace(marker, counter.to_bytes(8, "big"))
            clock = time.process_time
            started = clock()
            request = parse_protobuf_request(body)
            total, removed = remove_invalid_spans(request)
            spent[RECEIVE] += clock() - started
            spans += total
            batch = Batch(request, total - removed, None if removed else body)  # as the receiver makes it
            for name, stage in stages:
                started = clock()
                stage(batch)
                spent[name] += clock() - started
            if runs is not None:
                started = clock()
                runs.tick(time.monotonic() + 3600)  # every run of the request is complete: finish it
                spent["RunsProcessor (finishing)"] += clock() - started
        rounds.append({name: seconds / spans * 1e6 for name, seconds in spent.items()})

    names = list(rounds[0])
    print(f"{args.requests} requests x {args.spans_per_request} spans, {args.repeat} repetitions (µs per span)")
    print(f"{'stage':<32} {'best':>8} {'worst':>8}")
    for name in names:
        values = [r[name] for r in rounds]
        print(f"{name:<32} {min(values):>8.2f} {max(values):>8.2f}")
    totals = [sum(r.values()) for r in rounds]
    print(f"{'total':<32} {min(totals):>8.2f} {max(totals):>8.2f}")
    print(f"=> {1e6 / min(totals):,.0f} spans per CPU-second at best (no gRPC, no event loop)")


if __name__ == "__main__":
    main()
