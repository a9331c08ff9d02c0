"""Config: collector-style YAML, validated before anything starts, errors that name the key."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
from support.processes import free_port

from agentopz_otel.config import ConfigError, load_config, parse_config

BASE = """
receivers:
  otlp: {}
processors:
  normalize: {}
  cost: {}
exporters:
  prometheus: {}
  otlp/tempo:
    endpoint: http://localhost:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [normalize, cost]
      exporters: [prometheus, otlp/tempo]
"""


def test_built_in_default_config_is_valid():
    config = load_config(None)
    assert list(config.service.pipelines) == ["traces"]
    assert config.service.pipelines["traces"].processors == ["normalize", "cost", "prompt_version", "runs"]
    assert config.service.extensions == [
        "storage",
        "rollouts",
        "canary_analysis",
        "alertmanager_webhook",
        "probes",
        "console",
    ]


def test_an_extension_listed_but_not_defined_is_an_error():
    with pytest.raises(ConfigError, match=r"service.extensions: 'storage' is not defined under extensions:"):
        parse_config(BASE.replace("service:\n", "service:\n  extensions: [storage]\n", 1))


def test_an_unknown_extension_type_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"extensions.stroage: unknown extension type \(did you mean 'storage'\?\)"):
        parse_config("extensions:\n  stroage: {}\n" + BASE)


def test_a_full_config_parses():
    config = parse_config(BASE)
    assert config.exporters["otlp/tempo"].config.endpoint == "http://localhost:4317"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("  otlp: {}", "  otlp: {protocols: {grpc: {endpont: ':4317'}}}"),
            "receivers.otlp.protocols.grpc.endpont: unknown key",
        ),
        (
            ("  cost: {}", "  cost: {overrides: [{model: x, input: -1, output: 1}]}"),
            "processors.cost.overrides.0.input",
        ),
        (("  otlp/tempo:", "  otlp/tempo:\n    protocl: grpc"), "exporters.otlp/tempo.protocl: unknown key"),
        (
            ("  prometheus: {}", "  prometeus: {}"),
            "exporters.prometeus: unknown exporter type (did you mean 'prometheus'?)",
        ),
        (("processors: [normalize, cost]", "processors: [cost, normalize]"), "'cost' needs a 'normalize' processor"),
        (
            ("exporters: [prometheus, otlp/tempo]", "exporters: [prometheus, otlp/jaeger]"),
            "'otlp/jaeger' is not defined",
        ),
        (("service:", "servce: {}\nservice:"), "servce: unknown key"),
        (("  otlp: {}", "  otlp: {protocols: {grpc: {endpoint: 'nope'}}}"), "endpoint 'nope' must be host:port"),
    ],
)
def test_errors_name_the_key_and_why(change, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(BASE.replace(*change))
    assert message in str(raised.value)


def test_environment_references_are_substituted(monkeypatch):
    monkeypatch.setenv("TEMPO", "http://tempo:4317")
    config = parse_config(BASE.replace("http://localhost:4317", "${env:TEMPO}"))
    assert config.exporters["otlp/tempo"].config.endpoint == "http://tempo:4317"
    with pytest.raises(ConfigError, match="environment variable MISSING is not set"):
        parse_config(BASE.replace("http://localhost:4317", "${env:MISSING}"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentopz_otel", *args], capture_output=True, text=True, timeout=30)


def test_validate_command(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    result = run_cli("validate", str(good))
    assert result.returncode == 0
    assert "valid (pipelines: traces)" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("  cost: {}", "  cost: {catalogue: false}"))
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
