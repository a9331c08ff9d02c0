"""Memory held per open run: runs in flight (children arrived, root not yet) kept by the runs processor.

Prints bytes per open run and the total for the requested number of open runs, the pause of a full
garbage collection with them open, and what a checkpoint of them (runs.checkpoint) costs: its size,
the time the event loop spends taking it, the event loop's largest delay meanwhile, and the time to
restore it. With --finished, the bytes per finished trace of an agent span and a call, kept for late
spans (runs.late_window_seconds), instead.
    .venv/bin/python bench/open_runs_memory.py --runs 100000 --calls 4 --tools 2
    .venv/bin/python bench/open_runs_memory.py --runs 10000 --finished
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentopz_otel.components import Context
from agentopz_otel.fleet import chat_attributes, otlp_attributes, tool_attributes, usage_attributes
from agentopz_otel.metrics import Registry
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.runs import FACTORY as RUNS
from agentopz_otel.processors.runs.checkpoint import SLICE, RunCheckpoint, RunState
from agentopz_otel.spans import Batch


def trace_request(index: int) -> tuple[ExportTraceServiceRequest, Any, bytes]:
    """A request for trace `index` of one of five services: the request, its span list, the trace id."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(otlp_attributes({"service.name": f"svc-{index % 5}"}))
    return request, resource_spans.scope_spans.add().spans, index.to_bytes(16, "big")


def open_run_request(index: int, calls: int, tools: int) -> ExportTraceServiceRequest:
    """The children of one run whose agent span has not ended yet."""
    request, spans, trace_id = trace_request(index)
    root_id = (index * 64 + 1).to_bytes(8, "big")
    for call in range(calls):
        span = spans.add(trace_id=trace_id, span_id=(index * 64 + 2 + call).to_bytes(8, "big"), parent_span_id=root_id)
        span.start_time_unix_nano, span.end_time_unix_nano = 1, 2
        span.attributes.extend(otlp_attributes({**chat_attributes("gpt-4o", "openai"), **usage_attributes(1200, 300)}))
    for tool in range(tools):
        span = spans.add(trace_id=trace_id, span_id=(index * 64 + 40 + tool).to_bytes(8, "big"), parent_span_id=root_id)
        span.attributes.extend(otlp_attributes(tool_attributes(f"tool{tool}")))
    return request


def finished_run_request(index: int) -> ExportTraceServiceRequest:
    """A run of an agent span and one LLM call, complete."""
    request, spans, trace_id = trace_request(index)
    agent_id = (index * 64 + 1).to_bytes(8, "big")
    agent = spans.add(trace_id=trace_id, span_id=agent_id, start_time_unix_nano=1, end_time_unix_nano=3)
    agent.attributes.extend(otlp_attributes({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"}))
    call = spans.add(trace_id=trace_id, span_id=(index * 64 + 2).to_bytes(8, "big"), parent_span_id=agent_id)
    call.start_time_unix_nano, call.end_time_unix_nano = 1, 2
    call.attributes.extend(otlp_attributes({**chat_attributes("gpt-4o", "openai"), **usage_attributes(1200, 300)}))
    return request


async def snapshot_watched(checkpoint: RunCheckpoint, state: RunState) -> tuple[bytes, float]:
    """The checkpoint's slices back to back (at shutdown; a periodic save spreads them), and the largest
    delay they caused a task that wakes every millisecond meanwhile."""
    loop = asyncio.get_running_loop()
    largest = 0.0

    async def heartbeat() -> None:
        nonlocal largest
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            largest = max(largest, loop.time() - before - 0.001)

    watcher = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)
    blob = await checkpoint.snapshot(state)
    watcher.cancel()
    return blob, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=4, help="LLM calls per open run")
    parser.add_argument("--tools", type=int, default=2, help="tool calls per open run")
    parser.add_argument("--finished", action="store_true", help="finished traces kept for late spans instead")
    args = parser.parse_args()

    context = Context(metrics=Registry())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    runs = RUNS.create("runs", RUNS.config_type(max_open_runs=args.runs), context)
    if args.finished:
        requests = [finished_run_request(i) for i in range(args.runs)]
    else:
        requests = [open_run_request(i, args.calls, args.tools) for i in range(args.runs)]

    # Traced from before normalize: what the runs processor keeps of a view (ids, label strings) was
    # allocated there, and counts as much as what the processor allocates itself.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for request in requests:
        batch = Batch(request, len(request.resource_spans[0].scope_spans[0].spans))
        normalize.process(batch)
        runs.process(batch)
    del batch, requests
    if args.finished:
        runs.tick(time.monotonic() + 3600)  # every run finishes: its trace is kept for late spans
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    if args.finished:
        assert len(runs.assembler.finished) == args.runs and not runs.assembler.traces
        print(f"finished traces:      {args.runs} (an agent span and an LLM call each)")
        print(f"bytes per trace:      {held / args.runs:,.0f}")
        print(f"  as runs.max_memory_bytes estimates it: {runs.assembler.held_bytes() / args.runs:,.0f}")
        sys.exit()
    open_runs = sum(1 for trace in runs.assembler.traces.values() for g in trace.groups if g.merged_into is None)
    assert open_runs == args.runs, open_runs
    print(f"open runs:            {open_runs}")
    print(f"spans per open run:   {args.calls} LLM + {args.tools} tool (root not yet arrived)")
    print(f"bytes per open run:   {held / open_runs:,.0f}")
    print(f"  as runs.max_memory_bytes estimates it: {runs.assembler.held_bytes() / open_runs:,.0f}")
    print(f"memory for {open_runs:,} open runs: {held / 2**20:,.1f} MiB")
    resident_pages = int(Path(f"/proc/{os.getpid()}/statm").read_text().split()[1])
    print(f"process RSS:          {resident_pages * os.sysconf('SC_PAGE_SIZE') / 2**20:,.0f} MiB")

    # The pause of the service's full collection (garbage.FULL_SECONDS apart) with these runs open; its
    # automatic collector is off, so the figures below are the service's.
    started = time.process_time()
    gc.collect()
    print(f"full garbage collection: {(time.process_time() - started) * 1000:,.0f} cpu ms")
    gc.disable()
    with sqlite3.connect(":memory:") as connection:
        checkpoint = RunCheckpoint(connection, "runs")
        state = RunState(runs.assembler.traces, runs.assembler.finished)
        started = time.process_time()
        blob, largest_delay = asyncio.run(snapshot_watched(checkpoint, state))
        snapshot = time.process_time() - started
        checkpoint.write(blob)
        started = time.process_time()
        restored = checkpoint.load()
        loaded = time.process_time() - started
    assert restored is not None and len(restored.traces) == args.runs
    slices = -(-open_runs // SLICE)
    # CPU seconds, not wall time: on a shared machine they are what the service itself would spend.
    print(f"checkpoint:           {len(blob) / 2**20:,.1f} MiB, {snapshot:.2f} cpu s on the event loop")
    print(f"  in {slices} slices of {SLICE} traces, {snapshot / slices * 1000:.1f} cpu ms each")
    print(f"  the event loop's largest delay meanwhile: {largest_delay * 1000:.1f} ms")
    print(f"restore at start:     {loaded:.2f} cpu s")


if __name__ == "__main__":
    main()
