#!/usr/bin/env python
"""Throughput benchmark: agentopz-otel with full enrichment versus rotel as a pass-through reference.

    .venv/bin/python bench/bench.py            # 20 s measured per target, after a warm-up
    .venv/bin/python bench/bench.py --quick    # 5 s measured per target
    .venv/bin/python bench/bench.py --runs --rounds 3  # the built-in default and rotel, alternated 3 times
    .venv/bin/python bench/bench.py --forward  # the service also forwards enriched spans to the sink
    .venv/bin/python bench/bench.py --forward --persistent-queue  # ... through a queue kept in SQLite
    .venv/bin/python bench/bench.py --runs --checkpoint 5 --duration 30  # open runs saved every 5 s

Layout on a 2-core machine: the system under test (agentopz-otel, then rotel) runs alone on core 1;
the load generator and the discard sink run on core 0. The load is a fixed set of pre-serialized
ExportTraceServiceRequest payloads (512 spans each) replayed over gRPC with a few requests in flight.
Every request gets fresh trace ids: each trace id is an 8-byte marker shared by the whole payload plus
an 8-byte trace index, and the marker is replaced by a per-request prefix with one bytes.replace call.
Span ids, timestamps and attribute values are reused as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from agentopz_otel.fleet import (
    AGENTS,
    FIRST_TOKEN_SECONDS,
    OPENINFERENCE,
    PRICED_MODELS,
    PROVIDERS,
    SERVER_ERROR,
    THINK_SECONDS,
    Conversations,
    Failure,
    Model,
    Tool,
    agent_attributes,
    chat_attributes,
    otlp_attributes,
    tool_attributes,
    usage_attributes,
)

# The launcher the tests start their servers with (tests/support/processes.py): it picks the free ports
# and starts the process again on new ones when one was taken meanwhile, waits for a readiness check,
# and stops it. The other bench scripts import it from here.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.processes import Command, Launched, http_ok, launch, listening
from support.rotel import rotel_command

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
SINK_STATS_METHOD = "/bench.Sink/Stats"
LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_MESSAGE = 256 * 1024 * 1024
GRPC_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
LOAD_CORE = "0"
TARGET_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- trace generation -------------------------------------------------------------------------------

NS = 1_000_000_000

# The service's event-loop lag histogram: all probes, and those on time within each of its bounds here.
LOOP_PROBES = "agentopz_event_loop_lag_seconds_count"
LOOP_LATE_BOUNDS = (0.05, 0.25)
LOOP_PROBES_ON_TIME = {bound: f'agentopz_event_loop_lag_seconds_bucket{{le="{bound}"}}' for bound in LOOP_LATE_BOUNDS}
FINISH_REASONS = (("stop",) * 8) + ("tool_calls", "tool_calls", "length")
USER_QUESTIONS = (
    "My deployment in eu-west-1 keeps failing with a 502 since this morning, can you check?",
    "What were the top 10 products by revenue last quarter, broken down by region?",
    "Find recent papers on speculative decoding and summarize the main speedup techniques.",
    "Please review PR #4821, it touches the retry logic in the payment client.",
    "Plan a 4-day trip to Lisbon in October for two people, mid-range budget.",
)


def _set_attributes(target, attributes: dict) -> None:
    target.extend(otlp_attributes(attributes))


@dataclass
class SpanSpec:
    name: str
    kind: int
    attributes: dict
    parent: int | None
    duration_ms: float
    error: str | None = None
    events: list = field(default_factory=list)
    offset_ms: float = 0.0  # start, from the start of the trace's agent span


class TraceFactory:
    """Builds one realistic agent trace at a time as a list of SpanSpecs."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.conversations = Conversations(rng)

    def _hex(self, digits: int) -> str:
        return f"{self.rng.getrandbits(digits * 4):0{digits}x}"

    def _usage(self, provider: str) -> tuple[int, int, int]:
        rng = self.rng
        input_tokens = int(rng.lognormvariate(7.3, 0.8)) + 50
        output_tokens = int(rng.lognormvariate(5.0, 0.9)) + 1
        cached = 0
        if input_tokens >= 1024 and rng.random() < 0.6:
            # prompt caching works on a prefix of at least 1024 tokens, in 128-token steps
            cached = rng.randrange(1024, input_tokens + 1, 128)
        return input_tokens, output_tokens, cached

    def _chat_ms(self, model: Model, output_tokens: int, failure: Failure | None) -> float:
        """A failed call takes its failure's time (it ends fast); an answer its tokens at the model's speed."""
        if failure is not None:
            return self.rng.uniform(*failure.seconds) * 1000
        return (self.rng.uniform(*FIRST_TOKEN_SECONDS) + output_tokens / model.tokens_per_second) * 1000

    def _tool_ms(self, tool: Tool, failure: Failure | None) -> float:
        """An answered tool call takes the tool's declared time, a failed one its failure's (fast, or a timeout)."""
        return self.rng.uniform(*(tool.seconds if failure is None else failure.seconds)) * 1000

    def _system_instructions(self, agent: str) -> str | None:
        prompts = AGENTS[agent].system_prompts
        if self.rng.random() < 0.4:
            text = self.rng.choice(prompts)
            return json.dumps([{"type": "text", "content": text}])
        return None

    def semconv_chat(self, agent: str, model: Model, parent: int, conversation: str) -> SpanSpec:
        rng = self.rng
        provider = PROVIDERS[model.provider]
        input_tokens, output_tokens, cached = self._usage(model.provider)
        finish = rng.choice(FINISH_REASONS)
        attributes = {
            **chat_attributes(model.name, model.provider),
            "gen_ai.request.temperature": rng.choice((0.0, 0.2, 0.7, 1.0)),
            "gen_ai.request.max_tokens": rng.choice((1024, 2048, 4096)),
            "gen_ai.response.model": model.response,
            "gen_ai.response.id": ("chatcmpl-" if model.provider == "openai" else "msg_") + self._hex(24),
            "gen_ai.response.finish_reasons": [finish],
            **usage_attributes(input_tokens, output_tokens, cached or None),
            "gen_ai.conversation.id": conversation,
            "gen_ai.output.type": "text",
            "server.address": provider.server,
            "server.port": 443,
        }
        if rng.random() < 0.5:
            attributes["gen_ai.agent.name"] = agent
        if model.provider == "openai":
            attributes["openai.response.service_tier"] = "default"
        system = self._system_instructions(agent)
        if system is not None:
            attributes["gen_ai.system_instructions"] = system
        error = None
        events = []
        roll = rng.random()
        # The provider's usual failure (a rate limit, an overload) answers nothing; a server error, usage.
        failure = provider.failure if roll < 0.02 else SERVER_ERROR if roll < 0.03 else None
        if failure is None:
            attributes["http.response.status_code"] = 200
        else:
            error = failure.type
            attributes["error.type"] = failure.type
            attributes["http.response.status_code"] = failure.http_status
            message = failure.message.format(model=model.name)
            events.append(
                ("exception", {"exception.type": f"{model.provider}.{failure.type}", "exception.message": message})
            )
            if failure is provider.failure:
                for key in ("gen_ai.response.id", "gen_ai.response.finish_reasons", "gen_ai.usage.output_tokens"):
                    attributes.pop(key)
        duration = self._chat_ms(model, output_tokens, failure)
        return SpanSpec(f"chat {model.name}", 3, attributes, parent, duration, error, events)

    def semconv_tool(self, agent: str, parent: int) -> SpanSpec:
        rng = self.rng
        tool = rng.choice(AGENTS[agent].tools)
        attributes = {
            **tool_attributes(tool.name),
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.id": "call_" + self._hex(24),
        }
        if rng.random() < 0.3:
            attributes["gen_ai.agent.name"] = agent
        error = None
        events = []
        failure = rng.choice(tool.failures) if rng.random() < 0.06 else None
        if failure is not None:
            error = failure.type
            attributes["error.type"] = error
            events.append(("exception", {"exception.type": error, "exception.message": failure.message}))
        return SpanSpec(f"execute_tool {tool.name}", 1, attributes, parent, self._tool_ms(tool, failure), error, events)

    def semconv_agent(self, agent: str, model: Model, conversation: str) -> SpanSpec:
        attributes = {
            **agent_attributes(agent),
            "gen_ai.agent.id": f"asst_{zlib.crc32(agent.encode()):010d}",
            "gen_ai.provider.name": model.provider,
            "gen_ai.request.model": model.name,
            "gen_ai.conversation.id": conversation,
            "server.address": PROVIDERS[model.provider].server,
        }
        system = self._system_instructions(agent)
        if system is not None:
            attributes["gen_ai.system_instructions"] = system
        return SpanSpec(f"invoke_agent {agent}", 1, attributes, None, 0.0)

    def openinference_llm(self, agent: str, model: Model, parent: int) -> SpanSpec:
        rng = self.rng
        provider, request_model, response_model = model.provider, model.name, model.response
        input_tokens, output_tokens, cached = self._usage(provider)
        question = rng.choice(USER_QUESTIONS)
        answer = "Here is what I found: " + " ".join(rng.choice(USER_QUESTIONS).split()[:12])
        system = rng.choice(AGENTS[agent].system_prompts)
        attributes = {
            "openinference.span.kind": "LLM",
            "llm.system": provider,
            "llm.provider": provider,
            "llm.model_name": response_model,
            "llm.invocation_parameters": json.dumps({"model": request_model, "temperature": 0.2, "max_tokens": 2048}),
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": system,
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": question,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": answer,
            "llm.token_count.prompt": input_tokens,
            "llm.token_count.completion": output_tokens,
            "llm.token_count.total": input_tokens + output_tokens,
            "input.mime_type": "application/json",
            "output.mime_type": "application/json",
            "input.value": json.dumps({"messages": [{"role": "user", "content": question}], "model": request_model}),
            "output.value": json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}),
        }
        if cached:
            attributes["llm.token_count.prompt_details.cache_read"] = cached
        return SpanSpec("ChatCompletion", 1, attributes, parent, self._chat_ms(model, output_tokens, None))

    def openinference_tool(self, agent: str, parent: int) -> SpanSpec:
        rng = self.rng
        tool = rng.choice(AGENTS[agent].tools)
        attributes = {
            "openinference.span.kind": "TOOL",
            "tool.name": tool.name,
            "tool.parameters": json.dumps({"query": rng.choice(USER_QUESTIONS)[:40]}),
            "input.value": json.dumps({"query": rng.choice(USER_QUESTIONS)[:40]}),
            "output.value": "ok",
        }
        error = None
        failure = rng.choice(tool.failures) if rng.random() < 0.06 else None
        if failure is not None:
            error = failure.type
            attributes["output.value"] = f"{error}: {failure.message}"
        return SpanSpec(tool.name, 1, attributes, parent, self._tool_ms(tool, failure), error)

    def openinference_agent(self, agent: str) -> SpanSpec:
        attributes = {
            "openinference.span.kind": "AGENT",
            "agent.name": agent,
            "input.value": self.rng.choice(USER_QUESTIONS),
            "input.mime_type": "text/plain",
        }
        return SpanSpec(agent, 1, attributes, None, 0.0)

    def _chat(self, agent: str, model: Model, conversation: str, openinference: bool) -> SpanSpec:
        if openinference:
            return self.openinference_llm(agent, model, 0)
        return self.semconv_chat(agent, model, 0, conversation)

    def trace(self, agent: str) -> list[SpanSpec]:
        """One run: steps of a chat call and its tool calls, maybe a final answer. A failed chat call
        (its client's retries spent) fails the run there, so a failed run lasts seconds and an answered
        one the sum of its calls; a failed tool call is an answer the model works around."""
        rng = self.rng
        conversation = self.conversations.next(agent).conversation_id
        model = rng.choice(PRICED_MODELS)
        openinference = AGENTS[agent].dialect == OPENINFERENCE
        root = self.openinference_agent(agent) if openinference else self.semconv_agent(agent, model, conversation)
        spans = [root]
        chat = None
        for _ in range(rng.randint(2, 6)):
            call_model = model if rng.random() < 0.8 else rng.choice(PRICED_MODELS)
            chat = self._chat(agent, call_model, conversation, openinference)
            spans.append(chat)
            if chat.error is not None:
                break
            for _ in range(rng.choice((0, 1, 1, 2))):
                spans.append(self.openinference_tool(agent, 0) if openinference else self.semconv_tool(agent, 0))
        else:
            if rng.random() < 0.5:
                # a final answer after the last tool results
                chat = self._chat(agent, model, conversation, openinference)
                spans.append(chat)
        if chat is not None and chat.error is not None:
            root.error = chat.error
            root.attributes["error.type"] = root.error
        # Calls follow one another with the agent's own work between them.
        clock = rng.uniform(*THINK_SECONDS) * 1000
        for span in spans[1:]:
            span.offset_ms = clock
            clock += span.duration_ms + rng.uniform(*THINK_SECONDS) * 1000
        root.duration_ms = clock
        return spans


