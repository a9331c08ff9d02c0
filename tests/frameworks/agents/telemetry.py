"""The OpenTelemetry SDK set up the way the frameworks' docs say: a global TracerProvider (and
LoggerProvider) exporting OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, the service name from OTEL_SERVICE_NAME."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SYSTEM_PROMPT = os.environ["AGENT_SYSTEM_PROMPT"]
QUESTION = "What is the weather in Paris?"


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Sunny, 21 C in {city}"


def tracer_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
