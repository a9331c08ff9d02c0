"""Prints what bench/bench.py's requests hold, to compare two checkouts' traffic before a throughput run.

    .venv/bin/python bench/payload_fingerprint.py                     # this checkout's bench/bench.py
    .venv/bin/python bench/payload_fingerprint.py --source /work/main # another checkout's

Builds the same requests bench.py sends (its defaults: 32 requests of 512 spans, seed 7) with the
chosen checkout's bench/bench.py and prints spans and bytes per request, attributes per span, the
error share of all spans and of call spans, and the durations of agent spans (failed runs, runs with a
failed call, clean runs), tool calls and chat calls, failed or not.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TOOL_KEYS = ("gen_ai.tool.name", "tool.name")  # GenAI conventions, OpenInference


def load_bench(source: Path):
    """`source`'s bench/bench.py, with `source` first on the path so it builds from its own fleet."""
    sys.path.insert(0, str(source))
    spec = importlib.util.spec_from_file_location("bench_under_test", source / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def seconds(span: Span) -> float:
    return (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    values = sorted(values)
    return (
        f"{len(values):>5} spans, p10 {values[len(values) // 10]:6.2f} s, median {statistics.median(values):6.2f} s, "
        f"p90 {values[len(values) * 9 // 10]:6.2f} s"
    )


def fingerprint(payloads: list[tuple[bytes, int]]) -> dict:
    spans: list[Span] = []
    traces: dict[tuple[int, bytes], list[Span]] = {}  # bench.py numbers its trace ids per request
    for index, (body, _) in enumerate(payloads):
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(span)
                    traces.setdefault((index, span.trace_id), []).append(span)
    durations: dict[str, list[float]] = {
        key: []
        for key in ("run failed", "run ok, a call failed", "run ok", "tool failed", "tool ok", "chat failed", "chat ok")
    }
    for trace in traces.values():
        call_failed = any(span.status.code == Status.STATUS_CODE_ERROR for span in trace if span.parent_span_id)
        for span in trace:
            failed = span.status.code == Status.STATUS_CODE_ERROR
            if not span.parent_span_id:
                key = "run failed" if failed else "run ok, a call failed" if call_failed else "run ok"
            else:
                kind = "tool" if any(kv.key in TOOL_KEYS for kv in span.attributes) else "chat"
                key = f"{kind} {'failed' if failed else 'ok'}"
            durations[key].append(seconds(span))
    calls = [span for span in spans if span.parent_span_id]
    return {
        "requests": len(payloads),
        "spans per request": len(spans) / len(payloads),
        "bytes per request": sum(len(body) for body, _ in payloads) / len(payloads),
        "attributes per span": sum(len(span.attributes) for span in spans) / len(spans),
        "error share": sum(span.status.code == Status.STATUS_CODE_ERROR for span in spans) / len(spans),
        "error share of calls": sum(span.status.code == Status.STATUS_CODE_ERROR for span in calls) / len(calls),
        "durations": durations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent, help="checkout")
    parser.add_argument("--payloads", type=int, default=32)
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    bench = load_bench(args.source.resolve())
    marker = random.Random(args.seed).getrandbits(64).to_bytes(8, "big")
    figures = fingerprint(bench.build_payloads(args.payloads, args.spans_per_request, args.seed, marker))
    print(f"bench/bench.py of {args.source}: {figures['requests']} requests")
    print(f"  spans per request      {figures['spans per request']:.1f}")
    print(f"  bytes per request      {figures['bytes per request']:,.0f}")
    print(f"  attributes per span    {figures['attributes per span']:.2f}")
    shares = f"{figures['error share']:.4f} of spans, {figures['error share of calls']:.4f} of calls"
    print(f"  error share            {shares}")
    for key, values in figures["durations"].items():
        print(f"  {key:<22} {spread(values)}")


if __name__ == "__main__":
    main()
