"""rotel (the Rust OpenTelemetry collector, shipped in the rotel wheel) as the tests and the benchmark
start it: OTLP/gRPC and OTLP/HTTP in on two loopback ports, OTLP out to one endpoint."""

from __future__ import annotations

from pathlib import Path

from support.processes import Command, listening


def rotel_command(
    binary: str, ports: tuple[int, ...], target: str, protocol: str, compression: str, files: Path, *options: str
) -> Command:
    """rotel-agent receiving on `ports` (gRPC, HTTP) and exporting to the URL `target` over `protocol`;
    its pid file and own log are `files` + .pid and .file.log. Ready when both ports accept connections."""
    grpc_port, http_port = ports
    argv = [
        binary,
        "start",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint",
        f"127.0.0.1:{http_port}",
        "--exporter",
        "otlp",
        "--otlp-exporter-endpoint",
        target,
        "--otlp-exporter-protocol",
        protocol,
        "--otlp-exporter-compression",
        compression,
        "--pid-file",
        f"{files}.pid",
        "--log-file",
        f"{files}.file.log",
        *options,
    ]
    return Command(argv, listening(grpc_port, http_port), cwd=files.parent)
