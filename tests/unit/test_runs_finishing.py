"""The runs processor's finishing ticker, on the real event loop."""

from __future__ import annotations

import asyncio
import itertools

from support.otlp_proto import make_request, make_span

from agentopz_otel.components import Context
from agentopz_otel.metrics import Registry
from agentopz_otel.processors.normalize import FACTORY as NORMALIZE
from agentopz_otel.processors.runs import RunsConfig
from agentopz_otel.processors.runs.assembly import Output
from agentopz_otel.processors.runs.processor import FINISH_SLICE, RunsProcessor
from agentopz_otel.spans import Batch

TICK = 0.4
SLICES = 4


def test_runs_that_go_quiet_together_are_finished_in_slices_spread_over_the_tick():
    """Run back to back, the slices held a request that came meanwhile behind all of them: each of the
    request's awaits waited for one more slice."""
    now = [1000.0]
    context = Context(metrics=Registry())
    normalize = NORMALIZE.create("normalize", NORMALIZE.config_type(), context)
    runs = RunsProcessor("runs", RunsConfig(tick_seconds=TICK), context.metrics, clock=lambda: now[0])
    for number in range(1, SLICES * FINISH_SLICE + 1):
        trace_id = number.to_bytes(16, "big")
        agent = make_span("invoke_agent a", {"gen_ai.operation.name": "invoke_agent"}, trace_id=trace_id)
        call = make_span("chat", {"gen_ai.operation.name": "chat"}, trace_id=trace_id, parent=agent.span_id)
        batch = Batch(make_request([agent, call]), 2)
        normalize.process(batch)
        runs.process(batch)
    now[0] += 3600  # every trace is quiet at the first tick
    finished: list[tuple[float, int]] = []

    async def finish_all() -> None:
        loop = asyncio.get_running_loop()
        route = runs._route

        def timed(out: Output) -> None:
            if out.records:
                finished.append((loop.time(), len(out.records)))
            route(out)

        runs._route = timed  # type: ignore[method-assign]
        await runs.start()
        for _ in range(200):
            if sum(count for _, count in finished) == SLICES * FINISH_SLICE:
                break
            await asyncio.sleep(0.05)
        await runs.shutdown(timeout=1)

    asyncio.run(finish_all())
    assert [count for _, count in finished] == [FINISH_SLICE] * SLICES
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(finished)]
    # A slice every TICK / SLICES seconds; asyncio's timers never fire early.
    assert min(gaps) >= TICK / SLICES * 0.95, gaps
