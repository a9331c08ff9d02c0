"""The decisions of a probe, as plain functions over data: is this answer good, which reason, which
probe a finished run belongs to and which probes waited too long for theirs. No I/O, no clock: the
caller passes `now`."""

from __future__ import annotations

import heapq
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jsonpath_ng import JSONPath

from ... import catalogue
from ...records import SUCCESS as RUN_SUCCESS

# Metric names (the SLO generator and the console read them from here).
PROBE_RESULTS_TOTAL = "agentopz_probe_results_total"
PROBE_SUCCESS = "agentopz_probe_success"
PROBE_LAST_SUCCESS = "agentopz_probe_last_success_timestamp_seconds"
PROBE_DURATION = "agentopz_probe_duration_seconds"
PROBE_RUNS_TOTAL = "agentopz_probe_runs_total"

# The `reason` label of agentopz_probe_results_total, declared in the catalogue (enum probe_reason):
# success; connect_error (no connection: refused, unknown host, TLS failure); timeout (no complete answer
# within timeout_seconds); http_error (the connection broke or the answer was not HTTP); status (an HTTP
# status not in expect.status); body_too_large (a check needs the body and it is longer than
# max_body_bytes); json_path (not JSON, or expect.json_path found nothing or not json_value); regex
# (expect.regex did not match); run_failed (the run the probe started did not succeed); run_missing (it
# did not finish within run_wait_seconds).
REASONS = catalogue.enum("probe_reason")
(
    SUCCESS,
    CONNECT_ERROR,
    TIMEOUT,
    HTTP_ERROR,
    STATUS,
    BODY_TOO_LARGE,
    JSON_PATH,
    REGEX,
    RUN_FAILED,
    RUN_MISSING,
) = REASONS


@dataclass(frozen=True)
class Expectation:
    """A probe's `expect`, compiled once."""

    statuses: frozenset[int]
    json_path: JSONPath | None = None
    json_value: Any = None
    regex: re.Pattern[str] | None = None

    @property
    def needs_body(self) -> bool:
        return self.json_path is not None or self.regex is not None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # at most max_body_bytes of it
    truncated: bool  # the answer was longer than what was read


def check_answer(expect: Expectation, answer: Answer) -> str:
    """The reason for an answer: `success` when every check holds, else the first that does not."""
    if answer.status not in expect.statuses:
        return STATUS
    if not expect.needs_body:
        return SUCCESS
    if answer.truncated:
        return BODY_TOO_LARGE
    if expect.json_path is not None:
        try:
            document = json.loads(answer.body)
        except (ValueError, RecursionError):
            return JSON_PATH
        found = [match.value for match in expect.json_path.find(document)]
        if not found or (expect.json_value is not None and expect.json_value not in found):
            return JSON_PATH
    if expect.regex is not None and expect.regex.search(answer.body.decode("utf-8", "replace")) is None:
        return REGEX
    return SUCCESS


def run_reason(outcome: str) -> str:
    """The reason for a probe whose run finished with `outcome`."""
    return SUCCESS if outcome == RUN_SUCCESS else RUN_FAILED


def traceparent(trace_id: str, span_id: str) -> str:
    """A W3C trace context header for a sampled trace (so an instrumented agent records the run)."""
    return f"00-{trace_id}-{span_id}-01"


@dataclass
class SentProbe:
    """A probe that was answered and whose trace id is remembered until `forget_at`."""

    agent: str
    sent_at: float
    forget_at: float
    # When the probe stops waiting for its run; None: it does not wait (or no longer does).
    deadline: float | None


class SentProbes:
    """Trace ids of answered probes: so a finished run is known as a probe's (and kept out of the
    organic runs), and a probe that waits for its run learns its outcome or that it never came.
    At most `limit` are remembered; the oldest go first. A tick costs what is due, not what is kept:
    deadlines are in a heap, and ids are forgotten oldest first (in the order they were sent)."""

    def __init__(self, limit: int, remember_seconds: float) -> None:
        self._limit = limit
        self._remember_seconds = remember_seconds
        self._by_trace: OrderedDict[str, SentProbe] = OrderedDict()
        self._deadlines: list[tuple[float, str]] = []  # heap of (deadline, trace id) of waiting probes

    def __len__(self) -> int:
        return len(self._by_trace)

    def waiting(self) -> int:
        return sum(1 for sent in self._by_trace.values() if sent.deadline is not None)

    def add(self, trace_id: str, agent: str, now: float, wait: float | None) -> list[SentProbe]:
        """Remember a probe; returns the probes forgotten to make room that were still waiting."""
        deadline = None if wait is None else now + wait
        forget_at = now + max(wait or 0.0, self._remember_seconds)
        self._by_trace[trace_id] = SentProbe(agent, now, forget_at, deadline)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, trace_id))
        given_up = []
        while len(self._by_trace) > self._limit:
            _, oldest = self._by_trace.popitem(last=False)
            if oldest.deadline is not None:
                oldest.deadline = None
                given_up.append(oldest)
        if len(self._deadlines) > 2 * self._limit:  # ids of runs that arrived: drop them at once
            self._deadlines = [
                (sent.deadline, trace_id) for trace_id, sent in self._by_trace.items() if sent.deadline is not None
            ]
            heapq.heapify(self._deadlines)
        return given_up

    def arrived(self, trace_id: str) -> SentProbe | None:
        """The probe whose run this is (it is forgotten then), else None: an organic run."""
        return self._by_trace.pop(trace_id, None)

    def expire(self, now: float) -> list[SentProbe]:
        """Probes whose run did not come by their deadline (each returned once); forgets those sent
        longest ago whose `forget_at` passed."""
        late = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, trace_id = heapq.heappop(self._deadlines)
            sent = self._by_trace.get(trace_id)
            if sent is not None and sent.deadline is not None and sent.deadline <= now:
                sent.deadline = None
                late.append(sent)
        while self._by_trace:
            trace_id, oldest = next(iter(self._by_trace.items()))
            if oldest.forget_at > now:
                break
            del self._by_trace[trace_id]
        return late
