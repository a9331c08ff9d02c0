"""The `probes` extension's shell: a timer per probe, the HTTP request (aiohttp), the finished-runs
subscription and the metrics. Every decision is in `core`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from ...components import Context, Factory
from ...metrics import Registry
from .config import ProbeConfig, ProbesConfig, header_value
from .core import (
    CONNECT_ERROR,
    HTTP_ERROR,
    PROBE_DURATION,
    PROBE_LAST_SUCCESS,
    PROBE_RESULTS_TOTAL,
    PROBE_RUNS_TOTAL,
    PROBE_SUCCESS,
    REASONS,
    RUN_MISSING,
    SUCCESS,
    TIMEOUT,
    Answer,
    Expectation,
    SentProbes,
    check_answer,
    run_reason,
    traceparent,
)

log = logging.getLogger("agentopz_otel.probes")

STATUS_PATH = "/api/v1/probes"
PROBE_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
USER_AGENT = "agentopz-otel-probe"


@dataclass
class ProbeStatus:
    """The last decided result of one agent's probe, for the console and the status API."""

    agent: str
    url: str  # without its query string, which may carry a credential
    reason: str | None = None  # None: no result yet
    decided_at: float = 0.0
    last_success_at: float = 0.0
    duration_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ProbeMetrics:
    def __init__(self, registry: Registry, probes: Sequence[ProbeConfig]) -> None:
        self.results = registry.metric(PROBE_RESULTS_TOTAL)
        self.success = registry.metric(PROBE_SUCCESS)
        self.last_success = registry.metric(PROBE_LAST_SUCCESS)
        self.duration = registry.metric(PROBE_DURATION, PROBE_DURATION_BUCKETS)
        self.runs = registry.metric(PROBE_RUNS_TOTAL)
        # Every reason's series starts at 0, so increase() sees a probe's first failure.
        for probe in probes:
            for reason in REASONS:
                self.results.series((probe.agent, reason))


class ProbesExtension:
    def __init__(
        self,
        component_id: str,
        config: ProbesConfig,
        context: Context,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.id = component_id
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._metrics = ProbeMetrics(context.metrics, config.probes)
        self._expectations = {
            probe.agent: Expectation(
                frozenset(probe.expect.status),
                probe.expect.compiled_json_path(),
                probe.expect.json_value,
                probe.expect.compiled_regex(),
            )
            for probe in config.probes
        }
        self.statuses = {probe.agent: ProbeStatus(probe.agent, _without_query(probe.url)) for probe in config.probes}
        # A run may finish well after its probe's answer (the runs processor abandons a run after
        # abandon_after_seconds, 300 by default): remember trace ids a while longer than that.
        self._sent = SentProbes(config.max_pending_runs, config.remember_seconds)
        self._headers: dict[str, dict[str, str]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._tasks: list[asyncio.Task] = []
        # (agent, exception type) of unexpected failures already logged: each is logged once.
        self._reported: set[tuple[str, str]] = set()
        context.finished_runs.subscribe(self._on_runs)
        context.admin_routes.append(("GET", STATUS_PATH, self._status))

    async def start(self) -> None:
        for index, probe in enumerate(self.config.probes):
            what = f"extensions.{self.id}.probes[{index}]"
            headers = {name: header_value(name, value, what) for name, value in probe.headers.items()}
            self._headers[probe.agent] = {"User-Agent": USER_AGENT, **headers}
        if not self.config.probes:
            return
        # No cookies kept between probes: each one is a fresh client, as a new user would be.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True)
        self._tasks = [asyncio.create_task(self._every(probe)) for probe in self.config.probes]
        self._tasks.append(asyncio.create_task(self._expire_every_tick()))

    async def shutdown(self, timeout: float) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _every(self, probe: ProbeConfig) -> None:
        while True:
            started = self._clock()
            try:
                await self.probe_once(probe)
            except Exception as error:  # a bug here must not stop the probe for ever, nor flood the log
                kind = (probe.agent, type(error).__name__)
                if kind not in self._reported:
                    self._reported.add(kind)
                    log.exception("probe of %s failed unexpectedly; probing again each interval", probe.agent)
            await asyncio.sleep(max(0.0, probe.interval_seconds - (self._clock() - started)))

    async def _expire_every_tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_seconds)
            self.expire()

    def expire(self) -> None:
        for sent in self._sent.expire(self._clock()):
            self._decide(sent.agent, RUN_MISSING)

    async def probe_once(self, probe: ProbeConfig) -> str | None:
        """Send the probe; returns its reason when decided now, None when it waits for its run."""
        trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
        headers = {**self._headers[probe.agent], "traceparent": traceparent(trace_id, span_id)}
        async with self._slots:
            started = self._clock()
            reason = await self._request(probe, headers)
            duration = self._clock() - started
        self._metrics.duration.series((probe.agent,)).observe(duration)
        self.statuses[probe.agent].duration_seconds = duration
        # Remembered whatever the answer, so the run it may have started never counts as organic.
        wait = probe.run_wait_seconds if reason == SUCCESS else None
        for given_up in self._sent.add(trace_id, probe.agent, self._clock(), wait):
            self._decide(given_up.agent, RUN_MISSING)
        if wait is not None:
            return None
        self._decide(probe.agent, reason)
        return reason

    async def _request(self, probe: ProbeConfig, headers: dict[str, str]) -> str:
        assert self._session is not None
        limit = self.config.max_body_bytes
        try:
            async with self._session.request(
                probe.method,
                probe.url,
                headers=headers,
                data=probe.body,
                timeout=aiohttp.ClientTimeout(total=probe.timeout),
            ) as response:
                body = bytearray()
                while len(body) <= limit:
                    chunk = await response.content.read(limit + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
                answer = Answer(response.status, bytes(body[:limit]), len(body) > limit)
        except asyncio.TimeoutError:  # aiohttp's timeouts are TimeoutErrors too: check this first
            return TIMEOUT
        except aiohttp.ClientConnectorError:
            return CONNECT_ERROR
        except aiohttp.ClientError:
            return HTTP_ERROR
        return check_answer(self._expectations[probe.agent], answer)

    def _on_runs(self, records: Sequence[Any]) -> None:
        for record in records:
            sent = self._sent.arrived(record.trace_id)
            if sent is None:
                continue
            self._metrics.runs.series((record.service, record.agent, record.outcome)).value += 1
            if sent.deadline is not None:
                self._decide(sent.agent, run_reason(record.outcome))

    def _decide(self, agent: str, reason: str) -> None:
        now = self._wall_clock()
        self._metrics.results.series((agent, reason)).value += 1
        self._metrics.success.series((agent,)).value = 1.0 if reason == SUCCESS else 0.0
        status = self.statuses[agent]
        status.reason, status.decided_at = reason, now
        if reason == SUCCESS:
            self._metrics.last_success.series((agent,)).value = now
            status.last_success_at = now

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"probes": [status.to_json() for status in self.statuses.values()], "waiting": self._sent.waiting()}
        )


def _without_query(url: str) -> str:
    """The URL without user info, query and fragment, which may carry a credential."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _create(component_id: str, config: ProbesConfig, context: Context) -> ProbesExtension:
    return ProbesExtension(component_id, config, context)


FACTORY = Factory(type="probes", kind="extension", config_type=ProbesConfig, create=_create)
