"""The command line: `validate` and `run` report a bad config or a busy port with a clear error and
the right exit status, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from support.processes import free_port

VALID = """
receivers: {otlp: {}}
processors: {normalize: {}, cost: {}}
exporters: {prometheus: {}}
service:
  pipelines: {traces: {receivers: [otlp], processors: [normalize, cost], exporters: [prometheus]}}
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentopz_otel", *args], capture_output=True, text=True, timeout=30)


def test_validate_command(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    result = run_cli("validate", str(good))
    assert result.returncode == 0
    assert "valid (pipelines: traces)" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("cost: {}", "cost: {catalogue: false}"))
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert "processors.cost.catalogue: unknown key" in result.stderr


def test_busy_port_is_a_clear_start_up_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "busy.yaml"
        config.write_text(
            textwrap.dedent(f"""
            receivers:
              otlp:
                protocols:
                  http: {{endpoint: "127.0.0.1:{port}"}}
            exporters: {{prometheus: {{}}}}
            service:
              admin: {{endpoint: "127.0.0.1:{free_port()}"}}
              pipelines: {{traces: {{receivers: [otlp], exporters: [prometheus]}}}}
            """)
        )
        result = run_cli("run", "--config", str(config))
    assert result.returncode == 1
    assert f"cannot listen for OTLP/HTTP on 127.0.0.1:{port}" in result.stderr


def test_an_extension_missing_what_it_needs_is_a_clear_start_up_error(tmp_path):
    config = tmp_path / "no-storage.yaml"
    config.write_text(
        textwrap.dedent(f"""
        receivers:
          otlp:
            protocols:
              http: {{endpoint: "127.0.0.1:{free_port()}"}}
        exporters: {{prometheus: {{}}}}
        extensions: {{rollouts: {{}}}}
        service:
          admin: {{endpoint: "127.0.0.1:{free_port()}"}}
          extensions: [rollouts]
          pipelines: {{traces: {{receivers: [otlp], exporters: [prometheus]}}}}
        """)
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "extension rollouts: extension 'storage' is not configured in service.extensions" in result.stderr
    assert "Traceback" not in result.stderr
