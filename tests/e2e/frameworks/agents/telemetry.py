"""The OpenTelemetry SDK set up the way the frameworks' docs say: global tracer and logger providers
exporting OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, the service name from OTEL_SERVICE_NAME."""

from __future__ import annotations

import os

from opentelemetry import _logs, trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
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


def logger_provider() -> LoggerProvider:
    """For instrumentations that send content as log records (GenAI events)."""
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    _logs.set_logger_provider(provider)
    return provider
