"""Memory of finished runs: freed by reference counting as soon as a trace is forgotten, since the
service runs the cyclic GC rarely."""

from __future__ import annotations

import gc
import os
import time

from agents import chat_attributes
from spans import make_request, make_span

from agentopz_otel.components import Context
from agentopz_otel.metrics import Registry
from agentopz_otel.model import Batch
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.runs import FACTORY as RUNS


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
