"""A real Prometheus server for tests (Debian package `prometheus`), scraping the service."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from support.processes import Command, http_ok, launch, require_binary, stop


@dataclass
class Prometheus:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            document = json.load(response)
        assert document["status"] == "success", document
        return document["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def stop(self) -> None:
        stop(self.process)


def start_prometheus(
    tmp_path: Path,
    targets: list[str],
    rule_files: list[Path] = (),
    alertmanager: str | None = None,
    interval: str = "1s",
    port: int | None = None,
) -> Prometheus:
    """A real Prometheus scraping `targets`; on `port` when given (a service configured before it starts
    needs its URL), else on a port the launcher picks."""
    binary = require_binary("prometheus")
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "agentopz", "static_configs": [{"targets": targets}]}],
        "rule_files": [str(path) for path in rule_files],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML

    def command(ports: tuple[int, ...]) -> Command:
        listen = port or ports[0]
        argv = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{listen}",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ]
        return Command(argv, http_ok(f"http://127.0.0.1:{listen}/-/ready"))

    launched = launch("prometheus", command, tmp_path / "prometheus.log", ports=0 if port else 1)
    return Prometheus(launched.process, port or launched.ports[0], launched.log_path)
