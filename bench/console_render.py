"""Console page render times with a big fleet, and how long the event loop waits meanwhile.

Fills the console's history with `--agents` agents (two prompt versions each, tools and models) and
`--runs` runs over the last hour, then serves the fleet page and one agent page through the real
handlers (rendered on the console's worker thread) while a probe task on the event loop measures
its largest scheduling delay: the time span intake would have waited.

    .venv/bin/python bench/console_render.py --agents 500 --runs 10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time

from aiohttp.test_utils import make_mocked_request

from agentopz_otel.components import Context
from agentopz_otel.extensions.console import FACTORY, ConsoleConfig
from agentopz_otel.metrics import Registry
from agentopz_otel.records import RunRecord

OUTCOMES = ["success"] * 90 + ["quality_failure"] * 5 + ["llm_error", "tool_error", "timeout", "error", "abandoned"]


def make_records(agents: int, runs: int, now: float, rng: random.Random) -> list[tuple[float, RunRecord]]:
    records = []
    for index in range(runs):
        agent = f"agent-{index % agents:04d}"
        finished = now - rng.uniform(0, 3600)
        duration = rng.lognormvariate(1.5, 0.8)
        tools = {f"tool-{tool}": [rng.randint(1, 3), rng.random() < 0.05] for tool in range(rng.randint(0, 3))}
        record = RunRecord(
            trace_id=f"{rng.getrandbits(128):032x}",
            root_span_id=f"{rng.getrandbits(64):016x}",
            service="bench",
            agent=agent,
            prompt_version="v2" if rng.random() < 0.05 else "v1",
            outcome=rng.choice(OUTCOMES),
            started_at=finished - duration,
            finished_at=finished,
            duration_seconds=duration,
            cost_usd=rng.lognormvariate(-5, 1),
            cost_complete=True,
            tokens={"input": 1200, "output": 300},
            steps=rng.randint(1, 8),
            llm_calls=rng.randint(1, 8),
            llm_errors=0,
            tool_calls=sum(counts[0] for counts in tools.values()),
            tool_errors=sum(counts[1] for counts in tools.values()),
            sub_agents=0,
            models=["gpt-4o"],
            calls_by_model={"gpt-4o": [3, int(rng.random() < 0.03)]},
            calls_by_tool={name: [calls, int(failed)] for name, (calls, failed) in tools.items()},
            failed_checks=["not_empty"] if rng.random() < 0.05 else [],
        )
        records.append((finished, record))
    return sorted(records, key=lambda item: item[0])


async def probe(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - started - 0.001)


async def serve(handler, request, repeat: int) -> tuple[list[float], float, int]:
    lags: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(probe(lags, stop))
    await asyncio.sleep(0.01)
    times = []
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = await handler(request)
        times.append(time.perf_counter() - started)
        size = len(response.text)
    stop.set()
    await task
    return times, max(lags), size


async def main(args: argparse.Namespace) -> None:
    gc.set_threshold(50_000, 50, 100)  # as the service runs (service.py)
    context = Context(metrics=Registry())
    console = FACTORY.create("console", ConsoleConfig(), context)
    rng = random.Random(1)
    now = time.time()
    records = make_records(args.agents, args.runs, now, rng)
    started = time.perf_counter()
    for finished, record in records:
        console.history.add([record], finished)
    took = time.perf_counter() - started
    print(
        f"history: {args.runs} runs of {args.agents} agents added in {took * 1000:.0f} ms "
        f"({args.runs / took:,.0f} runs/s on the worker)"
    )
    for name, handler, request in (
        ("fleet page", console._fleet, make_mocked_request("GET", "/")),
        ("fleet page, 24h", console._fleet, make_mocked_request("GET", "/?window=24h")),
        (
            "agent page",
            console._agent,
            make_mocked_request("GET", "/agents/agent-0007", match_info={"agent": "agent-0007"}),
        ),
    ):
        times, max_lag, size = await serve(handler, request, args.repeat)
        print(
            f"{name}: median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
            f"over {args.repeat} views, {size / 1024:.0f} KiB; event loop's largest delay meanwhile "
            f"{max_lag * 1000:.1f} ms"
        )
    await console.shutdown(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
