"""OFREP evaluations per second: the evaluation handler in-process, and over HTTP against a running service
pinned to one core (the client runs in this process on the other core).

.venv/bin/python bench/ofrep_eval.py --evaluations 50000 --http-seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from agentopz_otel.components import Context
from agentopz_otel.extensions.rollouts import RolloutsConfig, RolloutsExtension
from agentopz_otel.extensions.rollouts.ofrep import bulk_response, single_response
from agentopz_otel.extensions.storage import StorageConfig, StorageExtension
from agentopz_otel.metrics import Registry
from bench import Command, Launched, cpu_seconds, http_ok, launch, pinned

AGENTS = 50
JSON = {"Content-Type": "application/json"}
VERSIONS = {"v1": {"prompt": "support/v1", "model": "gpt-4o"}, "v2": {"prompt": "support/v2", "model": "gpt-4o"}}


def bodies(count: int) -> list[bytes]:
    return [json.dumps({"context": {"targetingKey": f"user-{i}", "tier": "pro"}}).encode() for i in range(count)]


async def in_process(evaluations: int, directory: Path) -> None:
    context = Context(metrics=Registry())
    context.extensions["storage"] = StorageExtension("storage", StorageConfig(path=str(directory / "bench.sqlite")))
    rollouts = RolloutsExtension("rollouts", RolloutsConfig(), context)
    await rollouts.start()
    for index in range(AGENTS):
        agent = f"agent-{index}"
        rollouts.define_agent(agent, VERSIONS, "v1", actor="bench")
        rollouts.start_rollout(agent, "v2", [5, 25, 50, 100], actor="bench")
    requests = bodies(evaluations)
    # CPU time of this (single-threaded) process: the rate on one core, whatever else the machine runs.
    started = time.process_time()
    for index, body in enumerate(requests):
        single_response(rollouts.snapshot, f"agent-{index % AGENTS}", body)
    elapsed = time.process_time() - started
    print(f"in-process single evaluation (split, {AGENTS} agents): {evaluations / elapsed:,.0f} per CPU-second")
    bulk_count = max(1, evaluations // 50)
    started = time.process_time()
    for body in requests[:bulk_count]:
        bulk_response(rollouts.snapshot, body, None)
    elapsed = time.process_time() - started
    print(
        f"in-process bulk evaluation of {AGENTS} flags: {bulk_count / elapsed:,.0f} requests per CPU-second "
        f"({bulk_count * AGENTS / elapsed:,.0f} flag evaluations)"
    )


def start_service(directory: Path) -> tuple[Launched, str]:
    def command(ports: tuple[int, ...]) -> Command:
        (admin_port,) = ports
        config = directory / "config.yaml"
        config.write_text(
            f"""
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:0
exporters:
  prometheus: {{}}
extensions:
  storage:
    path: {directory / "service.sqlite"}
  rollouts: {{}}
service:
  admin:
    endpoint: 127.0.0.1:{admin_port}
  extensions: [storage, rollouts]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [prometheus]
"""
        )
        argv = [sys.executable, "-m", "agentopz_otel", "run", "--config", str(config)]
        # One core for the service, the other for this client.
        return Command(pinned("0", argv), http_ok(f"http://127.0.0.1:{admin_port}/readyz"))

    launched = launch("agentopz-otel", command, directory / "service.log", ports=1, timeout=20)
    return launched, f"http://127.0.0.1:{launched.ports[0]}"


async def over_http(url: str, pid: int, seconds: float, concurrency: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for agent in ("support-bot",):
            define = {"versions": VERSIONS, "baseline": "v1"}
            await session.put(f"{url}/api/v1/agents/{agent}", json=define)
            await session.post(f"{url}/api/v1/rollouts", json={"agent": agent, "candidate": "v2", "steps": [5, 100]})
        requests = bodies(10_000)
        evaluate_url = f"{url}/ofrep/v1/evaluate/flags/support-bot"
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            index = offset
            while time.perf_counter() < stop:
                body = requests[index % len(requests)]
                async with session.post(evaluate_url, data=body, headers=JSON) as response:
                    await response.read()
                    assert response.status == 200
                done += 1
                index += concurrency

        started, service_cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
        elapsed, service_cpu = time.perf_counter() - started, cpu_seconds(pid) - service_cpu
    # On a shared machine the wall-clock rate depends on the other load; per CPU-second of the service it does not.
    print(
        f"over HTTP, service on one core, {concurrency} keep-alive connections: {done / elapsed:,.0f} /s wall clock, "
        f"{done / service_cpu:,.0f} per CPU-second of the service ({service_cpu / elapsed:.0%} of a core used)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluations", type=int, default=50_000)
    parser.add_argument("--http-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        asyncio.run(in_process(args.evaluations, directory))
        if args.http_seconds > 0:
            service, url = start_service(directory)
            with service:
                asyncio.run(over_http(url, service.process.pid, args.http_seconds, args.concurrency))


if __name__ == "__main__":
    main()
