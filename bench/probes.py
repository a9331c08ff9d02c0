"""What probes cost the service: the bookkeeping of remembered trace ids at its cap, the answer
checks on a large body, and whole probes against a local aiohttp agent stand-in, with the event
loop's largest scheduling delay meanwhile (the time span intake would have waited).

    .venv/bin/python bench/probes.py --remembered 10000 --probes 50 --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import statistics
import time
from types import SimpleNamespace

from aiohttp import web
from jsonpath_ng.ext import parse

from agentopz_otel.components import Context
from agentopz_otel.extensions.probes import FACTORY, ProbesConfig
from agentopz_otel.extensions.probes.core import Answer, Expectation, SentProbes, check_answer
from agentopz_otel.metrics import Registry


def bookkeeping(remembered: int) -> None:
    sent = SentProbes(limit=remembered, remember_seconds=900)
    trace_ids = [secrets.token_hex(16) for _ in range(remembered)]
    started = time.perf_counter()
    for index, trace_id in enumerate(trace_ids):
        sent.add(trace_id, f"agent-{index % 50}", now=index * 0.001, wait=60)
    added = time.perf_counter() - started
    started = time.perf_counter()
    sent.expire(now=1.0)  # one tick at the cap: nothing due yet, every entry looked at
    tick = time.perf_counter() - started
    started = time.perf_counter()
    for trace_id in trace_ids[: remembered // 2]:
        sent.arrived(trace_id)
    arrived = time.perf_counter() - started
    started = time.perf_counter()
    late = sent.expire(now=1e9)  # every deadline and every forget_at has passed
    all_due = time.perf_counter() - started
    assert len(late) == remembered - remembered // 2 and len(sent) == 0
    print(
        f"remembered {remembered}: add {added / remembered * 1e6:.2f} us each, finished-run lookup "
        f"{arrived / (remembered // 2) * 1e6:.2f} us each, expire tick with nothing due {tick * 1e3:.3f} ms, "
        f"with all due {all_due * 1e3:.1f} ms"
    )


def answer_checks(body_bytes: int, repeat: int) -> None:
    # A JSON answer just under body_bytes: the largest a check reads.
    items: list[dict] = []
    while len(json.dumps({"status": "ok", "items": items})) < body_bytes - 60:
        items.append({"id": len(items), "name": f"item {len(items)}", "ok": True})
    body = json.dumps({"status": "ok", "items": items}).encode()
    cases = {
        "status only": Expectation(frozenset({200})),
        "json_path $.status == ok": Expectation(frozenset({200}), parse("$.status"), "ok"),
        "regex": Expectation(frozenset({200}), regex=re.compile(r'"status":\s*"ok"')),
    }
    answer = Answer(200, body, False)
    for name, expect in cases.items():
        started = time.perf_counter()
        for _ in range(repeat):
            check_answer(expect, answer)
        each = (time.perf_counter() - started) / repeat
        print(f"check on a {len(body)} byte answer, {name}: {each * 1e6:.0f} us")


async def whole_probes(probes: int, rounds: int) -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "reply": "pong"})

    app = web.Application()
    app.router.add_post("/chat", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = ProbesConfig(
        probes=[
            {
                "agent": f"agent-{index}",
                "url": f"http://127.0.0.1:{port}/chat",
                "method": "POST",
                "body": '{"message": "ping"}',
                "expect": {"json_path": "$.status", "json_value": "ok"},
                "run_wait_seconds": 60,
            }
            for index in range(probes)
        ]
    )
    extension = FACTORY.create("probes", config, Context(metrics=Registry()))
    await extension.start()  # no timer runs: the rounds below send every probe at once
    for task in extension._tasks:
        task.cancel()
    delays: list[float] = []
    stop = asyncio.Event()

    async def watch_loop() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            delays.append(time.perf_counter() - before - 0.001)

    watcher = asyncio.create_task(watch_loop())
    durations = []
    started = time.perf_counter()
    for _ in range(rounds):
        round_started = time.perf_counter()
        reasons = await asyncio.gather(*(extension.probe_once(probe) for probe in config.probes))
        durations.append(time.perf_counter() - round_started)
        assert reasons == [None] * probes  # answered and waiting for their runs
    elapsed = time.perf_counter() - started
    stop.set()
    await watcher
    # Their runs arrive: the finished-runs feed looks each one up.
    waiting = list(extension._sent._by_trace)
    records = [SimpleNamespace(trace_id=trace_id, service="s", agent="a", outcome="success") for trace_id in waiting]
    feed_started = time.perf_counter()
    extension._on_runs(records)
    feed = time.perf_counter() - feed_started
    await extension.shutdown(5)
    await runner.cleanup()
    total = probes * rounds
    print(
        f"{total} probes ({probes} agents at once, max_concurrency {config.max_concurrency}): "
        f"{total / elapsed:.0f} probes/s, round p50 {statistics.median(durations) * 1e3:.1f} ms, "
        f"event loop delay max {max(delays) * 1e3:.1f} ms; {len(records)} runs fed to the probes in "
        f"{feed * 1e3:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--remembered", type=int, default=10_000)
    parser.add_argument("--body-bytes", type=int, default=65536)
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    bookkeeping(args.remembered)
    answer_checks(args.body_bytes, 50)
    asyncio.run(whole_probes(args.probes, args.rounds))


if __name__ == "__main__":
    main()