def _resource_attributes(service: str, instance: int, openinference: bool) -> dict:
    attributes = {
        "service.name": service,
        "service.version": f"1.{instance % 7}.{instance % 3}",
        "service.instance.id": str(uuid.UUID(int=zlib.crc32(f"{service}/{instance}".encode()) << 64 | instance)),
        "deployment.environment.name": "production",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": "1.38.0",
        "host.name": f"{service}-{instance:02d}-7f9c4d8b6-x2k4p",
        "host.arch": "amd64",
        "os.type": "linux",
        "process.pid": 1 + instance,
        "process.runtime.name": "cpython",
        "process.runtime.version": "3.12.7",
        "k8s.namespace.name": "agents",
        "k8s.pod.name": f"{service}-{instance:02d}-7f9c4d8b6-x2k4p",
        "cloud.provider": "aws",
        "cloud.region": "eu-west-1",
    }
    if openinference:
        attributes["openinference.project.name"] = service
    return attributes


SCOPES = {
    False: ("opentelemetry.instrumentation.openai_v2", "2.1b0"),
    True: ("openinference.instrumentation.openai", "0.1.30"),
}


def build_payloads(count: int, spans_per_request: int, seed: int, marker: bytes) -> list[tuple[bytes, int]]:
    """`count` serialized ExportTraceServiceRequests of exactly `spans_per_request` spans each."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    rng = random.Random(seed)
    factory = TraceFactory(rng)
    agents = list(AGENTS)
    base_time = 1_760_000_000 * NS
    payloads = []
    for _ in range(count):
        request = ExportTraceServiceRequest()
        resources = {}
        produced = 0
        trace_index = 0
        while produced < spans_per_request:
            agent = rng.choice(agents)
            service = AGENTS[agent].service
            openinference = AGENTS[agent].dialect == OPENINFERENCE
            instance = rng.randrange(3)
            key = (service, instance)
            if key not in resources:
                resource_spans = request.resource_spans.add()
                _set_attributes(
                    resource_spans.resource.attributes, _resource_attributes(service, instance, openinference)
                )
                resource_spans.schema_url = "https://opentelemetry.io/schemas/1.37.0"
                scope_spans = resource_spans.scope_spans.add()
                scope_spans.scope.name, scope_spans.scope.version = SCOPES[openinference]
                resources[key] = scope_spans
            scope_spans = resources[key]
            specs = factory.trace(agent)[: spans_per_request - produced]
            trace_id = marker + struct.pack(">Q", trace_index + 1)
            trace_index += 1
            span_ids = [(rng.getrandbits(64) | 1).to_bytes(8, "big") for _ in specs]
            start = base_time + rng.randrange(3600 * NS)
            for index, spec in enumerate(specs):
                span = scope_spans.spans.add()
                span.trace_id = trace_id
                span.span_id = span_ids[index]
                if spec.parent is not None:
                    span.parent_span_id = span_ids[spec.parent]
                span.name = spec.name
                span.kind = spec.kind
                span.start_time_unix_nano = start + int(spec.offset_ms * 1e6)
                span.end_time_unix_nano = span.start_time_unix_nano + int(spec.duration_ms * 1e6)
                _set_attributes(span.attributes, spec.attributes)
                for event_name, event_attributes in spec.events:
                    event = span.events.add()
                    event.name = event_name
                    event.time_unix_nano = span.end_time_unix_nano
                    _set_attributes(event.attributes, event_attributes)
                if spec.error is not None:
                    span.status.code = Status.STATUS_CODE_ERROR
                    span.status.message = spec.error
            produced += len(specs)
        body = request.SerializeToString()
        if body.count(marker) != produced:
            raise RuntimeError("the trace-id marker occurs outside trace ids; pick another seed")
        payloads.append((body, produced))
    return payloads


def write_payloads(path: Path, marker: bytes, payloads: list[tuple[bytes, int]]) -> None:
    with path.open("wb") as out:
        out.write(marker)
        for body, spans in payloads:
            out.write(struct.pack("<II", len(body), spans))
            out.write(body)


def read_payloads(path: Path) -> tuple[bytes, list[tuple[bytes, int]]]:
    data = path.read_bytes()
    marker = data[:8]
    offset = 8
    payloads = []
    while offset < len(data):
        size, spans = struct.unpack_from("<II", data, offset)
        offset += 8
        payloads.append((data[offset : offset + size], spans))
        offset += size
    return marker, payloads


# -- helpers ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def scrape(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of every sample of each metric in `names` on a Prometheus text page; a name written with its
    labels (`x_bucket{le="0.05"}`) is that one series."""
    totals = dict.fromkeys(names, 0.0)
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        series, value = line.rsplit(" ", 1)
        for key in {series.split("{", 1)[0], series}:
            if key in totals:
                totals[key] += float(value)
    return totals


