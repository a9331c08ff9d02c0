"""The shipped Grafana dashboards, their panels, and Grafana's variable substitution."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from support import ROOT

DASHBOARDS = ROOT / "dashboards"


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables ($name, ${name}, ${name:format}) replaced by concrete values."""
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", lambda match: values[match.group(1) or match.group(2)], expr)
