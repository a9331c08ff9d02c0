"""Shared pieces of the scrape and soak benchmarks: the service as a process on loopback, good and
hostile OTLP traffic, and a gRPC loader that counts what was acknowledged and how long it took."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agentopz_otel.fleet import chat_attributes, usage_attributes
from bench import (
    EXPORT_METHOD,
    LOOPBACK,
    REPO_ROOT,
    Command,
    _set_attributes,
    http_ok,
    launch,
    percentile,
    proc_status_kib,
)

NS = 1_000_000_000
START = 1_760_000_000 * NS


class ServiceProcess:
    """`python -m agentopz_otel run` with `config` (ports filled in), its log in a temporary directory."""

    def __init__(self, config: dict, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="agentopz-bench-"))
        path = self.workdir / "config.json"

        def command(ports: tuple[int, ...]) -> Command:
            grpc_port, http_port, admin_port = ports
            config["receivers"]["otlp"]["protocols"] = {
                "grpc": {"endpoint": f"{LOOPBACK}:{grpc_port}"},
                "http": {"endpoint": f"{LOOPBACK}:{http_port}"},
            }
            config["service"]["admin"] = {"endpoint": f"{LOOPBACK}:{admin_port}"}
            path.write_text(json.dumps(config, indent=2))
            argv = [sys.executable, "-m", "agentopz_otel", "run", "--config", str(path)]
            return Command(argv, http_ok(f"http://{LOOPBACK}:{admin_port}/readyz"), cwd=REPO_ROOT)

        self.log_path = self.workdir / "service.log"
        self.launched = launch("agentopz-otel", command, self.log_path, ports=3, timeout=30)
        self.process = self.launched.process
        self.grpc_port, self.http_port, self.admin_port = self.launched.ports

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}/metrics"

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def rss_mib(self) -> float:
        return (proc_status_kib(self.process.pid, "VmRSS") or 0) / 1024

    def peak_rss_mib(self) -> float:
        return (proc_status_kib(self.process.pid, "VmHWM") or 0) / 1024

    def scrape(self, accept: str = "") -> tuple[bytes, float]:
        """The exposition and the seconds it took."""
        request = urllib.request.Request(self.metrics_url, headers={"Accept": accept} if accept else {})
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return body, time.perf_counter() - began

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        wanted = set(labels.items())
        total = 0.0
        for family in text_string_to_metric_families(self.scrape()[0].decode()):
            for sample in family.samples:
                if sample.name == name and wanted <= set(sample.labels.items()):
                    total += sample.value
        return total

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> None:
        self.launched.stop(timeout=30)


def service_config(runs: dict | None = None, downstream: str | None = None, service: dict | None = None) -> dict:
    """normalize, cost, prompt_version, runs, prometheus, and an OTLP/gRPC exporter to `downstream`."""
    exporters: dict = {"prometheus": {}}
    if downstream:
        exporters["otlp/downstream"] = {"endpoint": downstream, "protocol": "grpc"}
    processors = {"normalize": {}, "cost": {}, "prompt_version": {}, "runs": runs or {}}
    return {
        "receivers": {"otlp": {}},
        "processors": processors,
        "exporters": exporters,
        "service": {
            "log_level": "WARNING",
            **(service or {}),
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": list(processors), "exporters": list(exporters)}
            },
        },
    }


def _request(service: str, spans: list[dict]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _set_attributes(resource_spans.resource.attributes, {"service.name": service})
    scope_spans = resource_spans.scope_spans.add()
    for spec in spans:
        span = scope_spans.spans.add(
            trace_id=spec["trace_id"],
            span_id=spec["span_id"],
            parent_span_id=spec.get("parent", b""),
            name=spec["name"],
            start_time_unix_nano=START,
            end_time_unix_nano=START + NS,
        )
        attributes = spec["attributes"]
        if isinstance(attributes, dict):
            _set_attributes(span.attributes, attributes)
        else:  # KeyValues built once for many spans
            span.attributes.extend(attributes)
    return request


def llm_attributes(provider: str, model: str, agent: str) -> dict:
    return {**chat_attributes(model, provider), "gen_ai.agent.name": agent, **usage_attributes(1200, 300)}


def padded(prefix: str, index: int, length: int) -> str:
    """A distinct name of exactly `length` characters."""
    stem = f"{prefix}-{index}-"
    return stem + "x" * (length - len(stem))


def combination_requests(
    count: int, length: int, per_request: int = 100, first: int = 0, open_runs: bool = True
) -> Iterator[bytes]:
    """`count` LLM calls, each with its own (agent, model) pair of names `length` characters long, in
    traces whose root never arrives (open runs; their call metrics wait for the run's agent), or each
    call the root of its trace."""
    for start in range(first, first + count, per_request):
        spans = [
            {
                "trace_id": index.to_bytes(16, "big"),
                "span_id": (index + 1).to_bytes(8, "big"),
                "parent": (index + 2**40).to_bytes(8, "big") if open_runs else b"",
                "name": "chat",
                "attributes": llm_attributes("openai", padded("model", index, length), padded("agent", index, length)),
            }
            for index in range(start, min(start + per_request, first + count))
        ]
        yield _request(padded("service", start // per_request % 1000, length), spans).SerializeToString()


def model_name_requests(count: int, length: int, per_request: int = 500, first: int = 0) -> Iterator[bytes]:
    """`count` LLM calls of one agent, each naming a model nobody prices, `length` characters long."""
    for start in range(first, first + count, per_request):
        spans = [
            {
                "trace_id": (2**100 + index).to_bytes(16, "big"),
                "span_id": (index + 1).to_bytes(8, "big"),
                "name": "chat",
                "attributes": llm_attributes("openai", padded("unknown-model", index, length), "hostile"),
            }
            for index in range(start, min(start + per_request, first + count))
        ]
        yield _request("hostile", spans).SerializeToString()


def open_run_requests(count: int, calls: int = 4, per_request: int = 100, first: int = 0) -> Iterator[bytes]:
    """`count` runs whose agent span never arrives, each with `calls` LLM calls and long prompts."""
    prompt = json.dumps([{"type": "text", "content": "You are a helpful assistant. " * 40}])
    by_agent = []
    for agent in range(50):
        holder = ExportTraceServiceRequest().resource_spans.add().resource.attributes
        _set_attributes(
            holder, {**llm_attributes("openai", "gpt-4o-mini", f"agent-{agent}"), "gen_ai.system_instructions": prompt}
        )
        by_agent.append(list(holder))
    for start in range(first, first + count, per_request):
        spans = []
        for index in range(start, min(start + per_request, first + count)):
            trace_id = (2**110 + index).to_bytes(16, "big")
            root = (index * 64 + 1).to_bytes(8, "big")
            attributes = by_agent[index % 50]
            for call in range(calls):
                spans.append(
                    {
                        "trace_id": trace_id,
                        "span_id": (index * 64 + 2 + call).to_bytes(8, "big"),
                        "parent": root,
                        "name": "chat",
                        "attributes": attributes,
                    }
                )
        yield _request(f"svc-{start % 7}", spans).SerializeToString()


def system_prompt_requests(count: int, chars: int, per_request: int = 20, first: int = 0) -> Iterator[bytes]:
    """`count` LLM calls, each with its own system prompt of `chars` characters (one prompt version each)."""
    for start in range(first, first + count, per_request):
        spans = []
        for index in range(start, min(start + per_request, first + count)):
            attributes = llm_attributes("openai", "gpt-4o-mini", "prompted")
            instructions = [{"type": "text", "content": padded("p", index, chars)}]
            attributes["gen_ai.system_instructions"] = json.dumps(instructions)
            spans.append(
                {
                    "trace_id": (2**120 + index).to_bytes(16, "big"),
                    "span_id": (index + 1).to_bytes(8, "big"),
                    "name": "chat",
                    "attributes": attributes,
                }
            )
        yield _request("prompted", spans).SerializeToString()


def invalid_attribute_requests(count: int, per_request: int = 100, first: int = 0) -> Iterator[bytes]:
    """`count` LLM calls whose token counts are unusable (text, negative, absurdly large)."""
    bad_values = ("many", -5, 10**15, "x" * 10_000)
    for start in range(first, first + count, per_request):
        spans = []
        for index in range(start, min(start + per_request, first + count)):
            attributes = llm_attributes("openai", "gpt-4o-mini", "sloppy")
            attributes["gen_ai.usage.input_tokens"] = bad_values[index % len(bad_values)]
            spans.append(
                {
                    "trace_id": (2**124 + index).to_bytes(16, "big"),
                    "span_id": (index + 1).to_bytes(8, "big"),
                    "name": "chat",
                    "attributes": attributes,
                }
            )
        yield _request("sloppy", spans).SerializeToString()


def huge_name_requests(count: int, chars: int = 2**20) -> Iterator[bytes]:
    """`count` requests of one LLM call naming the same model of `chars` characters."""
    model = "m" * chars
    for index in range(count):
        spans = [
            {
                "trace_id": (2**125 + index).to_bytes(16, "big"),
                "span_id": (index + 1).to_bytes(8, "big"),
                "name": "chat",
                "attributes": llm_attributes("openai", model, "huge"),
            }
        ]
        yield _request("huge", spans).SerializeToString()


@dataclass
class LoadStats:
    acked: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    began: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict:
        elapsed = time.perf_counter() - self.began
        return {
            "spans_per_second": self.acked / elapsed if elapsed else 0.0,
            "acked_spans": self.acked,
            "failed_requests": self.failed,
            "latency_p50_ms": (percentile(self.latencies, 0.5) or 0) * 1000,
            "latency_max_ms": (max(self.latencies) if self.latencies else 0) * 1000,
        }


class Loader:
    """Threads replaying `payloads` (serialized requests, span count) over gRPC until stopped; trace
    ids are made unique per request by replacing the 8-byte `marker`."""

    def __init__(self, target: str, payloads: list[tuple[bytes, int]], marker: bytes, threads: int = 2) -> None:
        self._channel = grpc.insecure_channel(target)
        self._export = self._channel.unary_unary(EXPORT_METHOD)
        self._payloads = payloads
        self._marker = marker
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counter = 0
        self.stats = LoadStats()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def window(self) -> LoadStats:
        """Start a new measuring window; returns the one that ends."""
        with self._lock:
            ended, self.stats = self.stats, LoadStats()
        return ended

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._counter += 1
                index = self._counter
            body, spans = self._payloads[index % len(self._payloads)]
            body = body.replace(self._marker, index.to_bytes(4, "big") + os.getpid().to_bytes(4, "big"))
            began = time.perf_counter()
            try:
                response = ExportTraceServiceResponse.FromString(self._export(body, timeout=30))
            except grpc.RpcError:
                with self._lock:
                    self.stats.failed += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.stats.acked += spans - response.partial_success.rejected_spans
                self.stats.latencies.append(time.perf_counter() - began)

    def __enter__(self) -> Loader:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)
        self._channel.close()


def send_all(target: str, bodies: Iterator[bytes]) -> int:
    """Send every request in order; returns how many were refused."""
    with grpc.insecure_channel(target) as channel:
        export = channel.unary_unary(EXPORT_METHOD)
        refused = 0
        for body in bodies:
            try:
                export(body, timeout=60)
            except grpc.RpcError:
                refused += 1
        return refused
