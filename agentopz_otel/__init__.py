"""agentopz_otel: operations metrics, cost and quality for AI agents, from their OpenTelemetry traces."""

__version__ = "0.1.0"
