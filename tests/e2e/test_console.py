"""The console in a real browser: Debian's chromium driven by Playwright, on a running service.

Runs come from the OpenTelemetry SDK (exact, known figures), the figures on the pages are checked
against /metrics, and a rollback is done with the admin token: the next OFREP evaluation returns the
baseline. Screenshots of every page (1280x800) go to test-artifacts/console/ for a reviewer.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.trace import Status, StatusCode
from support import ROOT
from support.admin_api import Admin
from support.browser import new_page
from support.processes import free_port
from support.runs import agent_run
from support.sdk_agent import emit_chat, emit_tool, tracer
from support.service import RunningService, service_body

from agentopz_otel.extensions.console.pages import money

SCREENSHOTS = ROOT / "test-artifacts" / "console"
TOKEN = "console-test-token-0123456789abcdef"
TRACE_URL = "http://tempo.example/explore?traceId={trace_id}"
VERSIONS = {"v1": {"prompt": "support-v1"}, "v2": {"prompt": "support-v2"}}
SLOS = """
slos:
  - name: support-success
    match: {agent: support-bot}
    objective: 90
    sli: {kind: success}
"""


def console_body(tmp_path: Path, analysis: bool = False, probes: dict | None = None, **console) -> str:
    slo_file = tmp_path / "slos.yaml"
    slo_file.write_text(SLOS)
    extensions = {"storage": {"path": str(tmp_path / "state.sqlite")}, "rollouts": {}}
    if analysis:
        extensions["canary_analysis"] = {"interval_seconds": 0.5, "defaults": {"max_run_seconds": 0.5}}
    if probes is not None:
        extensions["probes"] = probes
    extensions["console"] = {"trace_url_template": TRACE_URL, "slo_file": str(slo_file), **console}
    return service_body(
        runs={"grace_seconds": 0.3, "tick_seconds": 0.1, "root_wait_seconds": 0.5, "abandon_after_seconds": 30},
        extensions=extensions,
        service={"admin": {"endpoint": "127.0.0.1:@ADMIN_PORT@", "auth": {"token": TOKEN}}},
    )


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def send_runs(service: RunningService) -> None:
    """support-bot: 6 runs on v1 (one failing its LLM call), 2 on v2 (one failed tool); triage-bot: 1 run."""
    with tracer("grpc", service.grpc_endpoint, service="support-svc") as t:
        for index in range(6):
            attributes = {"agentopz.prompt.version": "v1", "input.value": f"Where is my order {index}?"}
            with agent_run(t, "support-bot", **attributes) as root:
                emit_chat(t, error_type="500" if index == 0 else None)
                emit_tool(t, "lookup_order")
                if index == 0:
                    root.set_status(Status(StatusCode.ERROR))
        for index in range(2):
            with agent_run(t, "support-bot", **{"agentopz.prompt.version": "v2", "input.value": "Cancel it"}):
                emit_chat(t, model="gpt-4o-mini")
                emit_chat(t, model="gpt-4o-mini")
                emit_tool(t, "cancel_order", failed=index == 1)
        with agent_run(t, "triage-bot", **{"agentopz.prompt.version": "t1"}):
            emit_chat(t)


def wait_for_runs(service: RunningService, count: int) -> None:
    deadline = time.monotonic() + 20
    while service.value("agentopz_runs_total") < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.value("agentopz_runs_total") == count
    time.sleep(1.2)  # the console takes the finished runs in within a second


def cells(page, agent: str) -> dict[str, str]:
    """The fleet row of `agent` as {column header: text}."""
    headers = page.locator("table.fleet thead th").all_inner_texts()
    row = page.locator(f'table.fleet tr[data-agent="{agent}"] td').all_inner_texts()
    return dict(zip(headers, row, strict=True))


def metric_mean_cost(service: RunningService, **labels: str) -> float:
    return service.value("agentopz_run_cost_usd_sum", **labels) / service.value("agentopz_run_cost_usd_count", **labels)


def test_pages_show_the_metrics_figures_and_a_rollback_needs_the_token(start_service, tmp_path, chromium):
    service = start_service(console_body(tmp_path, analysis=True, show_content=True))
    admin = Admin(service.admin_url, token=TOKEN, actor="ci")
    admin.define("support-bot", VERSIONS, "v1")
    admin.start("support-bot", "v2", [5, 25, 50, 100], reason="new tone")
    send_runs(service)
    wait_for_runs(service, 9)
    base = f"http://localhost:{service.admin_port}"

    page = new_page(chromium)
    page.goto(base + "/")
    shot(page, "fleet")
    support = cells(page, "support-bot")
    total = service.value("agentopz_runs_total", agent="support-bot")
    success = service.value("agentopz_runs_total", agent="support-bot", outcome="success")
    assert (total, success) == (8, 7)
    assert support["Runs"] == "8"
    assert support["Success"] == f"{success / total * 100:.1f}%" == "87.5%"
    assert support["Cost/run"] == money(metric_mean_cost(service, agent="support-bot"))
    assert support["In flight"] == "0" == str(int(service.value("agentopz_runs_in_flight", agent="support-bot")))
    # 1 of 8 runs failed against a 90% objective (10% allowed): 12.5% > 10% spends more than the budget.
    assert page.locator('tr[data-reason-for="support-bot"]').inner_text() == (
        "support-success: 1 of 8 runs bad (success) in the last day, 12.5% where 10.0% is allowed"
    )
    assert page.locator('tr[data-reason-for="triage-bot"]').count() == 0
    assert page.locator('tr[data-agent="support-bot"] .mark.bad').count() == 1
    assert page.locator('tr[data-agent="triage-bot"] .mark.bad').count() == 0
    assert cells(page, "triage-bot")["Runs"] == "1"

    page.click("text=support-bot")
    page.wait_for_url(re.compile(r".*/agents/support-bot"))
    shot(page, "agent")
    versions = page.locator("table.versions")
    assert versions.locator("thead th").all_inner_texts()[1:] == ["All versions", "v1\nbaseline", "v2\ncandidate"]
    runs_row = versions.locator("tbody tr").first.locator("td").all_inner_texts()
    assert runs_row == ["8", "6", "2"]
    success_row = versions.locator("tbody tr").nth(2).locator("td").all_inner_texts()
    assert success_row == ["87.5%", "83.3%", "100.0%"]
    for version in ("v1", "v2"):
        cost_row = versions.locator("tbody tr").nth(4).locator("td").all_inner_texts()
        index = {"v1": 1, "v2": 2}[version]
        assert cost_row[index] == money(metric_mean_cost(service, agent="support-bot", prompt_version=version))
    tools = page.locator("h2:text('Tools') + table tbody tr").all_inner_texts()
    assert tools == ["cancel_order\t2\t1\t50.0%", "lookup_order\t6\t0\t0.0%"]
    assert service.value("agentopz_tool_calls_total", tool="cancel_order", status="error") == 1
    models = page.locator("h2:text('LLM calls by model') + table tbody tr").all_inner_texts()
    assert models == ["gpt-4o\t6\t1\t16.7%", "gpt-4o-mini\t4\t0\t0.0%"]
    latest = page.locator("h2:text('Latest runs') + table tbody tr")
    assert latest.count() == 8
    assert "Cancel it" in latest.first.inner_text()
    link = latest.first.locator("a[title^='trace']")
    assert re.fullmatch(r"http://tempo\.example/explore\?traceId=[0-9a-f]{32}", link.get_attribute("href"))

    # Read-only by default: the roll-back button is refused without the token.
    time.sleep(2)  # runs count once their start interval (0.5 s) is max_run_seconds (0.5 s) old
    page.goto(base + "/rollouts")
    shot(page, "rollouts")
    analysis = page.locator("#agent-support-bot")
    assert "Runs seen: v1 6, v2 2" in analysis.inner_text()
    assert (
        "Verdicts spend one false-rollback budget 5% per rollout (so per day), split: quality 3.00%, cost 0.75%, "
        "duration 0.75%, hard_limits 0.50%; regression alerts defer to this analysis."
    ) in analysis.inner_text()
    guards = analysis.locator("table.guards tbody tr td:first-child").all_inner_texts()
    verdicts = analysis.locator("table.guards tbody tr td:nth-child(2)").all_inner_texts()
    # Two candidate runs decide nothing yet; no candidate run broke a hard limit.
    assert dict(zip(guards, verdicts, strict=True)) == {
        "quality": "inconclusive",
        "cost": "inconclusive",
        "duration": "inconclusive",
        "hard_limits": "pass",
    }
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#agent-support-bot button[data-action=rollback]")
    assert "Not signed in" in page.locator("h1").inner_text()
    assert admin.evaluate("support-bot", "conversation-1").body["reason"] == "SPLIT"

    page.goto(base + "/login?next=/rollouts")
    page.fill("input[name=name]", "Dana")
    page.fill("input[name=token]", "wrong")
    page.click("button[type=submit]")
    assert "That is not the admin token." in page.content()
    page.fill("input[name=name]", "Dana")
    page.fill("input[name=token]", TOKEN)
    shot(page, "login")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/rollouts$"))
    [cookie] = page.context.cookies()
    assert (cookie["name"], cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (
        "agentopz_console",
        True,
        True,
        "Strict",
    )
    assert TOKEN not in cookie["value"]

    page.click("#agent-support-bot button[data-action=rollback]")
    page.wait_for_url(re.compile(r".*/rollouts\?done=rollback:support-bot"))
    shot(page, "rolled-back")
    assert "Done: roll back support-bot." in page.locator(".notice").inner_text()
    assert page.locator("#agent-support-bot .badge.s-rolled_back").inner_text() == "rolled_back"
    newest = page.locator("table.audit tbody tr").first.inner_text()
    assert "rollback" in newest and "Dana (user)" in newest
    for key in ("conversation-1", "conversation-2", "conversation-3"):
        reply = admin.evaluate("support-bot", key).body
        assert (reply["variant"], reply["reason"]) == ("v1", "STATIC"), reply
    [entry] = [e for e in admin.ok("GET", "/api/v1/history?agent=support-bot")["entries"] if e["action"] == "rollback"]
    assert (entry["actor"], entry["actor_kind"]) == ("Dana", "user")

    page.goto(base + "/runbooks/AgentSuccessSLOBurn")
    shot(page, "runbook")
    assert page.locator("article.runbook h1").inner_text().startswith("AgentSuccessSLOBurn")


def test_reading_works_without_javascript_and_actions_confirm_on_a_page(start_service, tmp_path, chromium):
    service = start_service(console_body(tmp_path))
    admin = Admin(service.admin_url, token=TOKEN)
    admin.define("support-bot", VERSIONS, "v1")
    admin.start("support-bot", "v2", [5, 25, 50, 100])
    send_runs(service)
    wait_for_runs(service, 9)
    base = f"http://localhost:{service.admin_port}"
    page = new_page(chromium, java_script_enabled=False, color_scheme="dark")
    page.goto(base + "/agents/support-bot")
    shot(page, "agent-dark-no-script")
    assert page.locator("table.versions tbody tr").first.locator("td").all_inner_texts() == ["8", "6", "2"]
    # Content display is off: no input text anywhere, no input column.
    assert "Where is my order" not in page.content() and "Input (start)" not in page.content()

    page.goto(base + "/login")
    page.fill("input[name=name]", "Sam")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.click("#agent-support-bot button[data-action=pause]")
    assert page.locator("h1").inner_text() == "Pause support-bot?"
    assert admin.ok("GET", "/api/v1/rollouts/support-bot")["state"] == "progressing"
    page.click("button[data-action=pause]")
    page.wait_for_url(re.compile(r".*/rollouts\?done=pause:support-bot"))
    assert admin.ok("GET", "/api/v1/rollouts/support-bot")["state"] == "paused"


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_actions_refuse_cross_site_requests_and_stale_forms(start_service, tmp_path, chromium):
    service = start_service(console_body(tmp_path))
    admin = Admin(service.admin_url, token=TOKEN)
    admin.define("support-bot", VERSIONS, "v1")
    admin.start("support-bot", "v2", [5, 25, 50, 100])
    base = f"http://localhost:{service.admin_port}"
    page = new_page(chromium)
    page.goto(base + "/login")
    page.fill("input[name=name]", "Eve")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    [cookie] = page.context.cookies()
    session = f"agentopz_console={cookie['value']}"
    csrf = page.locator("#agent-support-bot input[name=csrf]").first.get_attribute("value")
    form = f"csrf={csrf}&confirmed=yes&reason=x".encode()
    url = f"{base}/rollouts/support-bot/rollback"
    kinds = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": session}
    assert _post(url, form, {**kinds, "Origin": "http://evil.example"}) == 403
    assert _post(url, form, kinds) == 403  # no Origin or Referer at all
    assert _post(url, b"confirmed=yes&csrf=stale", {**kinds, "Origin": base}) == 403
    rebound = {**kinds, "Origin": "http://attacker.example:1", "Host": "attacker.example:1"}
    assert _post(url, form, rebound) == 403  # a DNS-rebinding name is not this console
    assert admin.ok("GET", "/api/v1/rollouts/support-bot")["state"] == "progressing"
    assert _post(url, form, {**kinds, "Origin": base}) == 200  # after the redirect to /rollouts
    assert admin.ok("GET", "/api/v1/rollouts/support-bot")["state"] == "rolled_back"
    history = admin.ok("GET", "/api/v1/history?agent=support-bot")["entries"]
    assert [(e["action"], e["actor"]) for e in history][:1] == [("rollback", "Eve")]


def test_runbooks_are_served_and_an_unknown_one_is_404(start_service, tmp_path):
    service = start_service(console_body(tmp_path))
    shipped = sorted(p.stem for p in (ROOT / "docs" / "runbooks").glob("*.md") if p.name != "README.md")
    with urllib.request.urlopen(f"{service.admin_url}/runbooks", timeout=5) as response:
        index = response.read().decode()
    assert re.findall(r'href="/runbooks/([A-Za-z]+)"', index) == shipped
    with urllib.request.urlopen(f"{service.admin_url}/runbooks/PromptVersionQualityRegression", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "<h1>PromptVersionQualityRegression" in response.read().decode()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{service.admin_url}/runbooks/NoSuchAlert", timeout=5)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as bad_window:
        urllib.request.urlopen(f"{service.admin_url}/?window=7d", timeout=5)
    assert bad_window.value.code == 400


def test_the_probe_column_and_wasted_spend_match_the_metrics(start_service, tmp_path, chromium):
    nobody = f"http://127.0.0.1:{free_port()}/chat"
    probes = {
        "probes": [
            # The service's own /healthz stands in for support-bot's endpoint: it answers 200.
            {"agent": "support-bot", "url": "http://127.0.0.1:@ADMIN_PORT@/healthz", "interval_seconds": 1},
            {"agent": "triage-bot", "url": nobody, "interval_seconds": 1},
            # Probed, never ran: the fleet lists it all the same.
            {"agent": "night-bot", "url": nobody, "interval_seconds": 1},
        ]
    }
    service = start_service(console_body(tmp_path, probes=probes))
    send_runs(service)
    wait_for_runs(service, 9)
    assert service.wait_for("agentopz_probe_results_total", 1, agent="support-bot", reason="success") >= 1
    assert service.wait_for("agentopz_probe_results_total", 1, agent="night-bot", reason="connect_error") >= 1
    assert service.wait_for("agentopz_probe_results_total", 1, agent="triage-bot", reason="connect_error") >= 1
    base = f"http://localhost:{service.admin_port}"

    page = new_page(chromium)
    page.goto(base + "/")
    shot(page, "fleet-probes")
    assert service.value("agentopz_probe_success", agent="support-bot") == 1
    assert re.fullmatch(r"ok \d+ ms", cells(page, "support-bot")["Probe"])
    for agent in ("triage-bot", "night-bot"):
        assert service.value("agentopz_probe_success", agent=agent) == 0
        assert service.value("agentopz_probe_last_success_timestamp_seconds", agent=agent) == 0
        assert cells(page, agent)["Probe"] == "connect_error last ok never"
    assert cells(page, "night-bot")["Runs"] == "0"

    # Wasted spend: what support-bot's failed run (llm_error, on v1) cost, as
    # agentopz_run_cost_usd_total counts it; the v2 run whose tool failed recovered; triage-bot's succeeded.
    wasted = service.value("agentopz_run_cost_usd_total", agent="support-bot") - service.value(
        "agentopz_run_cost_usd_total", agent="support-bot", outcome="success"
    )
    assert wasted > 0
    assert service.value("agentopz_runs_total", agent="support-bot", outcome="llm_error") == 1
    assert service.value("agentopz_runs_total", agent="support-bot", outcome="success") == 7
    assert cells(page, "support-bot")["Wasted"] == money(wasted)
    assert cells(page, "triage-bot")["Wasted"] == "$0"

    page.goto(base + "/agents/support-bot")
    shot(page, "agent-probe")
    assert re.fullmatch(r"Probe: ok \d+ ms", page.locator("p.probe").inner_text())
    rows = page.locator("table.versions tbody tr")
    wasted_row = rows.filter(has=page.locator("th", has_text="Wasted spend")).locator("td").all_inner_texts()
    by_version = {
        version: service.value("agentopz_run_cost_usd_total", agent="support-bot", prompt_version=version)
        - service.value("agentopz_run_cost_usd_total", agent="support-bot", prompt_version=version, outcome="success")
        for version in ("v1", "v2")
    }
    assert by_version == {"v1": wasted, "v2": 0}
    assert wasted_row == [money(wasted), money(wasted), "$0"]

    # The agent that never ran has a page too, with its probe.
    page.goto(base + "/agents/night-bot")
    assert page.locator("p.probe").inner_text() == "Probe: connect_error last ok never"
    page.goto(base + "/agents/nobody-at-all")
    assert page.locator("h1").inner_text() == "Not found"


def test_agent_page_shows_triage_evidence_and_routes_a_tool_and_a_model(start_service, tmp_path, chromium):
    """The triage table's numbers match /metrics; switching a tool off and falling back to a model
    from the page are served over OFREP at once and audited under the signed-in name."""
    service = start_service(console_body(tmp_path))
    base = service.admin_url
    with tracer("grpc", service.grpc_endpoint, service="support-svc") as t:
        for index in range(12):
            with agent_run(t, "support-bot", **{"agentopz.prompt.version": "v1"}) as root:
                emit_chat(t)
                emit_tool(t, "search_kb", failed=index < 3)
                if index < 3:
                    root.set_status(Status(StatusCode.ERROR))
    wait_for_runs(service, 12)
    tool_errors = service.value("agentopz_runs_total", agent="support-bot", outcome="tool_error")
    assert tool_errors == 3

    page = new_page(chromium)
    page.goto(base + "/agents/support-bot")
    rows = {
        row.locator("th").inner_text(): row.locator("td").all_inner_texts()
        for row in page.locator("table.triage tbody tr").all()
    }
    assert rows["Runs"] == ["0", "12"]
    # 3 of the 12 runs ended tool_error: 25.0% now; the half hour before had no runs, so no share.
    assert rows["Share of runs ending tool_error or timeout (tool)"] == ["-", f"{tool_errors / 12 * 100:.1f}%"]
    assert rows["Share of runs ending llm_error (upstream)"] == ["-", "0.0%"]
    assert rows["Tool calls per run (mean)"] == ["-", "1.0"]
    # Without the half hour before there is nothing to compare: no suspect is named.
    assert page.locator("p.suspects").inner_text().startswith("No suspect")
    assert page.locator('#routing ~ table tr[data-tool="search_kb"] td').all_inner_texts()[:2] == [
        "support-bot.tool.search_kb",
        "not set (code default)",
    ]
    shot(page, "agent-triage")

    page.goto(base + "/login?next=/agents/support-bot")
    page.fill("input[name=name]", "Rita")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill('tr[data-tool="search_kb"] input[name=reason]', "kb down")
    page.click('tr[data-tool="search_kb"] button[data-action=tool-off]')
    assert page.locator(".notice").inner_text() == "Done: switch tool off."
    admin = Admin(base)
    answer = admin.evaluate("support-bot.tool.search_kb").body
    assert (answer["value"], answer["variant"], answer["reason"]) == (False, "off", "STATIC")
    assert page.locator('tr[data-tool="search_kb"] td').all_inner_texts()[1] == "off"

    page.fill(".model-route input[name=model]", "gpt-4o-mini")
    page.click(".model-route button[data-action=fallback]")
    assert admin.evaluate("support-bot.model").body["value"] == "gpt-4o-mini"
    assert page.locator(".model-route").get_attribute("data-model") == "gpt-4o-mini"
    shot(page, "agent-routing")
    entries = admin.ok("GET", "/api/v1/history?agent=support-bot")["entries"]
    assert [(e["action"], e["actor"], e["reason"]) for e in entries] == [
        ("fallback", "Rita", "fallback from the console"),
        ("tool_off", "Rita", "kb down"),
    ]
    # Without a session (or from another site) nothing changes.
    url = f"{base}/routes/support-bot/tool-on"
    kinds = {"Content-Type": "application/x-www-form-urlencoded"}
    assert _post(url, b"tool=search_kb&confirmed=yes", {**kinds, "Origin": base}) == 401
    assert _post(url, b"tool=search_kb&confirmed=yes", {**kinds, "Origin": "http://evil.example"}) == 403
    assert admin.evaluate("support-bot.tool.search_kb").body["value"] is False