def pinned(core: str, command: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", core, *command] if taskset else command


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- sink process: accepts OTLP/gRPC and discards -------------------------------------------------


def run_sink(port: int, http_port: int) -> None:
    import grpc
    from aiohttp import web

    stats = {"requests": 0, "bytes": 0}

    async def export(body: bytes, context) -> bytes:
        stats["requests"] += 1
        stats["bytes"] += len(body)
        return b""

    async def http_export(request: web.Request) -> web.Response:
        body = await request.read()
        stats["requests"] += 1
        stats["bytes"] += len(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def report(body: bytes, context) -> bytes:
        return json.dumps(stats).encode()

    async def serve() -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
                ),
                grpc.method_handlers_generic_handler(
                    "bench.Sink", {"Stats": grpc.unary_unary_rpc_method_handler(report)}
                ),
            )
        )
        server.add_insecure_port(f"{LOOPBACK}:{port}")
        await server.start()
        app = web.Application(client_max_size=MAX_MESSAGE)
        app.router.add_post("/v1/traces", http_export)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, LOOPBACK, http_port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await server.stop(grace=None)
        await runner.cleanup()

    asyncio.run(serve())


# -- load process ----------------------------------------------------------------------------------


async def drive_load(args: argparse.Namespace) -> dict:
    import grpc

    marker, payloads = read_payloads(Path(args.payload_file))
    loop = asyncio.get_running_loop()
    channel = grpc.aio.insecure_channel(args.target, options=GRPC_OPTIONS)
    export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
    await asyncio.wait_for(channel.channel_ready(), 20)
    sink_stats = None
    if args.sink:
        sink_channel = grpc.aio.insecure_channel(args.sink)
        sink_call = sink_channel.unary_unary(SINK_STATS_METHOD, request_serializer=None, response_deserializer=None)

        async def sink_stats() -> dict:
            return json.loads(await sink_call(b"", timeout=10))

    metric_names = (
        "agentopz_receiver_spans_total",
        "agentopz_exporter_sent_spans_total",
        "agentopz_runs_total",
        LOOP_PROBES,
        *LOOP_PROBES_ON_TIME.values(),
    )

    async def snapshot() -> dict:
        taken = {
            "time": time.perf_counter(),
            "cpu": cpu_seconds(args.pid) if args.pid else None,
            "own_cpu": cpu_seconds(os.getpid()),
        }
        if args.metrics_url:
            taken["metrics"] = await loop.run_in_executor(None, scrape, args.metrics_url, metric_names)
        if sink_stats is not None:
            taken["sink"] = await sink_stats()
        taken["time"] = (taken["time"] + time.perf_counter()) / 2
        return taken

    measuring = False
    stopping = False
    counter = 0
    acked = rejected = sent_requests = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    prefix_rng = random.Random(args.seed)
    paced_from = time.perf_counter()
    # With --rate, request i is due at i * spans / rate: an open loop, and latency counts from when a
    # request was due, so time spent waiting for a free slot counts too.
    interval = payloads[0][1] / args.rate if args.rate else 0.0

    async def worker() -> None:
        nonlocal counter, acked, rejected, sent_requests
        while not stopping:
            index = counter
            counter += 1
            body, spans = payloads[index % len(payloads)]
            prefix = prefix_rng.getrandbits(64).to_bytes(8, "big")
            if prefix == bytes(8):
                prefix = b"\x01" * 8
            body = body.replace(marker, prefix)
            began = time.perf_counter()
            if interval:
                due = paced_from + index * interval
                if due > began:
                    await asyncio.sleep(due - began)
                began = due
            try:
                response = await export(body, timeout=60)
            except grpc.aio.AioRpcError as error:
                if measuring:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1
                await asyncio.sleep(0.05)
                continue
            elapsed = time.perf_counter() - began
            if measuring:
                partial = 0
                if response:
                    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

                    partial = ExportTraceServiceResponse.FromString(response).partial_success.rejected_spans
                acked += spans - partial
                rejected += partial
                sent_requests += 1
                latencies.append(elapsed)

    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    start = await snapshot()
    measuring = True
    await asyncio.sleep(args.duration)
    measuring = False
    end = await snapshot()
    stopping = True
    await asyncio.gather(*workers, return_exceptions=True)
    await channel.close()
    window = end["time"] - start["time"]
    result = {
        "window_seconds": window,
        "requests": sent_requests,
        "acked_spans": acked,
        "rejected_spans": rejected,
        "acked_spans_per_second": acked / window,
        "latency_p50_ms": (percentile(latencies, 0.50) or 0) * 1000,
        "latency_p99_ms": (percentile(latencies, 0.99) or 0) * 1000,
        "latency_max_ms": (max(latencies) if latencies else 0) * 1000,
        "errors": errors,
        "payload_bytes": sum(len(body) for body, _ in payloads) / len(payloads),
    }
    if start["cpu"] is not None and end["cpu"] is not None:
        result["cpu_utilization"] = (end["cpu"] - start["cpu"]) / window
        if end["cpu"] > start["cpu"]:
            result["spans_per_cpu_second"] = acked / (end["cpu"] - start["cpu"])
    result["load_cpu_utilization"] = (end["own_cpu"] - start["own_cpu"]) / window
    if "metrics" in start:
        for name in metric_names:
            result[name + "_per_second"] = (end["metrics"][name] - start["metrics"][name]) / window
        probes = end["metrics"][LOOP_PROBES] - start["metrics"][LOOP_PROBES]
        if probes:
            result["loop_probes_late"] = {
                bound: 1 - (end["metrics"][series] - start["metrics"][series]) / probes
                for bound, series in LOOP_PROBES_ON_TIME.items()
            }
    if "sink" in start:
        result["sink_bytes_per_second"] = (end["sink"]["bytes"] - start["sink"]["bytes"]) / window
        result["sink_requests"] = end["sink"]["requests"] - start["sink"]["requests"]
    return result


