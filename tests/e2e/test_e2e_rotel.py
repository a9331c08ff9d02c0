"""The rotel OpenTelemetry collector (from PyPI) in front of the service: agent SDK -> rotel -> service."""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price
from support.otlp_sinks import HttpSink, attribute_value, config_body
from support.processes import Command, Launched, launch
from support.rotel import rotel_command
from support.sdk_agent import emit_chat, emit_tool, tracer


def rotel_binary() -> str:
    """Path of the rotel-agent binary shipped in the rotel wheel; skips (fails under CI) when it cannot run."""
    problem = None
    try:
        import rotel

        path = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        if result.returncode != 0:
            problem = f"{path} --version exited with {result.returncode}: {result.stderr.strip()}"
    except ImportError:
        problem = "the rotel package is not installed"
    except OSError as error:
        problem = f"rotel-agent cannot run here: {error}"
    if problem is not None:
        message = f"{problem}: run scripts/install --test (pip install rotel) on a platform rotel ships a binary for"
        if os.environ.get("AGENTOPZ_REQUIRE_ALL"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class Rotel:
    def __init__(self, launched: Launched) -> None:
        self.launched = launched
        self.grpc_port, self.http_port = launched.ports

    def endpoint(self, transport: str) -> str:
        return f"localhost:{self.grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{self.http_port}"


@pytest.fixture
def start_rotel(tmp_path: Path) -> Iterator:
    binary = rotel_binary()
    started: list[Launched] = []

    def start(target_port: int, protocol: str, compression: str = "gzip") -> Rotel:
        """rotel receiving OTLP on free ports and exporting to 127.0.0.1:target_port over `protocol`."""
        index = len(started)

        def command(ports: tuple[int, ...]) -> Command:
            target = f"http://127.0.0.1:{target_port}"
            files = tmp_path / f"rotel{index}"
            return rotel_command(binary, ports, target, protocol, compression, files, "--batch-timeout", "50ms")

        launched = launch("rotel", command, tmp_path / f"rotel{index}.log", ports=2, timeout=15)
        started.append(launched)
        return Rotel(launched)

    yield start
    for launched in started:
        launched.stop(timeout=10)


def price(model: str, cache_read: int) -> float:
    usage = Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=cache_read)
    return float(calc_price(usage, model_ref=model, provider_id="openai").total_price)


@pytest.mark.parametrize(
    ("sdk_transport", "protocol", "compression"),
    [("grpc", "grpc", "gzip"), ("grpc", "grpc", "none"), ("http/protobuf", "http", "gzip"), ("grpc", "http", "none")],
)
def test_spans_through_rotel_reach_the_metrics_exactly(
    start_service, start_rotel, sdk_transport, protocol, compression
):
    service = start_service()
    collector = start_rotel(service.grpc_port if protocol == "grpc" else service.http_port, protocol, compression)
    with tracer(sdk_transport, collector.endpoint(sdk_transport), service="booking") as agent:
        emit_chat(agent, model="gpt-4o")
        emit_chat(agent, model="gpt-4o")
        emit_chat(agent, model="gpt-4o-mini", cache_read=None)
        emit_chat(agent, model="gpt-4o", error_type="RateLimitError")
        emit_tool(agent, "search_flights")
    transport = "grpc" if protocol == "grpc" else "http"
    assert service.wait_for("agentopz_receiver_spans_total", 5, transport=transport) == 5

    labels = {"service": "booking", "agent": "booking", "provider": "openai"}
    gpt4o = {**labels, "model": "gpt-4o"}
    mini = {**labels, "model": "gpt-4o-mini"}
    assert service.value("agentopz_receiver_spans_total") == 5
    assert service.value("agentopz_llm_calls_total", **gpt4o, status="ok") == 2
    assert service.value("agentopz_llm_calls_total", **gpt4o, status="rate_limited") == 1
    assert service.value("agentopz_llm_calls_total", **mini, status="ok") == 1
    assert service.value("agentopz_llm_tokens_total", **gpt4o, token_type="input") == 3600
    assert service.value("agentopz_llm_tokens_total", **gpt4o, token_type="output") == 900
    assert service.value("agentopz_llm_tokens_total", **gpt4o, token_type="cache_read") == 600
    assert service.value("agentopz_llm_tokens_total", **mini, token_type="input") == 1200
    assert service.value("agentopz_llm_tokens_total", **mini, token_type="output") == 300
    mini_series = {
        dict(series)["token_type"]
        for name, series in service.metrics()
        if name == "agentopz_llm_tokens_total" and ("model", "gpt-4o-mini") in series
    }
    assert mini_series == {"input", "output"}
    cost_4o = service.value("agentopz_llm_cost_usd_total", **gpt4o)
    assert math.isclose(cost_4o, 3 * price("gpt-4o", 200), rel_tol=1e-9)
    assert math.isclose(cost_4o, 3 * 0.00575, rel_tol=1e-9)
    assert math.isclose(service.value("agentopz_llm_cost_usd_total", **mini), price("gpt-4o-mini", 0), rel_tol=1e-9)
    assert service.value("agentopz_tool_calls_total", service="booking", tool="search_flights", status="ok") == 1
    assert service.value("agentopz_llm_unpriced_calls_total") == 0


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_enriched_spans_forwarded_through_rotel_keep_their_attributes(start_service, start_rotel, protocol):
    """agent -> service -> rotel -> OTLP backend: a real collector accepts what the service forwards."""
    with HttpSink() as backend:
        collector = start_rotel(backend.port, "http")
        service = start_service(
            config_body(
                {
                    "endpoint": collector.endpoint("grpc" if protocol == "grpc" else "http/protobuf"),
                    "protocol": protocol,
                    "batch": {"timeout_seconds": 0.05},
                }
            )
        )
        with tracer("grpc", service.grpc_endpoint, service="booking") as agent:
            emit_chat(agent, model="gpt-4o", **{"app.booking_id": "B-42"})
            emit_tool(agent, "search_flights")
        assert backend.wait_for_spans(2, timeout=10) == 2
        assert service.wait_for("agentopz_exporter_sent_spans_total", 2, exporter="otlp/downstream") == 2
        time.sleep(0.3)
        spans = {span.name: span for _, _, span in backend.spans()}
    assert len(backend.spans()) == 2
    chat = {kv.key: attribute_value(kv) for kv in spans["chat gpt-4o"].attributes}
    assert chat == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 200,
        "app.booking_id": "B-42",
        "agentopz.cost.usd": pytest.approx(price("gpt-4o", 200), rel=1e-9),
        "agentopz.cost.source": "catalog",
        "agentopz.prompt.version": "unknown",
    }
    assert len(spans["chat gpt-4o"].attributes) == len(chat)
    tool = {kv.key: attribute_value(kv) for kv in spans["execute_tool search_flights"].attributes}
    assert tool == {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search_flights"}
