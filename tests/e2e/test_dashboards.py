"""Grafana dashboards, their provisioning and the stack files: structure, and every panel query run
against a real Prometheus that scraped the real service while the demo fleet sent traffic."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support import ROOT
from support.dashboards import DASHBOARDS, all_panels, dashboards, substitute
from support.demo import demo_command, stack_body
from support.otlp_proto import make_request, make_span
from support.processes import require_binary
from support.prometheus import start_prometheus
from support.service import DEFAULT_BODY

PROVISIONING = DASHBOARDS / "provisioning"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
DS = {"type": "prometheus", "uid": "${datasource}"}

# Queries that must come back empty from the test's Prometheus, and why.
EMPTY = {
    ("agentopz-cost", "Mean cost per run: now vs a week ago", "B"): "offset 7d: the test has no data a week old",
    ("agentopz-cost", "Cost per run change vs a week ago", "A"): "offset 7d: the test has no data a week old",
    ("agentopz-health", "Evicted runs by reason", "A"): "no run is evicted: max_open_runs is never reached",
}
# Queries that may or may not have data in a short test, and why; they must still parse.
MAYBE_EMPTY = {
    ("agentopz-fleet", "Firing alerts", "A"): "whether an alert fires within seconds depends on timing",
    ("agentopz-slos", "SLO alerts pending or firing", "A"): "whether a burn-rate alert fires depends on timing",
    **{
        ("agentopz-prompts", title, ref): "the demo starts no rollout; test_canary_analysis.py queries these"
        for title, refs in (
            ("Canary analysis: guards", "ABC"),
            ("Canary analysis: evidence against the candidate", "A"),
            ("Canary analysis: runs seen per version", "A"),
            ("Canary analysis: decisions", "A"),
            ("Canary analysis data source", "A"),
        )
        for ref in refs
    },
}


def walk(node, path: str = "") -> Iterator[tuple[str, str, object]]:
    """(path, key, value) of every key of every mapping in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from walk(item, f"{path}[{index}]")


