"""End to end: runs sent by the OpenTelemetry SDK -> agentopz -> Prometheus with generated SLO rules ->
Alertmanager with the shipped routing -> the on-call webhook and PagerDuty get the page with its runbook."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from agents import emit_chat, tracer
from conftest import free_port, require_binary, service_body
from opentelemetry import trace
from prom import start_prometheus

from agentopz_otel.slo import load_spec, render_rules

ROOT = Path(__file__).resolve().parent.parent

# A latency SLO whose threshold (7.5s) is not a default bucket boundary: the runs processor adds it
# from slo_file. min_runs 1 so a handful of runs is enough traffic.
SLO_SPEC = """
slos:
  - name: e2e-latency
    match: {service: e2e-svc, agent: e2e-agent}
    objective: 99
    sli: {kind: latency, threshold_seconds: 7.5}
    min_runs: 1
"""


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


@pytest.fixture
def recorder():
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def alertmanager_config(tmp_path: Path, recorder: Recorder) -> Path:
    """The shipped alertmanager.yml with its secret files and endpoints pointed at this test."""
    config = yaml.safe_load((ROOT / "alert-rules" / "alertmanager.yml").read_text())
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "routing-key").write_text("e2e-routing-key")
    (secrets / "slack-url").write_text(f"{recorder.url}/slack")
    (secrets / "webhook-token").write_text("e2e-token")
    config["route"]["group_wait"] = "1s"
    config["route"]["group_interval"] = "1s"
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    [pagerduty] = receivers["pagerduty"]["pagerduty_configs"]
    pagerduty["routing_key_file"] = str(secrets / "routing-key")
    pagerduty["url"] = f"{recorder.url}/pagerduty"
    [webhook] = receivers["oncall-webhook"]["webhook_configs"]
    webhook["url"] = f"{recorder.url}/webhook"
    webhook["http_config"]["authorization"]["credentials_file"] = str(secrets / "webhook-token")
    [slack] = receivers["slack-tickets"]["slack_configs"]
    slack["api_url_file"] = str(secrets / "slack-url")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def alertmanager(tmp_path, recorder):
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={alertmanager_config(tmp_path, recorder)}",
            f"--storage.path={tmp_path / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"alertmanager did not start:\n{log_path.read_text()}") from None
            time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def timed_run(t: trace.Tracer, agent: str, seconds: float) -> None:
    """One run whose root span lasts `seconds` (explicit start and end times), with one LLM call."""
    end = time.time_ns()
    root = t.start_span(
        f"invoke_agent {agent}",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent},
        start_time=end - int(seconds * 1e9),
    )
    with trace.use_span(root, end_on_exit=False):
        emit_chat(t)
    root.end(end_time=end)


def alertmanager_alerts(url: str, alertname: str) -> list[dict]:
    query = urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=5) as response:
        return json.load(response)


@pytest.mark.e2e
def test_slow_runs_page_through_prometheus_and_alertmanager(tmp_path, start_service, recorder, alertmanager):
    spec_path = tmp_path / "slos.yaml"
    spec_path.write_text(SLO_SPEC)
    rules = tmp_path / "slo-rules.yaml"
    rules.write_text(render_rules(load_spec(spec_path), spec_path.name))
    runs = {"grace_seconds": 0.4, "tick_seconds": 0.1, "root_wait_seconds": 1.0, "slo_file": str(spec_path)}
    service = start_service(service_body(runs=runs))
    prometheus = start_prometheus(
        tmp_path, [f"127.0.0.1:{service.admin_port}"], [rules], alertmanager=alertmanager.removeprefix("http://")
    )
    try:
        labels = 'service="e2e-svc",agent="e2e-agent"'
        with tracer("grpc", service.grpc_endpoint, service="e2e-svc") as t:
            # One fast run creates the histogram series; Prometheus must see them before the slow
            # runs, since rate() ignores what a series held when it first appeared.
            timed_run(t, "e2e-agent", 1.0)
            assert service.wait_for("agentopz_run_duration_seconds_count", 1, agent="e2e-agent") == 1
            assert 'le="7.5"' in service.metrics_text()  # the SLO threshold is a bucket boundary
            assert prometheus.wait_for(
                f"count_over_time(agentopz_run_duration_seconds_count{{{labels}}}[1m]) >= 2", timeout=20
            )
            for _ in range(3):
                timed_run(t, "e2e-agent", 10.0)
        assert service.wait_for("agentopz_run_duration_seconds_count", 4, agent="e2e-agent") == 4

        def is_page(body: dict) -> bool:
            return any(alert["labels"].get("alertname") == "AgentLatencySLOBurn" for alert in body["alerts"])

        headers, body = recorder.wait_for("/webhook", is_page, timeout=45)
        summary = "Agent e2e-agent (e2e-svc) is burning the e2e-latency error budget fast (100.0x the sustainable rate)"
        assert headers["authorization"] == "Bearer e2e-token"
        assert (body["receiver"], body["status"]) == ("oncall-webhook", "firing")
        assert body["groupLabels"] == {"alertname": "AgentLatencySLOBurn", "service": "e2e-svc", "agent": "e2e-agent"}
        [alert] = body["alerts"]
        assert alert["status"] == "firing"
        assert alert["labels"] == {
            "alertname": "AgentLatencySLOBurn",
            "severity": "page",
            "slo": "e2e-latency",
            "service": "e2e-svc",
            "agent": "e2e-agent",
        }
        assert alert["annotations"]["runbook_url"] == "http://localhost:9464/runbooks/AgentLatencySLOBurn"
        assert alert["annotations"]["summary"] == summary

        _, event = recorder.wait_for("/pagerduty", lambda body: True, timeout=15)
        assert (event["routing_key"], event["event_action"]) == ("e2e-routing-key", "trigger")
        assert event["payload"]["summary"] == summary
        assert event["links"] == [{"href": "http://localhost:9464/runbooks/AgentLatencySLOBurn", "text": "Runbook"}]

        # The slow burn fires too (1d and 2h), as a ticket; the page inhibits it, so Slack gets nothing.
        states = {}
        deadline = time.monotonic() + 15
        while states.get("ticket") != "suppressed" and time.monotonic() < deadline:
            found = alertmanager_alerts(alertmanager, "AgentLatencySLOBurn")
            states = {a["labels"]["severity"]: a["status"]["state"] for a in found}
            time.sleep(0.5)
        assert states == {"page": "active", "ticket": "suppressed"}
        assert "/slack" not in recorder.paths()
    finally:
        prometheus.stop()
