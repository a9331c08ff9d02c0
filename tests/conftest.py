"""Shared fixtures: the service started as a real process on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.browser import CHROMIUM_ARGS
from support.processes import free_port, require_binary
from support.service import DEFAULT_BODY, RunningService, write_config


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


@pytest.fixture
def chromium() -> Iterator:
    """Debian's chromium under Playwright; Playwright gives each launch a fresh user-data-dir and
    never downloads a browser when it is handed an executable."""
    executable = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
