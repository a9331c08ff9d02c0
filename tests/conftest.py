"""Shared fixtures: the service started as a real process on free loopback ports."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.alertmanager import Recorder, running_recorder
from support.browser import CHROMIUM_ARGS
from support.processes import Command, http_ok, launch, require_binary
from support.service import DEFAULT_BODY, RunningService, default_config_env, write_config


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., RunningService]]:
    """Start `python -m agentopz_otel run` with a config body; `{grpc_port}` etc. are filled in."""
    started: list[RunningService] = []

    def start(body: str | None = DEFAULT_BODY, env: dict[str, str] | None = None) -> RunningService:
        """`body` None: the built-in default config, its ports and storage moved by its variables."""
        index = len(started)

        def command(ports: tuple[int, ...]) -> Command:
            grpc_port, http_port, admin_port = ports
            argv = [sys.executable, "-m", "agentopz_otel", "run"]
            ready = http_ok(f"http://127.0.0.1:{admin_port}/readyz")
            if body is None:
                return Command(argv, ready, env={**default_config_env(tmp_path, index, *ports), **(env or {})})
            config = tmp_path / f"config{index}.yaml"
            write_config(config, body, grpc_port, http_port, admin_port)
            return Command([*argv, "--config", str(config)], ready, env=env)

        launched = launch("the service", command, tmp_path / f"service{index}.log", ports=3, timeout=60)
        service = RunningService(launched.process, *launched.ports, launched.log_path)
        started.append(service)
        return service

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


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A webhook receiver on a free loopback port that keeps every notification posted to it."""
    with running_recorder() as server:
        yield server
