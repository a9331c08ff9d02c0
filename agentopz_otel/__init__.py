"""agentopz_otel: operations metrics, cost and quality for AI agents, from their OpenTelemetry traces."""

from .compiled import install

__version__ = "0.1.0"

install()  # before any other module of the package is imported: it picks each one's build
