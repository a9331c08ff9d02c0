"""Runs at scale: forgotten traces are freed by reference counting (the service runs the cyclic GC
rarely), and the in-flight gauges are computed in slices, with intake running in between."""

from __future__ import annotations

import asyncio
import gc
import os
import time

from support.otlp_proto import make_request, make_span
from support.sdk_agent import chat_attributes

from agentopz_otel.components import Context
from agentopz_otel.metrics import Registry
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.runs import FACTORY as RUNS
from agentopz_otel.spans import Batch


def test_forgotten_traces_leave_no_garbage_for_the_cyclic_gc():
    context = Context(metrics=Registry())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    runs = RUNS.create("runs", RUNS.config_type(grace_seconds=0.01, late_window_seconds=0.01), context)
    requests = []
    for _ in range(50):
        trace_id = os.urandom(16)
        agent = make_span("invoke_agent", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"}, trace_id)
        call = make_span("chat", chat_attributes(), trace_id, parent=agent.span_id)
        requests.append(make_request([call, agent]))
    gc.collect()
    gc.disable()
    try:
        for request in requests:
            batch = Batch(request, 2)
            normalize.process(batch)
            runs.process(batch)
        now = time.monotonic()
        runs.tick(now + 1)  # every run finishes
        runs.tick(now + 2)  # and its trace is forgotten after the late window
        del batch
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage == 0


def test_the_in_flight_gauges_are_computed_in_slices_between_other_work():
    from agentopz_otel.processors.runs.publishing import IN_FLIGHT_SLICE

    registry = Registry()
    context = Context(metrics=registry)
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    runs = RUNS.create("runs", RUNS.config_type(), context)
    open_runs = 3 * IN_FLIGHT_SLICE
    for _ in range(open_runs):  # LLM calls under an agent span that has not arrived
        call = make_span("chat", chat_attributes(), os.urandom(16), parent=os.urandom(8))
        batch = Batch(make_request([call]), 1)
        normalize.process(batch)
        runs.process(batch)

    async def refresh_while_counting() -> int:
        turns = 0
        refresh = asyncio.ensure_future(registry.refresh())
        while not refresh.done():
            turns += 1
            await asyncio.sleep(0)
        return turns

    assert asyncio.run(refresh_while_counting()) >= 3
    values = {family.name: family.series for family in registry.snapshot()}
    assert values["agentopz_open_runs"] == [((), open_runs)]
    assert values["agentopz_runs_in_flight"] == [(("svc", "svc"), open_runs)]
