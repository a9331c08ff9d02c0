"""Starting external processes for tests: free loopback ports and installed binaries."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


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
