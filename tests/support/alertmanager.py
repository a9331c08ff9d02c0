"""A real Alertmanager (Debian package `prometheus-alertmanager`) with the shipped routing, and a
recorder standing in for PagerDuty, Slack and the on-call webhook."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from support import ROOT
from support.processes import Command, http_ok, launch, require_binary

WEBHOOK_TOKEN = "e2e-agentopz-webhook-token-0123456789"


class Recorder(ThreadingHTTPServer):
    """Receives the notifications: every POST by path, with its headers and JSON body."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[tuple[str, dict, dict]] = []
        self.changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, path: str, predicate, timeout: float) -> tuple[dict, dict]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for post_path, headers, body in self.posts:
                    if post_path == path and predicate(body):
                        return headers, body
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching POST to {path}; got {self.posts}")
                self.changed.wait(remaining)

    def paths(self) -> list[str]:
        with self.changed:
            return [path for path, _, _ in self.posts]


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.changed:
            self.server.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.server.changed.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def running_recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def alertmanager_config(tmp_path: Path, recorder: Recorder, agentopz_webhook: str | None = None) -> Path:
    """The shipped alertmanager.yml with its secret files and endpoints pointed at this test; the
    agentopz-rollouts receiver at `agentopz_webhook` (else the recorder's /agentopz), token WEBHOOK_TOKEN."""
    config = yaml.safe_load((ROOT / "alert-rules" / "alertmanager.yml").read_text())
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "routing-key").write_text("e2e-routing-key")
    (secrets / "slack-url").write_text(f"{recorder.url}/slack")
    (secrets / "webhook-token").write_text("e2e-token")
    (secrets / "agentopz-token").write_text(WEBHOOK_TOKEN)
    config["route"]["group_wait"] = "1s"
    config["route"]["group_interval"] = "1s"
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    [pagerduty] = receivers["pagerduty"]["pagerduty_configs"]
    pagerduty["routing_key_file"] = str(secrets / "routing-key")
    pagerduty["url"] = f"{recorder.url}/pagerduty"
    [webhook] = receivers["oncall-webhook"]["webhook_configs"]
    webhook["url"] = f"{recorder.url}/webhook"
    webhook["http_config"]["authorization"]["credentials_file"] = str(secrets / "webhook-token")
    [agentopz] = receivers["agentopz-rollouts"]["webhook_configs"]
    agentopz["url"] = agentopz_webhook or f"{recorder.url}/agentopz"
    agentopz["http_config"]["authorization"]["credentials_file"] = str(secrets / "agentopz-token")
    [slack] = receivers["slack-tickets"]["slack_configs"]
    slack["api_url_file"] = str(secrets / "slack-url")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def running_alertmanager(tmp_path: Path, config: Path) -> Iterator[str]:
    """Run a real Alertmanager with `config`; yields its URL."""
    binary = require_binary("prometheus-alertmanager")

    def command(ports: tuple[int, ...]) -> Command:
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{ports[0]}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        return Command(argv, http_ok(f"http://127.0.0.1:{ports[0]}/-/ready"))

    with launch("alertmanager", command, tmp_path / "alertmanager.log", ports=1, timeout=20) as launched:
        yield f"http://127.0.0.1:{launched.ports[0]}"
