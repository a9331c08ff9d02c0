"""The `console` extension: a web page on the admin port for the fleet, one agent, rollouts and runbooks.

It keeps a small history of finished runs (the runs processors' feed) and reads the runs in flight
through `Context.in_flight`, so it shows something the moment the first run finishes, with no
Prometheus. The history belongs to one worker thread, which also renders the pages: a page view
never holds the event loop for longer than it takes to read the in-flight runs and rollout state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from markdown_it import MarkdownIt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...components import Context, Factory
from ...records import InFlightRuns, RunRecord
from ...slo import SLO, load_spec
from ..probes import ProbesExtension, ProbeStatus
from ..storage import StorageExtension
from . import pages
from .actions import MAX_SESSIONS, ConsoleActions, route_notice
from .figures import agent_figures, agent_status, triage, window_detail
from .history import WINDOWS, AgentHistory, RunHistory
from .pages import html_response
from .sessions import Sessions

PACKAGE = resources.files(__package__)
STATIC = PACKAGE / "static"
DEFAULT_WINDOW = "1h"
IN_FLIGHT_MAX_AGE = 1.0  # seconds a merged in-flight view is reused
MAX_PENDING_BATCHES = 10_000  # finished-run batches waiting for the worker (drained every second)


class ConsoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    show_content: bool = Field(
        default=False, description="show the start of each run's input; off: no prompt or output text is shown"
    )
    input_chars: int = Field(default=200, ge=1, le=4000, description="characters of a run's input kept and shown")
    trace_url_template: str | None = Field(
        default=None, description="link to a trace in your trace backend, e.g. http://tempo/explore?traceId={trace_id}"
    )
    slo_file: str | None = Field(default=None, description="SLO file (see `agentopz-otel slo`) for budgets and marks")
    recent_runs_per_agent: int = Field(
        default=1000, ge=10, le=100_000, description="runs kept per agent for percentiles and run lists"
    )
    rollouts: str = Field(default="rollouts", description="id of the rollouts extension the rollouts view acts on")
    runbooks_dir: str | None = Field(default=None, description="directory of <AlertName>.md; default: the shipped ones")
    session_hours: float = Field(default=12, gt=0, le=24 * 30, description="how long a sign-in lasts")
    storage: str | None = Field(
        default="storage",
        description="id of the storage extension that keeps sign-in sessions across restarts; null: memory only "
        "(also when the default `storage` is not configured)",
    )

    @field_validator("trace_url_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "{trace_id}" not in value:
            raise ValueError("must contain {trace_id}, e.g. http://tempo/explore?traceId={trace_id}")
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value


def _load_slos(path: str | None) -> list[SLO]:
    return list(load_spec(path).slos) if path else []


class ConsoleExtension:
    def __init__(self, component_id: str, config: ConsoleConfig, context: Context) -> None:
        self.id = component_id
        self.config = config
        self._context = context
        self.slos = _load_slos(config.slo_file)
        self.history = RunHistory(context.metrics, self.slos, config.recent_runs_per_agent, time.time())
        self._pending: deque[Sequence[RunRecord]] = deque()
        self._dropped = context.metrics.metric("agentopz_console_dropped_batches_total").series(())
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console")
        self._drain_task: asyncio.Task | None = None
        self._in_flight: tuple[float, dict[str, InFlightRuns]] = (-IN_FLIGHT_MAX_AGE, {})
        self._markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
        self._runbooks_dir = Path(config.runbooks_dir) if config.runbooks_dir else None
        self.actions = ConsoleActions(self.page, context.extensions, config.rollouts, config.session_hours)
        self._storage: StorageExtension | None = None
        if config.storage is not None and (
            config.storage in context.extensions or "storage" in config.model_fields_set
        ):
            self._storage = context.extension(config.storage, StorageExtension, asked_by=f"extension {component_id}")
        context.finished_runs.subscribe(self._received)
        for method, path, handler in (
            ("GET", "/", self._fleet),
            ("GET", "/agents/{agent}", self._agent),
            ("GET", "/runbooks", self._runbook_index),
            ("GET", "/runbooks/{name}", self._runbook),
            ("GET", "/console/{file}", self._static),
            *self.actions.routes(),
        ):
            context.admin_routes.append((method, path, handler))

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._storage is not None:
            self.actions.sessions = Sessions(MAX_SESSIONS, self._storage.connect(self.id))
            self.actions.sessions.load(time.time())
        self._drain_task = asyncio.create_task(self._drain_every_second())

    async def shutdown(self, timeout: float) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
        self._worker.shutdown(wait=True, cancel_futures=True)

    def _received(self, records: Sequence[RunRecord]) -> None:
        """On the event loop: hand the batch to the worker thread, which owns the history."""
        if len(self._pending) >= MAX_PENDING_BATCHES:
            self._pending.popleft()
            self._dropped.value += 1
        self._pending.append(records)

    def _drain(self) -> None:
        now = time.time()
        while self._pending:
            self.history.add(self._pending.popleft(), now)

    async def _drain_every_second(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1)
            await loop.run_in_executor(self._worker, self._drain)

    async def render(self, build: Callable[[], str | web.StreamResponse]) -> web.StreamResponse:
        """Run `build` on the worker thread after taking in the runs that finished meanwhile."""

        def job() -> str | web.StreamResponse:
            self._drain()
            return build()

        result = await asyncio.get_running_loop().run_in_executor(self._worker, job)
        return result if isinstance(result, web.StreamResponse) else html_response(result)

    # -- shared page data ----------------------------------------------------------------------

    def in_flight_by_agent(self) -> dict[str, InFlightRuns]:
        """On the event loop: every runs processor's in-flight view, merged per agent. It walks the open
        runs as a /metrics scrape does, so it is taken at most once a second however many pages are viewed."""
        taken_at, merged = self._in_flight
        if time.monotonic() - taken_at < IN_FLIGHT_MAX_AGE:
            return merged
        merged = self._merge_in_flight()
        self._in_flight = (time.monotonic(), merged)
        return merged

    def _merge_in_flight(self) -> dict[str, InFlightRuns]:
        label = self._context.metrics.label_value
        merged: dict[str, InFlightRuns] = {}
        for view in self._context.in_flight:
            for (_, agent), runs in view().items():
                entry = merged.setdefault(label("agent", agent), InFlightRuns())
                entry.runs += runs.runs
                if runs.max_cost_usd > entry.max_cost_usd or not entry.max_cost_trace_id:
                    entry.max_cost_usd = runs.max_cost_usd
                    entry.max_cost_trace_id = runs.max_cost_trace_id
                entry.max_steps = max(entry.max_steps, runs.max_steps)
        return merged

    def page(self, request: web.Request, title: str, active: str, **extra: Any) -> pages.PageContext:
        session = self.actions.session(request)
        return pages.PageContext(
            title=title,
            active=active,
            since=self.history.since,
            now=time.time(),
            signed_in_as=session.name if session else None,
            csrf=session.csrf if session else None,
            trace_url_template=self.config.trace_url_template,
            show_content=self.config.show_content,
            **extra,
        )

    # -- pages ---------------------------------------------------------------------------------

    def probe_statuses(self) -> dict[str, ProbeStatus]:
        """On the event loop: a copy of the last result of every probe, by agent (as its label reports it)."""
        label = self._context.metrics.label_value
        return {
            label("agent", agent): dataclasses.replace(status)
            for extension in self._context.extensions.values()
            if isinstance(extension, ProbesExtension)
            for agent, status in extension.statuses.items()
        }

    async def _fleet(self, request: web.Request) -> web.StreamResponse:
        window = _window(request)
        in_flight = self.in_flight_by_agent()
        probes = self.probe_statuses()
        page = self.page(request, "Fleet", "fleet")

        def build() -> str:
            history = self.history
            agents = dict(history.agents)
            # A probed agent that never finished a run is listed too: it may be the one that is down.
            for name in probes.keys() - agents.keys():
                agents[name] = AgentHistory(name, page.now)
            statuses = [
                agent_status(agent, self.slos, window, page.now, history.since, in_flight.get(name))
                for name, agent in agents.items()
            ]
            for status in statuses:
                status.probe = probes.get(status.history.name)
            # Failing agents first, then the busiest.
            statuses.sort(key=lambda status: (not status.failing, -status.figures.runs, status.history.name))
            return pages.fleet_page(page, statuses, window)

        return await self.render(build)

    async def _agent(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["agent"]
        window = _window(request)
        in_flight = self.in_flight_by_agent()
        probe = self.probe_statuses().get(name)
        roles, rollout_line = self.actions.version_roles(name)
        page = self.page(request, name, "fleet", notice=route_notice(request.query.get("done", "")))
        routes = self.actions.routes_of(name)

        def build() -> str | web.StreamResponse:
            agent = self.history.agents.get(name)
            if agent is None and probe is not None:  # probed, no run finished yet
                agent = AgentHistory(name, page.now)
            if agent is None:
                text = f"No finished run of an agent named {name!r} since the service started."
                return html_response(pages.not_found_page(page, text), status=404)
            now, since = page.now, self.history.since
            status = agent_status(agent, self.slos, window, now, since, in_flight.get(name))
            status.probe = probe
            # The baseline first, then the candidate, then the rest by traffic.
            versions = sorted(
                agent.versions,
                key=lambda version: (
                    {"baseline": 0, "candidate": 1}.get(roles.get(version, ""), 2),
                    -agent.versions[version].window(WINDOWS[window], now).runs,
                    version,
                ),
            )
            columns = [
                (version, roles.get(version, ""), agent_figures(agent, window, now, since, version))
                for version in versions
            ]
            latest = list(agent.recent)[-20:][::-1]
            found = triage(self.history, agent, now)
            routing = pages.routing_section(page, name, routes, window_detail(agent, "1h", now).tools)
            return pages.agent_page(
                page,
                status,
                columns,
                window_detail(agent, window, now),
                latest,
                window_detail(agent, "1h", now).most_expensive(),
                window_detail(agent, "24h", now).most_expensive(),
                window,
                rollout_line,
                found,
                routing,
            )

        return await self.render(build)

    # -- runbooks ------------------------------------------------------------------------------

    def _runbook_files(self) -> dict[str, Any]:
        # The shipped runbooks: docs/runbooks/, linked into the package so a wheel carries them.
        folder: Any = self._runbooks_dir or PACKAGE / "runbooks"
        found = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for item in folder.iterdir():
                if item.name.endswith(".md") and item.name != "README.md":
                    found[item.name[:-3]] = item
        return dict(sorted(found.items()))

    async def _runbook_index(self, request: web.Request) -> web.StreamResponse:
        page = self.page(request, "Runbooks", "runbooks")
        return html_response(pages.runbook_index(page, list(self._runbook_files())))

    async def _runbook(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"].removesuffix(".md")
        page = self.page(request, name, "runbooks")
        item = self._runbook_files().get(name)
        if item is None:
            return html_response(pages.not_found_page(page, f"No runbook for the alert {name!r}."), status=404)
        return html_response(pages.runbook_page(page, self._markdown.render(item.read_text(encoding="utf-8"))))

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        types = {"console.css": "text/css", "console.js": "text/javascript"}
        if name not in types:
            raise web.HTTPNotFound()
        return web.Response(
            body=(STATIC / name).read_bytes(),
            content_type=types[name],
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )


def _window(request: web.Request) -> str:
    window = request.query.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        raise web.HTTPBadRequest(text=f"window must be one of {', '.join(WINDOWS)}\n")
    return window


def _create(component_id: str, config: ConsoleConfig, context: Context) -> ConsoleExtension:
    if config.show_content:
        context.run_input_chars = max(context.run_input_chars, config.input_chars)
    return ConsoleExtension(component_id, config, context)


FACTORY = Factory(type="console", kind="extension", config_type=ConsoleConfig, create=_create)