def load_build_module():
    spec = importlib.util.spec_from_file_location("dashboards_build", DASHBOARDS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- structure ------------------------------------------------------------------------------------


def test_committed_dashboards_are_the_build_script_output():
    rendered = load_build_module().render()
    assert sorted(rendered) == sorted(dashboards())
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name} is stale: run python dashboards/build.py"
    check = subprocess.run([sys.executable, str(DASHBOARDS / "build.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_dashboards_have_unique_uids_titles_and_the_expected_set():
    loaded = dashboards()
    uids = [d["uid"] for d in loaded.values()]
    assert sorted(uids) == sorted(
        ["agentopz-fleet", "agentopz-agent", "agentopz-cost", "agentopz-prompts", "agentopz-slos", "agentopz-health"]
    )
    assert len({d["title"] for d in loaded.values()}) == len(loaded)
    assert all(len(uid) <= 40 for uid in uids)


@pytest.mark.parametrize("name", sorted(path.name for path in DASHBOARDS.glob("*.json")))
def test_dashboard_structure(name):
    dashboard = dashboards()[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in ("agent", "prompt_version"):
        assert variables[variable]["type"] == "query"
        assert variables[variable]["definition"].startswith("label_values(")
        assert variables[variable]["query"]["query"] == variables[variable]["definition"]
        assert variables[variable]["allValue"] == ".*"
        assert variables[variable]["datasource"] == DS
    # Every data source reference is the variable; no uid other than the dashboard's own anywhere.
    for path, key, value in walk(dashboard):
        if key == "datasource":
            assert value == DS, f"{name}{path}: {value}"
        if key == "uid" and path:
            assert path.endswith(".datasource"), f"{name}{path}: hard-coded uid {value!r}"
    assert dashboard["annotations"]["list"] == []
    panels = list(all_panels(dashboard))
    assert len(panels) >= 8
    assert len({p["id"] for p in panels}) == len(panels)
    assert len({p["title"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        where = f"{name}: {panel['title']}"
        assert panel["type"] != "row", where
        assert panel["description"].strip(), where
        assert panel["fieldConfig"]["defaults"]["unit"], where
        assert panel["datasource"] == DS, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == DS, where
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{where} overlaps another panel"
                cells.add((x, y))


def test_agent_detail_cost_panel_has_exemplars():
    dashboard = dashboards()["agentopz-agent.json"]
    exemplar_targets = [
        target for panel in all_panels(dashboard) for target in panel["targets"] if target.get("exemplar")
    ]
    assert any("agentopz_run_cost_usd_bucket" in target["expr"] for target in exemplar_targets)


def test_provisioning_files():
    datasources = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        assert document["apiVersion"] == 1
        for source in document["datasources"]:
            datasources[source["uid"]] = source
    prometheus = [s for s in datasources.values() if s["type"] == "prometheus"]
    assert len(prometheus) == 1
    [destination] = prometheus[0]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "trace_id"  # the exemplar label agentopz_run_cost_usd carries
    assert datasources[destination["datasourceUid"]]["type"] == "tempo"
    assert prometheus[0]["isDefault"] is True
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "agentopz.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    # The compose file mounts the dashboards where the provider looks for them.
    compose = yaml.safe_load(COMPOSE.read_text())
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert f"../dashboards:{provider['options']['path']}:ro" in grafana_volumes
    assert "../dashboards/provisioning:/etc/grafana/provisioning:ro" in grafana_volumes


# -- the stack files ------------------------------------------------------------------------------


def compose_command() -> list[str]:
    """`docker compose` when it works, else docker-compose: skips, or fails under CI, without either."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [require_binary("docker-compose")]


def test_docker_compose_file_is_valid():
    command = compose_command()
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60, cwd=COMPOSE.parent
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) >= {"agentopz", "demo", "prometheus", "alertmanager", "grafana", "tempo"}


def test_compose_wiring():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert services["agentopz"]["build"]["context"] == ".."
    assert (COMPOSE.parent / services["agentopz"]["build"]["context"] / "Dockerfile").exists()
    # Every file or folder the stack mounts from the repository exists.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["job_name"] == "agentopz"  # the self-monitoring alerts match job="agentopz"
    assert job["static_configs"][0]["targets"] == ["agentopz:9464"]
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    config = yaml.safe_load((ROOT / "collector-config" / "agentopz.yaml").read_text())
    assert config["exporters"]["otlp/tempo"]["endpoint"] == "${env:TRACE_BACKEND:-http://tempo:4317}"


def test_stack_prometheus_config_loads_every_shipped_rule_file_and_passes_promtool(tmp_path):
    from support.processes import require_binary

    promtool = require_binary("promtool")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    mounted = "/etc/prometheus/rules/"  # alert-rules/ in deploy/docker-compose.yml
    assert all(path.startswith(mounted) for path in config["rule_files"])
    local = [ROOT / "alert-rules" / path.removeprefix(mounted) for path in config["rule_files"]]
    assert sorted(local) == rule_files()
    config["rule_files"] = [str(path) for path in local]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(local)} rule files found" in result.stdout


def test_collector_configs():
    gateway = yaml.safe_load((ROOT / "collector-config" / "otelcol-gateway.yaml").read_text())
    balancing = yaml.safe_load((ROOT / "collector-config" / "otelcol-loadbalancing.yaml").read_text())
    for config in (gateway, balancing):
        for pipeline in config["service"]["pipelines"].values():
            for kind in ("receivers", "processors", "exporters"):
                for component in pipeline.get(kind, []):
                    assert component in config[kind], component
    assert balancing["exporters"]["loadbalancing"]["routing_key"] == "traceID"
    static = balancing["exporters"]["loadbalancing"]["resolver"]["static"]["hostnames"]
    assert len(static) >= 2


# -- every query against a real Prometheus --------------------------------------------------------


def rule_files() -> list[Path]:
    """The Prometheus rule files shipped in alert-rules/ (YAML documents with `groups`)."""
    found = []
    for path in sorted((ROOT / "alert-rules").glob("*.y*ml")):
        document = yaml.safe_load(path.read_text())
        if isinstance(document, dict) and "groups" in document:
            found.append(path)
    return found


def post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def provoke_self_metrics(service) -> None:
    """What the demo never does: invalid ids, undecodable requests, unusable attributes, a late span."""
    url = f"{service.http_url}/v1/traces"
    bad = make_span("chat", {"gen_ai.operation.name": "chat"}, trace_id=bytes(16))
    assert post(url, make_request([bad]).SerializeToString(), "application/x-protobuf") == 200
    assert post(url, b"\x0f\xff not protobuf", "application/x-protobuf") == 400
    trace_id = bytes.fromhex("5ca1ab1e" * 4)
    root = make_span(
        "invoke_agent probe", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "probe"}, trace_id
    )
    chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": -5,
        "gen_ai.usage.output_tokens": 10,
    }
    first = make_span("chat gpt-4o-mini", chat, trace_id, parent=root.span_id)
    tool = make_span("execute_tool probe_tool", {"gen_ai.operation.name": "execute_tool"}, trace_id, root.span_id)
    request = make_request([first, tool, root], "probe-svc")
    assert post(url, request.SerializeToString(), "application/x-protobuf") == 200
    assert service.wait_for("agentopz_runs_total", 1, agent="probe") == 1
    late = make_span("chat gpt-4o-mini", chat, trace_id, parent=root.span_id)
    assert post(url, make_request([late], "probe-svc").SerializeToString(), "application/x-protobuf") == 200
    assert service.wait_for("agentopz_late_spans_total", 1) == 1


@pytest.fixture
def scraped_demo(start_service, tmp_path):
    """The service on the stack config (forwarding to a second instance) scraped by Prometheus with the
    shipped rules, after 20 seconds of demo traffic."""
    sink = start_service(DEFAULT_BODY)
    # A low cap on the tool label so the label-overflow panel has something to show.
    # A probe standing in for the demo's support agent (which serves no HTTP): the service's own
    # /healthz, so the probe panels have data.
    probes = {
        "probes": [{"agent": "support-triage", "url": "http://127.0.0.1:ADMIN_PORT/healthz", "interval_seconds": 1}]
    }
    body = stack_body(
        tmp_path / "runs.jsonl",
        forward_to=f"http://127.0.0.1:{sink.grpc_port}",
        cardinality={"limits": {"tool": 6}},
        extensions={"probes": probes},
        abandon_after_seconds=8,
    )
    service = start_service(body)
    prometheus = start_prometheus(tmp_path, [f"127.0.0.1:{service.admin_port}"], rule_files())
    try:
        provoke_self_metrics(service)
        demo = subprocess.run(
            demo_command(
                "--endpoint", service.grpc_endpoint, "--duration", "20", "--rate", "20", "--speed", "10", "--seed", "1"
            ),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert demo.returncode == 0, demo.stderr
        assert prometheus.wait_for('agentopz_runs_total{outcome="budget_exceeded"}', timeout=20)
        assert prometheus.wait_for("slo:period_error_budget_remaining:ratio", timeout=20)
        time.sleep(2)  # one more scrape and rule evaluation
        yield prometheus
    finally:
        prometheus.stop()


def query(prometheus, expr: str) -> tuple[list[dict] | None, str]:
    try:
        return prometheus.query(expr), ""
    except urllib.error.HTTPError as error:
        return None, error.read().decode(errors="replace")


def finite(results: list[dict]) -> bool:
    return any(math.isfinite(float(result["value"][1])) for result in results)


def test_every_panel_and_variable_query_returns_data_from_demo_traffic(scraped_demo):
    prometheus = scraped_demo
    passes = [
        {"agent": ".*", "prompt_version": ".*", "slo": ".*"},  # All, as a dashboard opens
        {"agent": "support-triage", "prompt_version": "(v12|v13)", "slo": "agent-success"},
    ]
    problems = []
    checked = 0
    for dashboard in dashboards().values():
        for variables in passes:
            values = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s", **variables}
            for panel in all_panels(dashboard):
                for target in panel["targets"]:
                    key = (dashboard["uid"], panel["title"], target["refId"])
                    expr = substitute(target["expr"], values)
                    results, error = query(prometheus, expr)
                    checked += 1
                    where = f"{key} with {variables}: {expr}"
                    if results is None:
                        problems.append(f"{where}\n  does not parse: {error}")
                    elif key in EMPTY:
                        if results:
                            problems.append(f"{where}\n  expected empty ({EMPTY[key]}), got {results[:2]}")
                    elif key in MAYBE_EMPTY:
                        continue
                    elif not results:
                        problems.append(f"{where}\n  no data")
                    elif not finite(results):
                        problems.append(f"{where}\n  only NaN/Inf: {results[:3]}")
    assert not problems, f"{len(problems)} of {checked} queries:\n" + "\n".join(problems)
    assert checked > 200

    # What the panels are there to show. The runaway loop's cost was visible while it was running
    # (seed 1: about 10.7 USD at the end, above 5 USD for its last third)...
    [in_flight] = prometheus.query('max_over_time(agentopz_in_flight_run_max_cost_usd{agent="research-assistant"}[5m])')
    assert 5 < float(in_flight["value"][1]) < 11
    # ... and the canary costs several times as much per run as the stable version.
    per_version = {
        r["metric"]["prompt_version"]: float(r["value"][1])
        for r in prometheus.query(
            'sum by (prompt_version) (agentopz_run_cost_usd_sum{agent="support-triage"})'
            ' / sum by (prompt_version) (agentopz_run_cost_usd_count{agent="support-triage"})'
        )
    }
    assert set(per_version) == {"v12", "v13"}
    assert per_version["v13"] > 5 * per_version["v12"]

    # The template variables' label_values queries.
    now = time.time()
    for dashboard in dashboards().values():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            selector = substitute(match.group(1), {"agent": ".*"})
            values = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": selector})
            assert values, (dashboard["uid"], variable["name"])
            if variable["name"] == "agent":
                assert set(values) >= {"support-triage", "order-tracker", "research-assistant", "code-reviewer"}
            if variable["name"] == "prompt_version":
                assert {"v12", "v13", "3.2.0", "unknown"} <= set(values)
            if variable["name"] == "slo":
                assert values == ["agent-probes", "agent-success"]
    [panel] = [p for p in all_panels(dashboards()["agentopz-agent.json"]) if p["title"].startswith("Cost per run (")]
    [target] = [t for t in panel["targets"] if t["exemplar"]]
    bucket = re.search(r"agentopz_run_cost_usd_bucket\{[^}]*\}", target["expr"]).group(0)
    selector = substitute(bucket, {"agent": "research-assistant", "prompt_version": ".*"})
    data = prometheus.api("query_exemplars", query=selector, start=str(now - 600), end=str(now + 60))
    exemplars = [e for series in data for e in series["exemplars"]]
    assert exemplars
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["labels"]["trace_id"]) for e in exemplars)
    # The runaway loop's run is among them (the only research run costing over 5 USD).
    assert max(float(e["value"]) for e in exemplars) > 5
