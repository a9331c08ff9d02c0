"""The runs processor under test: a config with short timings, its run log, and agent spans."""

from __future__ import annotations

import json
import time

import grpc

from agentopz_otel import fleet
from support.otlp_proto import make_request, make_span
from support.sdk_agent import chat_attributes

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def runs_config(run_log, max_open: int = 1000, **extra) -> dict:
    """The runs processor with short timings, a run log and a few agents' limits."""
    return {
        "grace_seconds": 0.4,
        "tick_seconds": 0.1,
        "root_wait_seconds": 1.0,
        "abandon_after_seconds": 1.5,
        "max_open_runs": max_open,
        "run_log": {"path": str(run_log)},
        "limits": [
            {"agent": "spender", "max_cost_usd": 0.01},
            {"agent": "looper", "max_steps": 3},
            {"agent": "slow", "max_duration_seconds": 0.05},
            {"agent": "steps-edge", "max_steps": 2},
            {"agent": "cost-edge", "max_cost_usd": 0.5},
        ],
        **extra,
    }


def run_records(service) -> list[dict]:
    if not service.run_log.exists():
        return []
    return [json.loads(line) for line in service.run_log.read_text().splitlines()]


def wait_runs(service, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(records := run_records(service)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return records


def agent_run(t, agent: str, failed: bool = False, **attributes):
    """Context manager for an invoke_agent span."""
    span = t.start_as_current_span(
        f"invoke_agent {agent}",
        attributes={**fleet.agent_attributes(agent), **attributes},
    )
    return span


def send(service, spans, service_name="svc"):
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        channel.unary_unary(EXPORT)(make_request(spans, service=service_name).SerializeToString(), timeout=5)


def raw_run(trace_id: bytes, agent="raw"):
    """An agent span with a chat and a tool span under it, built directly (for exact ordering)."""
    root = make_span(
        f"invoke_agent {agent}",
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent},
        trace_id=trace_id,
        duration_ns=2_000_000_000,
    )
    chat = make_span("chat gpt-4o", chat_attributes(), trace_id=trace_id, parent=root.span_id)
    tool = make_span(
        "execute_tool search",
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
        trace_id=trace_id,
        parent=root.span_id,
    )
    return root, chat, tool
