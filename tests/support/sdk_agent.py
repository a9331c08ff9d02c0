"""A small test agent that emits GenAI spans through the real OpenTelemetry SDK and OTLP exporters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode, Tracer

from agentopz_otel import fleet

Transport = Literal["grpc", "http/protobuf", "http/json"]


def exporter(transport: Transport, endpoint: str, **kwargs):
    """A real OTLP span exporter of the OpenTelemetry SDK for `transport`."""
    if transport == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True, **kwargs)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", **kwargs)


@contextmanager
def tracer(
    transport: Transport,
    endpoint: str,
    service: str = "test-service",
    batch: bool = False,
    copies: int = 1,
    **kwargs,
) -> Iterator[Tracer]:
    """A tracer whose spans go to `endpoint`; `copies` exporters send each span that many times."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    for _ in range(copies):
        span_exporter = exporter(transport, endpoint, **kwargs)
        provider.add_span_processor(BatchSpanProcessor(span_exporter) if batch else SimpleSpanProcessor(span_exporter))
    try:
        yield provider.get_tracer("agentopz-tests")
    finally:
        provider.shutdown()


def chat_attributes(
    model: str = "gpt-4o",
    provider: str = "openai",
    input_tokens: int = 1200,
    output_tokens: int = 300,
    cache_read: int | None = 200,
    **extra,
) -> dict:
    """A chat call as the fleet's agents describe one (agentopz_otel.fleet), plus `extra` attributes."""
    return {
        **fleet.chat_attributes(model, provider),
        **fleet.usage_attributes(input_tokens, output_tokens, cache_read),
        **extra,
    }


def emit_chat(tracer: Tracer, error_type: str | None = None, **kwargs) -> None:
    attributes = chat_attributes(**kwargs)
    with tracer.start_as_current_span(f"chat {attributes['gen_ai.request.model']}", attributes=attributes) as span:
        if error_type:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR))


def emit_tool(tracer: Tracer, name: str, failed: bool = False) -> None:
    attributes = fleet.tool_attributes(name)
    with tracer.start_as_current_span(f"execute_tool {name}", attributes=attributes) as span:
        if failed:
            span.set_attribute("error.type", "ToolError")
            span.set_status(Status(StatusCode.ERROR))
