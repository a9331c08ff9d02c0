"""An HTTP agent stand-in for probes: a real aiohttp server on loopback, in its own thread, whose
behaviour a test switches: it answers (and emits the run the probe started, through the real
OpenTelemetry SDK, in the probe's trace), slows down past the probe's timeout, fails with a 500,
answers without emitting a run, emits a run that fails, or starts runs that never finish (an LLM
call is made, the agent span never ends)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from support.sdk_agent import emit_chat, tracer

Mode = Literal["answer", "slow", "fail", "silent", "failing_run", "hang"]
ANSWER = {"status": "ok", "reply": "pong"}


@dataclass
class StandIn:
    port: int = 0  # the port it bound (it binds port 0: no other process can take it in between)
    mode: Mode = "answer"
    slow_seconds: float = 5.0
    # The headers of each request received, and the trace ids of the runs emitted, in order.
    requests: list[dict[str, str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Where runs go (set by export_to); until then the stand-in answers without emitting runs.
    tracer: Tracer | None = None
    _exits: ExitStack = field(default_factory=ExitStack)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/chat"

    def export_to(self, otlp_grpc_endpoint: str, service: str = "stand-in-svc") -> None:
        """Emit runs through the OpenTelemetry SDK's OTLP gRPC exporter to `otlp_grpc_endpoint`."""
        self.tracer = self._exits.enter_context(tracer("grpc", otlp_grpc_endpoint, service=service))


def _run(t: Tracer, request_headers: dict[str, str], failed: bool) -> str:
    """One run of agent `stand-in`, a child of the probe's trace context; returns its trace id."""
    context = TraceContextTextMapPropagator().extract(request_headers)
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "stand-in"}
    with t.start_as_current_span("invoke_agent stand-in", context=context, attributes=attributes) as root:
        emit_chat(t, error_type="RateLimitError" if failed else None)
        if failed:
            root.set_status(Status(StatusCode.ERROR))
        return format(root.get_span_context().trace_id, "032x")


def _hang(t: Tracer, request_headers: dict[str, str]) -> None:
    """A run of `stand-in` that makes an LLM call and never ends: its root span is never exported."""
    context = TraceContextTextMapPropagator().extract(request_headers)
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "stand-in"}
    root = t.start_span("invoke_agent stand-in", context=context, attributes=attributes)
    with trace.use_span(root, end_on_exit=False):
        emit_chat(t, **{"gen_ai.agent.name": "stand-in"})


def _app(state: StandIn) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        with state.lock:
            state.requests.append(dict(request.headers))
            mode = state.mode
        if mode == "slow":
            await asyncio.sleep(state.slow_seconds)
        if mode == "fail":
            return web.json_response({"error": "model unavailable"}, status=500)
        if mode == "hang" and state.tracer is not None:
            await asyncio.to_thread(_hang, state.tracer, dict(request.headers))
        if mode in ("answer", "failing_run") and state.tracer is not None:
            trace_id = await asyncio.to_thread(_run, state.tracer, dict(request.headers), mode == "failing_run")
            with state.lock:
                state.runs.append(trace_id)
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/chat", chat)
    return app


@contextmanager
def running_stand_in() -> Iterator[StandIn]:
    state = StandIn()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(state))

    async def serve() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        [(_, state.port)] = runner.addresses

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    try:
        with state._exits:
            yield state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
