"""Shared fixtures: the service started as a real process on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """Path of an external binary; skips (or fails under CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: run scripts/test (installs it) or apt-get install the package providing it"
        if os.environ.get("AGENTOPZ_REQUIRE_ALL"):
            pytest.fail(message)
        pytest.skip(message)
    return path


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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


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


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., RunningService]]:
    """Start `python -m agentopz_otel run` with a config body; `{grpc_port}` etc. are filled in."""
    started: list[RunningService] = []

    def start(body: str | None = DEFAULT_BODY, env: dict[str, str] | None = None) -> RunningService:
        """`body` None: the built-in default config, its ports and storage moved by its variables."""
        grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
        index = len(started)
        command = [sys.executable, "-m", "agentopz_otel", "run"]
        if body is None:
            env = {
                "AGENTOPZ_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
                "AGENTOPZ_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
                "AGENTOPZ_ADMIN_ENDPOINT": f"127.0.0.1:{admin_port}",
                "AGENTOPZ_STORAGE_PATH": str(tmp_path / f"storage{index}.sqlite"),
                **(env or {}),
            }
        else:
            config = tmp_path / f"config{index}.yaml"
            write_config(config, body, grpc_port, http_port, admin_port)
            command += ["--config", str(config)]
        log_path = tmp_path / f"service{index}.log"
        process = subprocess.Popen(
            command, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        service = RunningService(process, grpc_port, http_port, admin_port, log_path)
        started.append(service)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"service exited with {process.returncode}:\n{service.log()}")
            try:
                with urllib.request.urlopen(f"{service.admin_url}/readyz", timeout=1):
                    return service
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"service not ready:\n{service.log()}") from None
                time.sleep(0.1)

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def service(start_service: Callable[..., RunningService]) -> RunningService:
    return start_service()


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