# -- orchestration ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    load: dict
    peak_rss_kib: int | None = None
    rss_kib: int | None = None
    threads: int | None = None
    paced_at: float | None = None  # with --rate-fraction: the rate offered, a fraction of the one sustained


def service_config(
    grpc_port: int,
    http_port: int,
    admin_port: int,
    forward: dict | None,
    runs: bool,
    storage: Path | None = None,
    checkpoint_seconds: float | None = None,
) -> str:
    """With `storage`, a storage extension there keeps the forwarding exporter's sending queue, and with
    `checkpoint_seconds` also the runs processor's open runs, saved that often."""
    exporters: dict = {"prometheus": {}}
    if forward is not None:
        exporters["otlp/sink"] = {**forward, **({"sending_queue": {"storage": "storage"}} if storage else {})}
    runs_config = (
        {"checkpoint": {"storage": "storage", "interval_seconds": checkpoint_seconds}} if checkpoint_seconds else {}
    )
    config = {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"{LOOPBACK}:{grpc_port}"},
                    "http": {"endpoint": f"{LOOPBACK}:{http_port}"},
                }
            }
        },
        "processors": {"normalize": {}, "cost": {}, "prompt_version": {}, **({"runs": runs_config} if runs else {})},
        "exporters": exporters,
        "extensions": {"storage": {"path": str(storage)}} if storage else {},
        "service": {
            "admin": {"endpoint": f"{LOOPBACK}:{admin_port}"},
            "log_level": "WARNING",
            "extensions": ["storage"] if storage else [],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["normalize", "cost", "prompt_version", *(["runs"] if runs else [])],
                    "exporters": list(exporters),
                }
            },
        },
    }
    return json.dumps(config, indent=2)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.processes: list[Launched] = []
        self.payload_file = workdir / "payloads.bin"
        self.sink_port = self.sink_http_port = 0  # picked when the sink starts

    def launch(
        self, name: str, command: Callable[[tuple[int, ...]], Command], log_name: str, ports: int, timeout: float
    ) -> Launched:
        launched = launch(name, command, self.workdir / log_name, ports=ports, timeout=timeout)
        self.processes.append(launched)
        return launched

    def log_tail(self, log_name: str, lines: int = 30) -> str:
        path = self.workdir / log_name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def cleanup(self) -> None:
        for launched in reversed(self.processes):
            launched.stop(timeout=10)

    def run_load(self, target_port: int, pid: int, metrics_url: str | None, rate: float | None) -> dict:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role",
            "load",
            "--target",
            f"{LOOPBACK}:{target_port}",
            "--payload-file",
            str(self.payload_file),
            "--duration",
            str(self.args.duration),
            "--warmup",
            str(self.args.warmup),
            "--concurrency",
            str(self.args.concurrency),
            "--pid",
            str(pid),
            "--sink",
            f"{LOOPBACK}:{self.sink_port}",
            "--seed",
            str(self.args.seed),
        ]
        if rate:
            command += ["--rate", str(rate)]
        if metrics_url:
            command += ["--metrics-url", metrics_url]
        limit = self.args.warmup + self.args.duration + 120
        completed = subprocess.run(pinned(LOAD_CORE, command), capture_output=True, text=True, timeout=limit)
        if completed.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{completed.stderr[-3000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])

    def start_sink(self) -> None:
        def command(ports: tuple[int, ...]) -> Command:
            port, http_port = ports
            argv = [sys.executable, str(Path(__file__).resolve()), "--role", "sink", "--port", str(port)]
            return Command(pinned(LOAD_CORE, [*argv, "--http-port", str(http_port)]), listening(port, http_port))

        self.sink_port, self.sink_http_port = self.launch("sink", command, "sink.log", ports=2, timeout=20).ports

    def run_service(self, rate: float | None) -> Outcome:
        config = self.workdir / "agentopz.yaml"
        forward = None
        if self.args.forward == "grpc":
            forward = {"endpoint": f"http://{LOOPBACK}:{self.sink_port}", "protocol": "grpc"}
        elif self.args.forward == "http":
            forward = {"endpoint": f"http://{LOOPBACK}:{self.sink_http_port}/v1/traces", "protocol": "http/protobuf"}
        storage = self.workdir / "agentopz.sqlite" if self.args.persistent_queue or self.args.checkpoint else None
        if storage is not None:  # each run starts empty: no queue or open runs left by the one before
            for leftover in (
                storage,
                storage.with_name(storage.name + "-wal"),
                storage.with_name(storage.name + "-shm"),
            ):
                leftover.unlink(missing_ok=True)
        source = str(Path(self.args.source).resolve())
        env = {"PYTHONPATH": os.pathsep.join(filter(None, (source, os.environ.get("PYTHONPATH"))))}

        def command(ports: tuple[int, ...]) -> Command:
            grpc_port, http_port, admin_port = ports
            config.write_text(
                service_config(grpc_port, http_port, admin_port, forward, self.args.runs, storage, self.args.checkpoint)
            )
            argv = [self.args.python, "-m", "agentopz_otel", "run", "--config", str(config)]
            ready = http_ok(f"http://{LOOPBACK}:{admin_port}/readyz")
            return Command(pinned(TARGET_CORE, argv), ready, env=env, cwd=self.workdir)

        launched = self.launch("agentopz-otel", command, "agentopz.log", ports=3, timeout=60)
        process = launched.process
        grpc_port, _, admin_port = launched.ports
        admin = f"http://{LOOPBACK}:{admin_port}"
        profiler = self.start_profiler(process.pid)
        try:
            load = self.run_load(grpc_port, process.pid, admin + "/metrics", rate)
        except Exception:
            print(self.log_tail("agentopz.log"), file=sys.stderr)
            raise
        finally:
            if profiler is not None:
                self.finish_profiler(profiler)
        outcome = Outcome(
            "agentopz-otel"
            + (" +runs" if self.args.runs else "")
            + (f" +forward/{self.args.forward}" if self.args.forward else "")
            + (" +persistent queue" if self.args.persistent_queue else "")
            + (f" +checkpoint/{self.args.checkpoint:g}s" if self.args.checkpoint else ""),
            load,
            proc_status_kib(process.pid, "VmHWM"),
            proc_status_kib(process.pid, "VmRSS"),
            proc_status_kib(process.pid, "Threads"),
        )
        launched.stop()
        if self.args.forward and not load.get("agentopz_exporter_sent_spans_total_per_second"):
            problems = [line for line in self.log_tail("agentopz.log", 400).splitlines() if "Error" in line]
            print(
                "  warning: the service forwarded nothing to the sink; last errors in its log:\n    "
                + "\n    ".join(problems[-3:] or ["(none)"])
            )
        return outcome

    def start_profiler(self, pid: int) -> subprocess.Popen | None:
        if not self.args.profile:
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        output = Path(self.args.profile).resolve()
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(output.suffix, "raw")
        command = [py_spy, "record", "--pid", str(pid), "--output", str(output), "--format", fmt, "--rate", "200"]
        command += ["--duration", str(int(self.args.warmup + self.args.duration)), "--nonblocking"]
        return subprocess.Popen(pinned(LOAD_CORE, command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish_profiler(self, profiler: subprocess.Popen) -> None:
        try:
            _, stderr = profiler.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            _, stderr = profiler.communicate()
        if profiler.returncode != 0:
            print(f"py-spy failed: {stderr.decode(errors='replace')[-2000:]}", file=sys.stderr)
        else:
            print(f"profile written to {self.args.profile}")

    def run_rotel(self) -> Outcome | None:
        try:
            import rotel
        except ImportError:
            print("rotel is not installed: skipping the reference run", file=sys.stderr)
            return None
        binary = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")

        def command(ports: tuple[int, ...]) -> Command:
            target = f"http://{LOOPBACK}:{self.sink_port}"
            max_message = ("--otlp-grpc-max-recv-msg-size-mib", "64")
            spec = rotel_command(binary, ports, target, "grpc", "none", self.workdir / "rotel", *max_message)
            return replace(spec, argv=pinned(TARGET_CORE, spec.argv))

        launched = self.launch("rotel", command, "rotel.log", ports=2, timeout=30)
        process = launched.process
        load = self.run_load(launched.ports[0], process.pid, None, self.args.rate)
        outcome = Outcome(
            "rotel (pass-through)",
            load,
            proc_status_kib(process.pid, "VmHWM"),
            proc_status_kib(process.pid, "VmRSS"),
            proc_status_kib(process.pid, "Threads"),
        )
        launched.stop()
        return outcome

    def run(self) -> list[Outcome]:
        args = self.args
        marker = random.Random(args.seed).getrandbits(64).to_bytes(8, "big")
        began = time.perf_counter()
        payloads = build_payloads(args.payloads, args.spans_per_request, args.seed, marker)
        write_payloads(self.payload_file, marker, payloads)
        mean_size = sum(len(body) for body, _ in payloads) / len(payloads)
        print(
            f"built {len(payloads)} requests x {args.spans_per_request} spans "
            f"(mean {mean_size / 1024:.0f} KiB, {mean_size / args.spans_per_request:.0f} B/span) "
            f"in {time.perf_counter() - began:.1f}s; fresh trace ids per request"
        )
        print(
            f"load: {args.concurrency} in flight, {args.warmup:g}s warm-up + {args.duration:g}s measured; "
            f"target on core {TARGET_CORE}, load generator and sink on core {LOAD_CORE}"
        )
        self.start_sink()
        outcomes = []
        # Rounds alternate the two targets, so a change in the machine's speed reaches both alike.
        for round_number in range(1, args.rounds + 1):
            suffix = f" (round {round_number} of {args.rounds})" if args.rounds > 1 else ""
            if not args.skip_service:
                print(
                    "\n== agentopz-otel (normalize, cost, prompt_version"
                    + (", runs" if args.runs else "")
                    + ", prometheus"
                    + (f", otlp/{args.forward}" if args.forward else "")
                    + ")"
                    + suffix
                )
                outcome = self.run_service(args.rate)
                print_outcome(outcome)
                outcomes.append(outcome)
                if args.rate_fraction:
                    # Latency below saturation, against what the service sustained a minute before.
                    rate = args.rate_fraction * outcome.load["acked_spans_per_second"]
                    print(f"\n== the same at {args.rate_fraction:.0%} of that: {rate:,.0f} spans/s offered{suffix}")
                    paced = replace(self.run_service(rate), paced_at=rate)
                    print_outcome(paced)
                    outcomes.append(paced)
            if not args.skip_rotel:
                print("\n== rotel (otlp receiver -> otlp exporter, no processing)" + suffix)
                outcome = self.run_rotel()
                if outcome is not None:
                    print_outcome(outcome)
                    outcomes.append(outcome)
        return outcomes


def _fmt(value, spec: str) -> str:
    if value is None:
        width = spec.lstrip("<>^").split(",")[0].split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(value, spec)


def print_outcome(outcome: Outcome) -> None:
    load = outcome.load
    print(f"  sustained (acked)      {load['acked_spans_per_second']:>12,.0f} spans/s  ({load['requests']} requests)")
    if "agentopz_receiver_spans_total_per_second" in load:
        print(f"  sustained (/metrics)   {load['agentopz_receiver_spans_total_per_second']:>12,.0f} spans/s")
    if load.get("agentopz_exporter_sent_spans_total_per_second"):
        print(f"  forwarded (/metrics)   {load['agentopz_exporter_sent_spans_total_per_second']:>12,.0f} spans/s")
    if load.get("agentopz_runs_total_per_second"):
        print(f"  runs finished          {load['agentopz_runs_total_per_second']:>12,.0f} runs/s")
    if load.get("sink_bytes_per_second"):
        print(f"  sink received          {load['sink_bytes_per_second'] / 2**20:>12,.1f} MiB/s")
    print(f"  latency p50 / p99      {load['latency_p50_ms']:>9.1f} / {load['latency_p99_ms']:.1f} ms")
    if "loop_probes_late" in load:
        late = load["loop_probes_late"]
        shares = ", ".join(f"{share:.2%} over {bound * 1000:.0f} ms" for bound, share in late.items())
        print(f"  event loop probes late {shares}")
    print(f"  cpu of target core     {_fmt(load.get('cpu_utilization'), '>12.0%')}")
    print(f"  spans per CPU-second   {_fmt(load.get('spans_per_cpu_second'), '>12,.0f')}  (target, all threads)")
    print(f"  cpu of load generator  {_fmt(load.get('load_cpu_utilization'), '>12.0%')}")
    peak = None if outcome.peak_rss_kib is None else outcome.peak_rss_kib / 1024
    print(f"  peak RSS (VmHWM)       {_fmt(peak, '>12.1f')} MiB  (threads: {outcome.threads})")
    if load["errors"] or load["rejected_spans"]:
        print(f"  errors                 {load['errors']}  rejected spans: {load['rejected_spans']}")


def print_ratios(title: str, pairs: list[tuple[Outcome, Outcome]], figure: str) -> None:
    ratios = [s.load[figure] / r.load[figure] for s, r in pairs if s.load.get(figure) and r.load.get(figure)]
    if len(ratios) == 1:
        print(f"{title}: {ratios[0]:.3f}")
    elif ratios:
        listed = ", ".join(f"{ratio:.3f}" for ratio in ratios)
        print(f"{title}: median {statistics.median(ratios):.3f} of {listed}")


def print_summary(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    header = (
        f"{'target':<24} {'spans/s acked':>14} {'spans/s metric':>15} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu':>5} {'peak RSS MiB':>13} {'errors':>7}"
    )
    print("\n" + header)
    print("-" * len(header))
    for outcome in outcomes:
        load = outcome.load
        peak = None if outcome.peak_rss_kib is None else outcome.peak_rss_kib / 1024
        errors = sum(load["errors"].values()) + load["rejected_spans"]
        print(
            f"{outcome.name:<24} {load['acked_spans_per_second']:>14,.0f} "
            f"{_fmt(load.get('agentopz_receiver_spans_total_per_second'), '>15,.0f')} "
            f"{load['latency_p50_ms']:>8.1f} {load['latency_p99_ms']:>8.1f} "
            f"{_fmt(load.get('cpu_utilization'), '>5.0%')} {_fmt(peak, '>13.1f')} {errors:>7}"
        )
    services = [o for o in outcomes if o.name.startswith("agentopz") and o.paced_at is None]
    references = [o for o in outcomes if o.name.startswith("rotel")]
    pairs = list(zip(services, references, strict=False))  # a failed rotel run has no pair
    print()
    print_ratios("service / rotel throughput ratio", pairs, "acked_spans_per_second")
    print_ratios("service / rotel spans per CPU-second", pairs, "spans_per_cpu_second")
    paced = [o.load["latency_p99_ms"] for o in outcomes if o.paced_at is not None]
    if paced:
        listed = ", ".join(f"{p99:.1f}" for p99 in paced)
        median = statistics.median(paced)
        print(f"p99 at {args.rate_fraction:.0%} of the rate sustained just before: median {median:.1f} ms of {listed}")
    if any((reference.load.get("cpu_utilization") or 0) < 0.9 for reference in references):
        print(
            "note: rotel's core was not saturated, so its figure is bounded by the load generator "
            "(a lower bound on rotel's capacity)"
        )
    print(
        f"({args.duration:g}s measured per target, {args.concurrency} requests in flight, "
        f"{args.spans_per_request} spans per request)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per target (default 20)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per target (default 5, quick 2)")
    parser.add_argument("--quick", action="store_true", help="5 s measured, 2 s warm-up")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="offer this many spans/s on a fixed schedule (an open loop; latency counts from when each "
        "request was due) instead of as fast as the target answers",
    )
    parser.add_argument(
        "--rate-fraction",
        type=float,
        default=None,
        help="after each service run as fast as it answers, run it again offered this fraction of the rate it "
        "sustained (e.g. 0.8: p99 below saturation, measured in the same minutes as the rate it is a share of)",
    )
    parser.add_argument(
        "--forward",
        nargs="?",
        const="grpc",
        choices=("grpc", "http"),
        help="the service also forwards the enriched spans to the discard sink over OTLP (default grpc)",
    )
    parser.add_argument(
        "--persistent-queue",
        action="store_true",
        help="with --forward: the exporter's sending queue is kept in a storage extension (SQLite)",
    )
    parser.add_argument(
        "--runs", action="store_true", help="also assemble runs (runs processor: outcomes, run metrics, in flight)"
    )
    parser.add_argument(
        "--checkpoint",
        type=float,
        metavar="SECONDS",
        help="with --runs: open runs are saved in a storage extension (SQLite) this often, as the built-in "
        "default does every 30 s (runs.checkpoint)",
    )
    parser.add_argument("--payloads", type=int, default=32, help="distinct pre-built requests (default 32)")
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the targets this many times (default 1)")
    parser.add_argument("--source", default=str(REPO_ROOT), help="checkout whose agentopz_otel package is run")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the service")
    parser.add_argument("--skip-rotel", action="store_true", help="benchmark only the service")
    parser.add_argument("--skip-service", action="store_true", help="benchmark only rotel")
    parser.add_argument("--profile", metavar="FILE", help="py-spy record the service (.svg, .json or raw text)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep-logs", metavar="DIR", help="write configs and process logs to DIR and keep them")
    parser.add_argument("--role", choices=("main", "load", "sink"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--payload-file", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rate_fraction is not None and (args.rate or not 0 < args.rate_fraction < 1):
        parser.error("--rate-fraction takes a fraction between 0 and 1, and not with --rate")
    if args.checkpoint is not None and (not args.runs or args.checkpoint <= 0):
        parser.error("--checkpoint takes a positive number of seconds, with --runs")
    if args.quick:
        args.duration = 5.0
    if args.warmup is None:
        args.warmup = 2.0 if args.quick else 5.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "sink":
        run_sink(args.port, args.http_port)
        return 0
    if args.role == "load":
        print(json.dumps(asyncio.run(drive_load(args))))
        return 0
    with tempfile.TemporaryDirectory(prefix="agentopz-bench-") as workdir:
        bench = Bench(args, Path(args.keep_logs or workdir))
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            outcomes = bench.run()
        finally:
            bench.cleanup()
            signal.signal(signal.SIGTERM, previous)
    print_summary(outcomes, args)
    if args.json:
        Path(args.json).write_text(json.dumps([outcome.__dict__ for outcome in outcomes], indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
