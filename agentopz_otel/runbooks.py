"""Runbook links of the alert rules: every alert's `runbook_url` is `<base URL>/<alert name>`.

The shipped rule files carry the default base, the runbook pages the service serves on its admin
port. `agentopz-otel rules --runbook-base-url URL` writes copies with another base (where a pager or
chat app can open them); `runbook_base_url` in an SLO file does the same for the generated SLO rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_RUNBOOK_BASE_URL = "http://localhost:9464/runbooks"

_ALERT_LINE = re.compile(r"^\s*- alert: *(\S+)\s*$")
_RUNBOOK_LINE = re.compile(r"^(\s*runbook_url:).*$", re.S)


def check_base_url(base_url: str) -> str:
    """`base_url` without a trailing slash; ValueError unless it is an absolute http(s) URL."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"runbook base URL {base_url!r} must be an absolute http(s) URL without query or fragment")
    return base_url.rstrip("/")


def runbook_url(base_url: str, alertname: str) -> str:
    return f"{check_base_url(base_url)}/{alertname}"


def alert_runbook_urls(text: str) -> dict[str, set[str]]:
    """alert name -> the runbook_url values its rules in the rule file `text` carry."""
    urls: dict[str, set[str]] = {}
    for group in yaml.safe_load(text)["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                urls.setdefault(rule["alert"], set()).add(rule.get("annotations", {}).get("runbook_url"))
    return urls


def rebase(text: str, base_url: str) -> str:
    """The rule file `text` with every alert's runbook_url under `base_url`, comments and layout kept.

    ValueError when an alert has no runbook_url on a line of its own (which could not be rewritten).
    """
    alertname = None
    lines = []
    for line in text.splitlines(keepends=True):
        found = _ALERT_LINE.match(line)
        if found:
            alertname = found.group(1)
        else:
            found = _RUNBOOK_LINE.match(line)
            if found and alertname is not None:
                end = "\n" if line.endswith("\n") else ""
                line = f"{found.group(1)} {runbook_url(base_url, alertname)}{end}"
        lines.append(line)
    rebased = "".join(lines)
    for name, urls in alert_runbook_urls(rebased).items():
        if urls != {runbook_url(base_url, name)}:
            raise ValueError(f"alert {name}: runbook_url is not on a line of its own: {sorted(map(str, urls))}")
    return rebased


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_rules(document: dict[str, Any]) -> str:
    """A generated rule document as YAML: multi-line expressions as literal blocks, keys in order."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def write_rebased(files: list[Path], base_url: str, output_dir: Path) -> list[Path]:
    """Write each rule file, rebased, under `output_dir` with its own name; the paths written."""
    names = [path.name for path in files]
    if len(set(names)) != len(names):
        raise ValueError(f"two rule files have the same name: {', '.join(sorted(names))}")
    rebased = [(path.name, rebase(path.read_text(), base_url)) for path in files]
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rebased:
        target = output_dir / name
        target.write_text(text)
        written.append(target)
    return written
