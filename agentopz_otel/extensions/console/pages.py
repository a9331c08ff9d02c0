"""Server-rendered HTML for the console: plain markup, a stylesheet, inline SVG charts.

Every value from telemetry is escaped. Pages read without JavaScript; the only script (console.js)
asks for confirmation before an action.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ...records import OUTCOMES
from ...text import visible_direction_controls
from ...triage import MIN_RUNS, MIN_SCORE, SUSPECT_OUTCOMES
from ..probes import ProbeStatus
from ..probes.core import SUCCESS as PROBE_SUCCESS
from .figures import AgentStatus, Figures, Triage, calls_table
from .history import WINDOWS, Detail, RunEntry

NAV = (("fleet", "/", "Fleet"), ("rollouts", "/rollouts", "Rollouts"), ("runbooks", "/runbooks", "Runbooks"))
FLEET_COLUMNS = (
    "Agent",
    "Runs",
    "Runs/min",
    "Success",
    "Outcomes",
    "Cost/run",
    "p95 cost",
    "p95 duration",
    "Wasted",
    "In flight",
    "Last run",
    "Probe",
    "SLO budget (24 h)",
)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ACTION_LABELS = {
    "rollback": "Roll back",
    "promote": "Promote",
    "pause": "Pause",
    "resume": "Resume",
    "disable": "Disable agent",
    "enable": "Enable agent",
}
ROUTE_LABELS = {
    "tool-off": "Switch tool off",
    "tool-on": "Switch tool on",
    "fallback": "Fall back to model",
    "clear-model": "Clear model fallback",
}


@dataclass
class PageContext:
    """What every page needs beside its own data."""

    title: str
    active: str  # fleet | rollouts | runbooks
    since: float
    now: float
    signed_in_as: str | None = None
    csrf: str | None = None
    trace_url_template: str | None = None
    show_content: bool = False
    notice: str | None = None
    extra_head: list[str] = field(default_factory=list)


def escape(text: str) -> str:
    """HTML-escaped text (quotes included) with direction controls made visible."""
    return visible_direction_controls(html.escape(text))


def agent_href(agent: str) -> str:
    return "/agents/" + quote(agent, safe="")


def money(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.4f}"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.3f}"


def share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def budget_left(value: float | None) -> str:
    """The share of an error budget left; an overspent budget says how many times over it is."""
    if value is None or value >= 0:
        return share(value)
    return f'<span class="bad">none ({1 - value:.1f}x spent)</span>'


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def ago(timestamp: float, now: float) -> str:
    if not timestamp:
        return "never"
    elapsed = max(0.0, now - timestamp)
    if elapsed < 90:
        return f"{elapsed:.0f} s ago"
    if elapsed < 5400:
        return f"{elapsed / 60:.0f} min ago"
    if elapsed < 172800:
        return f"{elapsed / 3600:.1f} h ago"
    return f"{elapsed / 86400:.0f} d ago"


def clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp)) if timestamp else "-"


def sparkline(values: Sequence[int], label: str) -> str:
    """Values as an inline SVG polyline (oldest left), scaled to the largest."""
    if not values:
        return ""
    top = max(values)
    width = len(values) - 1 or 1
    if top:
        points = " ".join([f"{index},{16 - 15 * value // top}" for index, value in enumerate(values)])
    else:
        points = f"0,16 {width},16"
    return (
        f'<svg class="spark" viewBox="0 0 {width} 17" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(label)}"><title>{escape(label)}</title><polyline points="{points}"/></svg>'
    )


def _outcome_rank(outcome: str) -> int:
    return OUTCOMES.index(outcome) if outcome in OUTCOMES else len(OUTCOMES)


def outcome_bar(outcomes: dict[str, int]) -> str:
    """The outcome mix as one stacked SVG bar, with the counts in its title."""
    total = sum(outcomes.values())
    if not total:
        return '<span class="muted">-</span>'
    ordered = sorted(outcomes.items(), key=lambda item: _outcome_rank(item[0]))
    parts = []
    offset = 0.0
    for outcome, count in ordered:
        width = 100 * count / total
        parts.append(f'<rect class="o-{escape(outcome)}" x="{offset:.2f}" width="{width:.2f}" height="10"/>')
        offset += width
    words = ", ".join(f"{outcome} {count}" for outcome, count in ordered)
    return (
        f'<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label="{escape(words)}">'
        f"<title>{escape(words)}</title>{''.join(parts)}</svg>"
    )


def trace_link(trace_id: str, template: str | None, text: str | None = None) -> str:
    label = escape(text or trace_id[:12])
    if not template or not trace_id:
        return f'<code title="{escape(trace_id)}">{label}</code>'
    href = template.replace("{trace_id}", quote(trace_id, safe=""))
    return (
        f'<a href="{escape(href)}" rel="noopener noreferrer" title="trace {escape(trace_id)}"><code>{label}</code></a>'
    )


def layout(page: PageContext, body: str) -> str:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if page.active == key else ""}>{label}</a>' for key, href, label in NAV
    )
    if page.signed_in_as is not None:
        session = (
            f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
            f'value="{escape(page.csrf or "")}">Signed in as <b>{escape(page.signed_in_as)}</b> '
            f'<button type="submit">Sign out</button></form>'
        )
    else:
        session = '<a href="/login">Sign in to act</a>'
    notice = f'<p class="notice" role="status">{escape(page.notice)}</p>' if page.notice else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{escape(page.title)} · agentopz</title>"
        '<link rel=stylesheet href="/console/console.css"><script src="/console/console.js" defer></script>'
        f"{''.join(page.extra_head)}</head><body>"
        f'<header><a class="brand" href="/">agentopz</a><nav>{nav}</nav><div class="session">{session}</div></header>'
        f"<main>{notice}{body}</main>"
        f"<footer>Data since {escape(clock(page.since))} ({escape(ago(page.since, page.now))}, when the service "
        f"started); figures cover the runs finished since then. Rendered {escape(clock(page.now))}.</footer>"
        "</body></html>"
    )


def window_picker(current: str, base: str) -> str:
    links = " ".join(
        f'<a href="{base}?window={name}"{" aria-current=true" if name == current else ""}>{name}</a>'
        for name in WINDOWS
    )
    return f'<p class="windows">Window: {links}</p>'


def _coverage(page: PageContext, window: str) -> str:
    covered = page.now - page.since
    if covered >= WINDOWS[window]:
        return ""
    return (
        f'<p class="muted">The service has data for the last {escape(ago(page.since, page.now).replace(" ago", ""))} '
        f"only (since {escape(clock(page.since))}); figures over {window} cover that.</p>"
    )


def _figure_cells(fig: Figures) -> str:
    return (
        f'<td class="num">{fig.runs}</td>'
        f'<td class="num">{fig.runs_per_minute:.2f}{sparkline(fig.per_minute, "runs per minute, last hour")}</td>'
        f'<td class="num">{share(fig.success_share)}</td>'
        f"<td>{outcome_bar(fig.outcomes)}</td>"
        f'<td class="num">{money(fig.mean_cost)}</td><td class="num">{money(fig.p95_cost)}</td>'
        f'<td class="num">{seconds(fig.p95_duration)}</td>'
        f'<td class="num">{money(fig.wasted_usd)}</td>'
    )


def probe_text(probe: ProbeStatus | None, now: float) -> str:
    """The last result of an agent's probe: `ok` or the reason it failed, and since when it was last ok."""
    if probe is None:
        return '<span class="muted">not probed</span>'
    if probe.reason is None:
        return '<span class="muted">no result yet</span>'
    if probe.reason == PROBE_SUCCESS:
        return f'<span class="ok">ok</span> <span class="muted">{seconds(probe.duration_seconds)}</span>'
    return (
        f'<span class="bad">{escape(probe.reason)}</span> '
        f'<span class="muted">last ok {escape(ago(probe.last_success_at, now))}</span>'
    )


