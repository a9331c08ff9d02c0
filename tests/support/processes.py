"""The one launcher of the processes tests and benchmarks run as servers (the service, Prometheus,
Alertmanager, rotel, the benchmark's sink): start, wait until a readiness check passes, stop. The bench/
scripts import it too (through bench/bench.py), so it needs pytest only to skip a test.

Ports: a free port is found by binding port 0 and closing the socket, so another process may take it
before the launched one binds it. The launcher picks the ports itself and, when the process exits
saying its address is in use, starts it again on new ports (up to `attempts` times). In-process
servers (sinks, stand-ins) bind port 0 themselves and read the port back, which has no race at all.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# What the service, Go servers (Prometheus, Alertmanager) and Rust ones (rotel) print when a port is taken.
PORT_TAKEN = re.compile(r"address already in use|port in use\?|cannot listen", re.IGNORECASE)
STOP_SECONDS = 20.0


def free_port() -> int:
    """A loopback port free right now (another process may take it before it is bound: see above)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """Path of an external binary; skips (or fails under CI) when it is not installed."""
    import pytest

    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: run scripts/test (installs it) or apt-get install the package providing it"
        if os.environ.get("AGENTOPZ_REQUIRE_ALL"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def http_ok(url: str) -> Callable[[], bool]:
    """Readiness: `url` answers a GET with a 2xx."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:  # refused, reset, timed out, or an HTTP error status (HTTPError is an OSError)
            return False

    return check


def listening(*ports: int) -> Callable[[], bool]:
    """Readiness: every port in `ports` accepts a TCP connection on loopback."""

    def check() -> bool:
        try:
            for port in ports:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    return check


@dataclass(frozen=True)
class Command:
    """How to start the process on the ports the launcher picked, and how to tell it is ready."""

    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] | None = None  # added to this process's environment
    cwd: Path | None = None


class StartError(RuntimeError):
    """The process exited or was not ready in time; the message holds its output."""


def stop(process: subprocess.Popen, timeout: float = STOP_SECONDS) -> int:
    """Terminate (SIGTERM), wait up to `timeout`, then kill; returns the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Launched:
    name: str
    process: subprocess.Popen
    ports: tuple[int, ...]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        return stop(self.process, timeout)

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def launch(
    name: str,
    command: Callable[[tuple[int, ...]], Command],
    log_path: Path,
    ports: int = 0,
    timeout: float = 30.0,
    attempts: int = 3,
) -> Launched:
    """Start `command(ports)` with stdout and stderr in `log_path` and wait until its readiness check
    passes. `ports` free loopback ports are picked for it; when it exits because one is taken, it is
    started again on new ones. Raises StartError, with the process's output, when it exits (for
    another reason, or on the last attempt) or is not ready within `timeout` seconds (it is then stopped)."""
    attempt = 1
    while True:
        chosen = tuple(free_port() for _ in range(ports))
        spec = command(chosen)
        with log_path.open("w") as log:
            process = subprocess.Popen(
                spec.argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(spec.env or {})}, cwd=spec.cwd
            )
        launched = Launched(name, process, chosen, log_path)
        deadline = time.monotonic() + timeout
        # Ready only while still running: a process that lost its port may briefly outlive a check
        # that reached whoever holds the port.
        while process.poll() is None:
            if spec.ready() and process.poll() is None:
                return launched
            if time.monotonic() > deadline:
                launched.stop()
                raise StartError(f"{name} not ready within {timeout:g} s; its output:\n{launched.output()}")
            time.sleep(0.05)
        output = launched.output()
        if not (ports and attempt < attempts and PORT_TAKEN.search(output)):
            raise StartError(f"{name} exited with {process.returncode} before it was ready; its output:\n{output}")
        attempt += 1
