"""Config: collector-style YAML, validated before anything starts, errors that name the key."""

from __future__ import annotations

import re

import pytest
from support import ROOT

from agentopz_otel.config import ConfigError, config_schema, load_config, parse_config

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
    kinds = (config.receivers, config.processors, config.exporters, config.extensions)
    assert [{id_: component.factory.type for id_, component in kind.items()} for kind in kinds] == [
        {"otlp": "otlp"},
        {"normalize": "normalize", "cost": "cost"},
        {"prometheus": "prometheus", "otlp/tempo": "otlp"},
        {},
    ]
    tempo = config.exporters["otlp/tempo"].config
    assert tempo.endpoint == "http://localhost:4317"
    # What the file leaves out comes from the models' defaults.
    assert (tempo.protocol, tempo.compression, tempo.senders, tempo.sending_queue.max_spans) == (
        "grpc",
        "none",
        2,
        200_000,
    )
    assert config.receivers["otlp"].config.max_request_bytes == 64 * 1024 * 1024
    assert config.service.shutdown_timeout_seconds == 10.0


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


def named_in(text: str, key: str) -> bool:
    """`key` written as a config key: `key`, `key:`, `key=`, `.key` or inside a YAML flow mapping."""
    return re.search(rf"(`{key}`|\b{key}:|[`.{{, ]{key}[`:=])", text) is not None


def test_every_config_key_is_named_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    keys = {key for model in config_schema()["$defs"].values() for key in model.get("properties", {})}
    assert len(keys) > 150  # every built-in component's models were read
    assert sorted(key for key in keys if not named_in(readme, key)) == []
    assert not named_in("keep the first input_chars (200)", "input_chars")
    assert named_in("{path: x, busy_timeout_seconds: 5}", "busy_timeout_seconds")
