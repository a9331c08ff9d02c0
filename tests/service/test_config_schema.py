"""The config file's JSON Schema (`agentopz-otel schema`), from the pydantic models that validate it."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import yaml
from support import ROOT as REPO
from support.service import every_component_body

from agentopz_otel.config import config_schema


def leaf_errors(validator: jsonschema.Draft202012Validator, document: object) -> list:
    """The errors under a component's `anyOf` (its config, or nothing), without the `nothing` branch's."""
    found = []
    for error in validator.iter_errors(document):
        if error.validator == "anyOf":
            found += [e for e in error.context if e.validator != "type" or e.validator_value != "null"]
        else:
            found.append(error)
    return found


def test_the_config_schema_accepts_the_shipped_configs_and_names_a_bad_key(tmp_path):
    result = subprocess.run([sys.executable, "-m", "agentopz_otel", "schema"], capture_output=True, text=True)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema == config_schema()
    validator = jsonschema.Draft202012Validator(schema)
    for path in (REPO / "collector-config" / "agentopz.yaml", REPO / "agentopz_otel" / "default_config.yaml"):
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path
    assert (
        list(
            validator.iter_errors(
                yaml.safe_load(
                    every_component_body(tmp_path / "state.sqlite").format(grpc_port=1, http_port=2, admin_port=3)
                )
            )
        )
        == []
    )
    bad = yaml.safe_load(every_component_body(tmp_path / "state.sqlite").format(grpc_port=1, http_port=2, admin_port=3))
    bad["processors"]["runs"]["grace_secs"] = 5
    bad["exporters"]["otlp/tempo"] = {"endpoint": "http://tempo:4317", "sending_queue": {"max_spans": 0}}
    bad["processors"]["costs"] = {}
    errors = sorted((list(error.absolute_path), error.validator) for error in leaf_errors(validator, bad))
    assert errors == [
        (["exporters", "otlp/tempo", "sending_queue", "max_spans"], "minimum"),
        (["processors"], "additionalProperties"),
        (["processors", "runs"], "additionalProperties"),
    ]