def fleet_page(page: PageContext, statuses: Sequence[AgentStatus], window: str) -> str:
    rows = []
    for status in statuses:
        agent = status.history
        failing = status.failing
        mark = (
            '<span class="mark bad" role="img" aria-label="failing its targets" title="failing its targets">●</span>'
            if failing
            else '<span class="mark ok" role="img" aria-label="meeting its targets">●</span>'
            if status.slos
            else '<span class="mark none" aria-hidden="true">○</span>'
        )
        in_flight = status.in_flight
        flight = f"{in_flight.runs}"
        if in_flight.runs:
            flight += (
                f'<div class="muted">max {money(in_flight.max_cost_usd)} '
                f"{trace_link(in_flight.max_cost_trace_id, page.trace_url_template, 'trace')}</div>"
            )
        budgets = "".join(
            f"<div>{escape(s.slo.name)}: {budget_left(s.budget_left)}</div>"
            for s in status.slos
            if s.budget_left is not None
        )
        rows.append(
            f'<tr class="{"failing" if failing else ""}" data-agent="{escape(agent.name)}">'
            f'<td>{mark} <a href="{escape(agent_href(agent.name))}">{escape(agent.name)}</a></td>'
            f"{_figure_cells(status.figures)}"
            f'<td class="num">{flight}</td>'
            f'<td class="num">{escape(ago(agent.last_finished_at, page.now))}</td>'
            f'<td class="probe">{probe_text(status.probe, page.now)}</td>'
            f'<td class="num">{budgets or "-"}</td></tr>'
        )
        if failing:
            reasons = "".join(f"<div>{escape(text)}</div>" for text in failing)
            rows.append(
                f'<tr class="failing reason" data-reason-for="{escape(agent.name)}">'
                f'<td colspan="{len(FLEET_COLUMNS)}">{reasons}</td></tr>'
            )
    if not rows:
        table = (
            '<p class="empty">No agent has finished a run yet. Point an OTLP exporter at this service '
            "(gRPC :4317, HTTP :4318) or run <code>agentopz-otel demo</code>; agents appear here as their runs "
            "finish.</p>"
        )
    else:
        failing_count = sum(1 for status in statuses if status.failing)
        summary = (
            f'<p class="summary">{len(statuses)} agents · '
            f'<span class="{"bad" if failing_count else "ok"}">{failing_count} failing their targets</span></p>'
        )
        table = summary + (
            f'<table class="fleet"><thead><tr>{"".join(f"<th>{name}</th>" for name in FLEET_COLUMNS)}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    return layout(page, f"<h1>Fleet</h1>{window_picker(window, '/')}{_coverage(page, window)}{table}")


def _run_rows(page: PageContext, entries: Iterable[RunEntry]) -> str:
    rows = []
    for entry in entries:
        content = ""
        if page.show_content:
            content = f'<td class="input">{escape(entry.input_start or "")}</td>'
        rows.append(
            f"<tr><td>{escape(clock(entry.finished_at))}</td><td>{escape(entry.prompt_version)}</td>"
            f'<td><span class="o-text o-{escape(entry.outcome)}">{escape(entry.outcome)}</span></td>'
            f'<td class="num">{money(entry.cost_usd)}</td><td class="num">{entry.steps}</td>'
            f'<td class="num">{entry.tool_calls}</td><td>{escape(", ".join(entry.failed_checks)) or "-"}</td>'
            f'<td class="num">{seconds(entry.duration_seconds)}</td>{content}'
            f"<td>{trace_link(entry.trace_id, page.trace_url_template)}</td></tr>"
        )
    if not rows:
        return '<p class="muted">None.</p>'
    content_head = "<th>Input (start)</th>" if page.show_content else ""
    return (
        "<table><thead><tr><th>Finished</th><th>Version</th><th>Outcome</th><th>Cost</th><th>Steps</th>"
        f"<th>Tool calls</th><th>Failed checks</th><th>Duration</th>{content_head}<th>Trace</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _calls_section(title: str, what: str, calls: dict[str, list[int]]) -> str:
    rows = "".join(
        f'<tr><td>{escape(name)}</td><td class="num">{count}</td><td class="num">{failed}</td>'
        f'<td class="num">{share(error_share)}</td></tr>'
        for name, count, failed, error_share in calls_table(calls)
    )
    if not rows:
        return f'<h2>{title}</h2><p class="muted">None in this window.</p>'
    return (
        f"<h2>{title}</h2><table><thead><tr><th>{what}</th><th>Calls</th><th>Failed</th><th>Error share</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
    )


def _mean_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def triage_section(found: Triage) -> str:
    """Which part moved: the shares the suspect scores rest on, before and now, and the suspects."""
    rows = [
        (
            f"Share of runs ending {' or '.join(outcomes)} ({kind})",
            found.before.share(outcomes),
            found.now.share(outcomes),
        )
        for kind, outcomes in SUSPECT_OUTCOMES.items()
    ]
    cells = "".join(
        f'<tr><th>{escape(what)}</th><td class="num">{share(before)}</td><td class="num">{share(now)}</td></tr>'
        for what, before, now in rows
    )
    for label, (before, now) in (
        ("LLM steps per run (mean)", found.steps),
        ("Tool calls per run (mean)", found.tool_calls),
    ):
        cells += (
            f'<tr><th>{label}</th><td class="num">{_mean_cell(before)}</td><td class="num">{_mean_cell(now)}</td></tr>'
        )
    runs = f'<tr><th>Runs</th><td class="num">{found.before.runs}</td><td class="num">{found.now.runs}</td></tr>'
    if found.suspects:
        items = "".join(
            f'<li data-suspect="{escape(suspect.kind)}"><b>{escape(suspect.kind)}'
            f"{' ' + escape(suspect.component) if suspect.component else ''}</b> (score {suspect.score:.2f}): "
            + "; ".join(
                f"{escape(evidence.what)} {share(evidence.baseline)} → {share(evidence.current)}"
                for evidence in suspect.evidence
            )
            + "</li>"
            for suspect in found.suspects
        )
        verdict = f'<p>Suspects, most likely first:</p><ol class="suspects">{items}</ol>'
    else:
        verdict = (
            '<p class="muted suspects">No suspect: no prompt version, tool, upstream model or orchestration '
            f"moved by {MIN_SCORE * 100:.0f} points (or fewer than {MIN_RUNS} runs in a half hour).</p>"
        )
    return (
        '<h2 id="triage">Triage: which part moved</h2>'
        f'<p class="muted">The last 30 minutes against the 30 before, as the <code>agentopz:suspect:*</code> '
        'rules compute it (<a href="/runbooks/AgentSuccessSLOBurn">runbook</a>).</p>'
        f'<table class="triage"><thead><tr><th></th><th>30 min before</th><th>Last 30 min</th></tr></thead>'
        f"<tbody>{runs}{cells}</tbody></table>{verdict}"
    )


def agent_page(
    page: PageContext,
    status: AgentStatus,
    versions: list[tuple[str, str, Figures]],
    detail: Detail,
    latest: list[RunEntry],
    expensive_hour: list[RunEntry],
    expensive_day: list[RunEntry],
    window: str,
    rollout_line: str,
    found: Triage,
    routing: str = "",
) -> str:
    agent = status.history
    reasons = "".join(f'<p class="reason bad">● {escape(text)}</p>' for text in status.failing)
    fig = status.figures
    head = (
        f'<h1>{escape(agent.name)} <span class="muted">service {escape(agent.service)}</span></h1>{reasons}'
        f"{rollout_line}{window_picker(window, agent_href(agent.name))}{_coverage(page, window)}"
    )
    columns = "".join(
        f"<th>{escape(version)}<div class=muted>{escape(role)}</div></th>" for version, role, _ in versions
    )
    figure_rows = (
        ("Runs", lambda f: str(f.runs)),
        ("Runs/min", lambda f: f"{f.runs_per_minute:.2f}{sparkline(f.per_minute, 'runs per minute, last hour')}"),
        ("Success", lambda f: share(f.success_share)),
        ("Outcomes", lambda f: outcome_bar(f.outcomes)),
        ("Cost/run (mean)", lambda f: money(f.mean_cost)),
        ("Cost/run (p95)", lambda f: money(f.p95_cost)),
        ("Duration (p95)", lambda f: seconds(f.p95_duration)),
        ("Wasted spend", lambda f: money(f.wasted_usd)),
    )
    body_rows = "".join(
        f"<tr><th>{label}</th><td class=num>{render(fig)}</td>"
        + "".join(f"<td class=num>{render(version_fig)}</td>" for _, _, version_fig in versions)
        + "</tr>"
        for label, render in figure_rows
    )
    comparison = (
        f'<h2>By prompt version</h2><table class="versions"><thead><tr><th></th><th>All versions</th>{columns}'
        f"</tr></thead><tbody>{body_rows}</tbody></table>"
    )
    in_flight = status.in_flight
    flight = f"<p>In flight: <b>{in_flight.runs}</b>"
    if in_flight.runs:
        flight += (
            f"; the most expensive has cost {money(in_flight.max_cost_usd)} so far "
            f"({trace_link(in_flight.max_cost_trace_id, page.trace_url_template)}); most steps {in_flight.max_steps}"
        )
    flight += f". Last run finished {escape(ago(agent.last_finished_at, page.now))}.</p>"
    if status.probe is not None:
        flight += f'<p class="probe">Probe: {probe_text(status.probe, page.now)}</p>'
    slos = "".join(
        f"<li>{escape(s.slo.name)} ({escape(s.slo.sli.kind)}, objective {s.slo.objective}%): {s.runs} runs in 24 h, "
        f"budget left {budget_left(s.budget_left)}{' — ' + escape(s.failing) if s.failing else ''}</li>"
        for s in status.slos
    )
    slo_section = f"<h2>SLOs</h2><ul>{slos}</ul>" if slos else ""
    checks = "".join(
        f'<tr><td>{escape(check)}</td><td class="num">{count}</td></tr>'
        for check, count in sorted(detail.checks.items(), key=lambda item: (-item[1], item[0]))
    )
    checks_section = (
        f"<h2>Failed checks</h2><table><thead><tr><th>Check</th><th>Failed runs</th></tr></thead><tbody>{checks}"
        "</tbody></table>"
        if checks
        else '<h2>Failed checks</h2><p class="muted">None in this window.</p>'
    )
    note = ""
    if fig.sampled_runs < fig.runs:
        note = (
            f'<p class="muted">Percentiles cover the latest {fig.sampled_runs} of the {fig.runs} runs '
            "in the window.</p>"
        )
    body = (
        f"{head}{triage_section(found)}{routing}{comparison}{note}{flight}{slo_section}{checks_section}"
        f"{_calls_section('Tools', 'Tool', detail.tools)}{_calls_section('LLM calls by model', 'Model', detail.models)}"
        f"<h2>Latest runs</h2>{_run_rows(page, latest)}"
        f"<h2>Most expensive runs, last hour</h2>{_run_rows(page, expensive_hour)}"
        f"<h2>Most expensive runs, last day</h2>{_run_rows(page, expensive_day)}"
    )
    return layout(page, body)


def not_found_page(page: PageContext, what: str) -> str:
    return layout(page, f'<h1>Not found</h1><p>{escape(what)}</p><p><a href="/">Back to the fleet</a></p>')


def action_form(page: PageContext, agent: str, action: str, *, confirmed: bool = False, reason: str = "") -> str:
    """A button that performs `action` on `agent`; console.js asks for confirmation first, and without
    script the server shows a confirmation page."""
    label = ACTION_LABELS[action]
    danger = " danger" if action in ("rollback", "disable") else ""
    reason_field = (
        f'<input type="hidden" name="reason" value="{escape(reason)}">'
        if confirmed
        else f'<input name="reason" placeholder="reason" aria-label="reason for {escape(label.lower())}" size="14">'
    )
    return (
        f'<form method="post" action="/rollouts/{quote(agent, safe="")}/{action}" class="action" '
        f'data-confirm="{escape(label)} {escape(agent)}?">'
        f'<input type="hidden" name="csrf" value="{escape(page.csrf or "")}">'
        f'<input type="hidden" name="confirmed" value="{"yes" if confirmed else ""}">'
        f'{reason_field}<button type="submit" class="act{danger}" data-action="{action}">{label}</button></form>'
    )


def route_form(
    page: PageContext,
    agent: str,
    action: str,
    *,
    tool: str = "",
    model: str = "",
    confirmed: bool = False,
    reason: str = "",
) -> str:
    """A button setting one of the agent's component flags; confirmed like `action_form`."""
    label = ROUTE_LABELS[action]
    hidden = {"csrf": page.csrf or "", "confirmed": "yes" if confirmed else "", "tool": tool}
    if confirmed:
        hidden.update(model=model, reason=reason)
    fields = "".join(
        f'<input type="hidden" name="{name}" value="{escape(value)}">'
        for name, value in hidden.items()
        if value or name != "tool"
    )
    if not confirmed:
        if action == "fallback":
            fields += '<input name="model" placeholder="model" aria-label="model to fall back to" size="18" required>'
        fields += (
            f'<input name="reason" placeholder="reason" aria-label="reason for {escape(label.lower())}" size="14">'
        )
    what = f" {tool}" if tool else ""
    danger = " danger" if action in ("tool-off", "fallback") else ""
    return (
        f'<form method="post" action="/routes/{quote(agent, safe="")}/{action}" class="action" '
        f'data-confirm="{escape(label)}{escape(what)} for {escape(agent)}?">{fields}'
        f'<button type="submit" class="act{danger}" data-action="{action}">{label}</button></form>'
    )


def route_confirm_page(
    page: PageContext, agent: str, action: str, tool: str, model: str, reason: str, detail: str
) -> str:
    form = route_form(page, agent, action, tool=tool, model=model, confirmed=True, reason=reason)
    return layout(
        page,
        f"<h1>{escape(ROUTE_LABELS[action])}?</h1><p>{escape(detail)}</p>{form}"
        f'<p><a href="{escape(agent_href(agent))}">Cancel</a></p>',
    )


def routing_section(page: PageContext, agent: str, routes: Sequence[Any] | None, tools: Iterable[str]) -> str:
    """The agent's component flags (`<agent>.tool.<tool>`, `<agent>.model`) and the forms that set them."""
    if routes is None:
        return ""
    tool_flags = {route.name: route for route in routes if route.kind == "tool"}
    model = next((route for route in routes if route.kind == "model"), None)
    rows = []
    for tool in sorted(set(tools) | set(tool_flags)):
        route = tool_flags.get(tool)
        state = "not set (code default)" if route is None else route.variant
        button = route_form(page, agent, "tool-on" if route is not None and not route.value else "tool-off", tool=tool)
        rows.append(
            f'<tr data-tool="{escape(tool)}"><td><code>{escape(agent)}.tool.{escape(tool)}</code></td>'
            f"<td>{escape(state)}</td><td>{button}</td></tr>"
        )
    tools_table = (
        "<table><thead><tr><th>Tool flag</th><th>Served</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">No tool seen in the last hour and no tool flag set.</p>'
    )
    current = "not set (code default)" if model is None else f"<b>{escape(str(model.value))}</b>"
    data = "" if model is None else f' data-model="{escape(str(model.value))}"'
    clear = "" if model is None else route_form(page, agent, "clear-model")
    model_line = (
        f'<div class="model-route"{data}><p><code>{escape(agent)}.model</code>: {current}</p>'
        f"{route_form(page, agent, 'fallback')}{clear}</div>"
    )
    return (
        '<h2 id="routing">Route around a broken part</h2><p class="muted">Component flags served over OFREP '
        "beside the prompt version: the agent's code reads them with its OpenFeature client.</p>"
        f"{tools_table}{model_line}"
    )


def confirm_page(page: PageContext, agent: str, action: str, reason: str, detail: str) -> str:
    label = ACTION_LABELS[action]
    return layout(
        page,
        f"<h1>{escape(label)} {escape(agent)}?</h1><p>{escape(detail)}</p>"
        f"{action_form(page, agent, action, confirmed=True, reason=reason)}"
        '<p><a href="/rollouts">Cancel</a></p>',
    )


def message_page(page: PageContext, heading: str, text: str, back: str = "/rollouts") -> str:
    return layout(page, f'<h1>{escape(heading)}</h1><p>{escape(text)}</p><p><a href="{escape(back)}">Back</a></p>')


def login_page(page: PageContext, error: str | None, token_configured: bool, next_path: str) -> str:
    hint = (
        "Enter the admin token (service.admin.auth) once; it is checked and a session cookie is kept."
        if token_configured
        else "No admin token is configured: actions are accepted from this machine (loopback) only."
    )
    problem = f'<p class="bad" role="alert">{escape(error)}</p>' if error else ""
    return layout(
        page,
        f"<h1>Sign in to act</h1><p>{escape(hint)}</p>{problem}"
        '<form method="post" action="/login" class="login">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label>Your name (for the audit log) <input name="name" required maxlength="64" autocomplete="name"></label>'
        '<label>Admin token <input name="token" type="password" autocomplete="current-password"></label>'
        '<button type="submit">Sign in</button></form>'
        "<p class=muted>Reading needs no sign-in. Actions are recorded with your name.</p>",
    )


def runbook_index(page: PageContext, names: Sequence[str]) -> str:
    items = "".join(f'<li><a href="/runbooks/{quote(name)}">{escape(name)}</a></li>' for name in names)
    return layout(page, f"<h1>Runbooks</h1><ul class=runbooks>{items}</ul>")


def runbook_page(page: PageContext, html_body: str) -> str:
    return layout(page, f'<article class="runbook">{html_body}</article><p><a href="/runbooks">All runbooks</a></p>')


def html_response(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS)


def _compact(value: Any, depth: int = 0) -> str:
    """Evidence or analysis config (JSON-like) as nested definition lists, bounded in size."""
    if isinstance(value, dict) and depth < 3:
        items = list(value.items())[:40]
        inner = "".join(f"<dt>{escape(str(key))}</dt><dd>{_compact(item, depth + 1)}</dd>" for key, item in items)
        return f'<dl class="kv">{inner}</dl>'
    if isinstance(value, list) and depth < 3 and all(not isinstance(item, dict | list) for item in value):
        return escape(", ".join(str(item) for item in value[:40]))
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return escape(text if len(text) <= 400 else text[:400] + "…")


def _steps(rollout: Any) -> str:
    chips = []
    for index, weight in enumerate(rollout.steps):
        state = "done" if index < rollout.step_index else "now" if index == rollout.step_index else "next"
        chips.append(f'<span class="step {state}">{weight}%</span>')
    return "".join(chips)


def _weights(rollout: Any) -> str:
    weight = rollout.weight
    return (
        f'<svg class="bar weights" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(rollout.baseline)} {100 - weight}%, {escape(rollout.candidate)} {weight}%">'
        f'<rect class="w-baseline" width="{100 - weight}" height="10"/>'
        f'<rect class="w-candidate" x="{100 - weight}" width="{weight}" height="10"/></svg>'
        f"{escape(rollout.baseline)} {100 - weight}% · <b>{escape(rollout.candidate)} {weight}%</b>"
    )


def _analysis(status: dict[str, Any], page: PageContext) -> str:
    """The canary analysis's last look at a rollout: runs per version, each guard's verdict and evidence."""
    runs = ", ".join(f"{escape(str(version))} {count}" for version, count in status.get("runs", {}).items())
    source = escape(str(status.get("source", "")))
    if status.get("source_error"):
        source += f' <span class="bad">unreachable: {escape(str(status["source_error"]))}</span>'
    rows = "".join(
        f'<tr><td>{escape(guard)}</td><td><span class="badge v-{escape(str(result.get("verdict")))}">'
        f'{escape(str(result.get("verdict")))}</span></td><td class="num">{_compact(result.get("statistic"))}</td>'
        f'<td class="num">{_compact(result.get("threshold"))}</td>'
        f"<td>{_compact(result.get('evidence') or {})}</td></tr>"
        for guard, result in status.get("guards", {}).items()
    )
    decision = ""
    if status.get("decision"):
        decision = (
            f"<p>Decision: <b>{escape(str(status['decision']))}</b> {escape(str(status.get('decision_reason') or ''))}"
            f" ({escape(ago(status.get('decided_at') or 0, page.now))})</p>"
        )
    looked = escape(ago(status.get("looked_at") or 0, page.now))
    if status.get("suspended"):
        decision += f'<p class="bad">Not analysed: {escape(str(status["suspended"]))}</p>'
    if status.get("budget"):
        decision += f"<p>Verdicts spend one {escape(str(status['budget']))}.</p>"
    return (
        f"<p>Runs seen: {runs or 'none yet'} · source {source} · last look {looked}</p>{decision}"
        "<table class=guards><thead><tr><th>Guard</th><th>Verdict</th><th>Statistic</th><th>Threshold</th>"
        f"<th>Evidence</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def rollouts_page(
    page: PageContext,
    flags: Sequence[Any],
    current: dict[str, Any],
    history: Sequence[Any],
    verdicts: dict[str, dict[str, Any]],
) -> str:
    sections = []
    latest_evidence: dict[str, Any] = {}
    for entry in history:  # newest first
        if entry.evidence and entry.agent not in latest_evidence:
            latest_evidence[entry.agent] = entry
    for flag in flags:
        rollout = current.get(flag.agent)
        actions = []
        if rollout is not None and rollout.state == "progressing":
            actions = ["rollback", "pause", "promote"]
        elif rollout is not None and rollout.state == "paused":
            actions = ["rollback", "resume", "promote"]
        actions.append("enable" if flag.disabled else "disable")
        versions = ", ".join(
            f"<b>{escape(version)}</b> (baseline)" if version == flag.baseline else escape(version)
            for version in flag.versions
        )
        state = '<span class="badge bad">disabled</span>' if flag.disabled else ""
        if rollout is not None:
            if flag.agent in verdicts:
                analysis = f"<tr><th>Analysis</th><td>{_analysis(verdicts[flag.agent], page)}</td></tr>"
            elif rollout.analysis:
                analysis = f"<tr><th>Guards</th><td>{_compact(rollout.analysis)}</td></tr>"
            else:
                analysis = ""
            evidence_entry = latest_evidence.get(flag.agent)
            evidence = (
                f"<tr><th>Latest verdict</th><td>{escape(evidence_entry.action)} by {escape(evidence_entry.actor)} "
                f"({escape(evidence_entry.actor_kind)}), {escape(ago(evidence_entry.at, page.now))}: "
                f"{escape(evidence_entry.reason or '')}{_compact(evidence_entry.evidence)}</td></tr>"
                if evidence_entry is not None
                else ""
            )
            detail = (
                f'<table class="rollout"><tr><th>State</th><td><span class="badge s-{escape(rollout.state)}">'
                f"{escape(rollout.state)}</span> {escape(rollout.reason or '')}</td></tr>"
                f"<tr><th>Weights</th><td>{_weights(rollout)}</td></tr>"
                f"<tr><th>Steps</th><td>{_steps(rollout)}</td></tr>"
                f"<tr><th>Started</th><td>{escape(clock(rollout.started_at))} "
                f"({escape(ago(rollout.started_at, page.now))}), "
                f"this step {escape(ago(rollout.step_started_at, page.now))}</td></tr>{analysis}{evidence}</table>"
            )
        else:
            detail = '<p class="muted">No rollout yet: every client gets the baseline.</p>'
        buttons = "".join(action_form(page, flag.agent, action) for action in actions)
        sections.append(
            f'<section class="agent-rollout" id="agent-{escape(quote(flag.agent, safe=""))}">'
            f'<h2><a href="{escape(agent_href(flag.agent))}">{escape(flag.agent)}</a> {state}</h2>'
            f"<p>Versions: {versions}</p>{detail}<div class=actions>{buttons}</div></section>"
        )
    if not sections:
        sections.append(
            '<p class="empty">No agent is defined yet: <code>agentopz-otel agent define AGENT --version v1 '
            "--baseline v1</code>, then <code>agentopz-otel rollout start AGENT --candidate v2 --steps 5,25,50,100"
            "</code>.</p>"
        )
    rows = "".join(
        f"<tr><td>{escape(clock(entry.at))}</td><td>{escape(entry.agent)}</td><td>{escape(entry.action)}</td>"
        f"<td>{escape(entry.actor)} <span class=muted>({escape(entry.actor_kind)})</span></td>"
        f"<td>{escape(entry.reason or '')}</td><td>{_compact(entry.before)} → {_compact(entry.after)}</td>"
        f"<td>{_compact(entry.evidence) if entry.evidence else ''}</td></tr>"
        for entry in history
    )
    audit = (
        "<h2>Audit trail</h2><table class=audit><thead><tr><th>When</th><th>Agent</th><th>Action</th><th>By</th>"
        f"<th>Reason</th><th>Change</th><th>Evidence</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<h2>Audit trail</h2><p class="muted">Nothing has changed yet.</p>'
    )
    signed = (
        ""
        if page.signed_in_as is not None
        else '<p class="muted">Read-only: <a href="/login">sign in with the admin token</a> to act.</p>'
    )
    return layout(page, f"<h1>Rollouts</h1>{signed}{''.join(sections)}{audit}")


def rollouts_off_page(page: PageContext, extension_id: str) -> str:
    return layout(
        page,
        f"<h1>Rollouts</h1><p>The rollouts extension <code>{escape(extension_id)}</code> is not switched on in "
        "<code>service.extensions</code>.</p>",
    )
