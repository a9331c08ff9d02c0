"""The service under test: config bodies for start_service, the running process and its /metrics."""

from __future__ import annotations

import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from prometheus_client.parser import text_string_to_metric_families

from support.processes import stop


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


@dataclass
class RunningService:
    process: subprocess.Popen
    grpc_port: int
    http_port: int
    admin_port: int
    log_path: Path

    @property
    def grpc_endpoint(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=5) as response:
            return response.read().decode()

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        return metric_samples(self.metrics_text())

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, lbls), v in self.metrics().items() if n == name and wanted <= lbls)

    def wait_for(self, name: str, expected: float, timeout: float = 15.0, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(name, **labels)
            if value >= expected or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        return stop(self.process)


def default_config_env(folder: Path, index: int, grpc_port: int, http_port: int, admin_port: int) -> dict[str, str]:
    """The variables that move the built-in default config's ports and storage into a test's."""
    return {
        "AGENTOPZ_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
        "AGENTOPZ_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
        "AGENTOPZ_ADMIN_ENDPOINT": f"127.0.0.1:{admin_port}",
        "AGENTOPZ_STORAGE_PATH": str(folder / f"storage{index}.sqlite"),
    }


def write_config(path: Path, body: str, grpc_port: int, http_port: int, admin_port: int) -> None:
    path.write_text(textwrap.dedent(body).format(grpc_port=grpc_port, http_port=http_port, admin_port=admin_port))


def service_body(
    *,
    runs: dict | None = None,
    exporters: dict | None = None,
    receiver: dict | None = None,
    service: dict | None = None,
    extensions: dict | None = None,
) -> str:
    """A start_service config body: OTLP in on both transports, normalize, cost and prompt_version,
    `runs` when given, the prometheus exporter plus `exporters`, and `extensions` (all switched on, in
    order). Ports are filled in by start_service."""
    processors: dict = {"normalize": None, "cost": None, "prompt_version": None}
    if runs is not None:
        processors["runs"] = runs
    all_exporters = {"prometheus": None, **(exporters or {})}
    config = {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": "127.0.0.1:@GRPC_PORT@"},
                    "http": {"endpoint": "127.0.0.1:@HTTP_PORT@"},
                },
                **(receiver or {}),
            }
        },
        "processors": processors,
        "exporters": all_exporters,
        "extensions": extensions or {},
        "service": {
            "admin": {"endpoint": "127.0.0.1:@ADMIN_PORT@"},
            "extensions": list(extensions or {}),
            **(service or {}),
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": list(processors), "exporters": list(all_exporters)}
            },
        },
    }
    text = yaml.safe_dump(config, sort_keys=False).replace("{", "{{").replace("}", "}}")
    for name in ("grpc_port", "http_port", "admin_port"):
        text = text.replace(f"@{name.upper()}@", "{" + name + "}")
    return text


DEFAULT_BODY = service_body()


def every_component_body(storage: Path) -> str:
    """A start_service config body with every built-in component on; the otlp exporter forwards to a
    closed port (tests that use it send nothing)."""
    return service_body(
        runs={"checkpoint": {"storage": "storage"}},
        exporters={"otlp": {"endpoint": "http://127.0.0.1:9", "protocol": "grpc"}},
        extensions={
            "storage": {"path": str(storage)},
            "rollouts": None,
            "canary_analysis": None,
            "alertmanager_webhook": None,
            "console": None,
            "probes": None,
        },
    )


def rollouts_body(storage_path: Path, rollouts: dict | None = None, admin_token: str | None = None) -> str:
    """A service with the storage extension at `storage_path` and the rollouts extension."""
    admin: dict[str, Any] = {"endpoint": "127.0.0.1:@ADMIN_PORT@"}
    if admin_token is not None:
        admin["auth"] = {"token": admin_token}
    return service_body(
        extensions={"storage": {"path": str(storage_path)}, "rollouts": rollouts or {}}, service={"admin": admin}
    )


def post_http(service, request: ExportTraceServiceRequest):
    http_request = urllib.request.Request(
        f"{service.http_url}/v1/traces",
        data=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(http_request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()
