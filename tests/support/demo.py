"""The demo command and collector-config/agentopz.yaml as a start_service body."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from support import ROOT

STACK_CONFIG = ROOT / "collector-config" / "agentopz.yaml"


def stack_body(
    run_log: Path,
    forward_to: str | None = None,
    cardinality: dict | None = None,
    extensions: dict | None = None,
    **runs: float,
) -> str:
    """collector-config/agentopz.yaml as a start_service body: test ports, no Tempo, faster run timing,
    plus `extensions` (switched on after the configured ones; ADMIN_PORT in them is the admin port)."""
    config = yaml.safe_load(STACK_CONFIG.read_text())
    for extension_id, settings in (extensions or {}).items():
        config.setdefault("extensions", {})[extension_id] = settings
        config["service"].setdefault("extensions", []).append(extension_id)
    config["receivers"]["otlp"]["protocols"] = {
        "grpc": {"endpoint": "127.0.0.1:GRPC_PORT"},
        "http": {"endpoint": "127.0.0.1:HTTP_PORT"},
    }
    config["service"]["admin"]["endpoint"] = "127.0.0.1:ADMIN_PORT"
    if cardinality is not None:
        config["service"]["cardinality"] = cardinality
    exporters = config["exporters"]
    tempo = next(name for name in exporters if name.startswith("otlp"))
    if forward_to is None:
        del exporters[tempo]
    else:
        exporters[tempo]["endpoint"] = forward_to
    pipeline = config["service"]["pipelines"]["traces"]
    pipeline["exporters"] = [name for name in pipeline["exporters"] if name in exporters]
    settings = config["processors"]["runs"]
    settings.update({"grace_seconds": 0.3, "tick_seconds": 0.1, "abandon_after_seconds": 3.0, **runs})
    settings["run_log"] = {"path": str(run_log), "otlp": False}
    text = yaml.safe_dump(config, sort_keys=False).replace("{", "{{").replace("}", "}}")
    for name in ("GRPC_PORT", "HTTP_PORT", "ADMIN_PORT"):
        text = text.replace(name, "{" + name.lower() + "}")
    return text


def demo_command(*args: str) -> list[str]:
    """The demo without its rollout unless the arguments name a --flags-url."""
    rollout = () if "--flags-url" in args else ("--no-rollout",)
    return [sys.executable, "-m", "agentopz_otel", "demo", *rollout, *args]
