"""A test agent for canary analysis: picks its prompt version over OpenFeature, fails at a set rate."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

from openfeature import api
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from agentopz_otel import fleet
from support.admin_api import Admin
from support.sdk_agent import emit_chat

AGENT = "support"
VERSIONS = {"v1": {"prompt": "support/v1"}, "v2": {"prompt": "support/v2"}}
RUN_SECONDS = 2.0
FAST_RUNS = {"grace_seconds": 0.2, "tick_seconds": 0.05, "root_wait_seconds": 0.3, "abandon_after_seconds": 5}


def admin(service) -> Admin:
    return Admin(service.admin_url)


# Runs last at most a few seconds here: an interval of starts is evidence once this has passed.
MAX_RUN_SECONDS = 4.0


class Agent:
    """Picks a version per run over OpenFeature, fails runs at each version's rate, exports the run."""

    def __init__(self, flags_url: str, failures_in_ten: dict[str, int]) -> None:
        # A generous timeout: on a loaded machine an evaluation may take seconds, and a timed-out one
        # would fall back to the code default instead of a version.
        api.set_provider(OFREPProvider(base_url=flags_url, timeout=30), domain="canary")
        self.flags = api.get_client(domain="canary")
        self.failures_in_ten = failures_in_ten
        self.runs: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.index = 0

    def version(self, key: str) -> str:
        details = self.flags.get_object_details(AGENT, {}, EvaluationContext(targeting_key=key))
        assert details.variant is not None, f"evaluation failed: {details.error_code} {details.error_message}"
        return details.variant

    def key(self) -> str:
        """The run's targeting key: a user of one run."""
        return f"user-{self.index}"

    def fails(self, version: str, key: str) -> bool:
        return self.runs[version] % 10 < self.failures_in_ten[version]

    def run(self, pick_tracer: Callable[[bool], trace.Tracer]) -> str:
        """One run; `pick_tracer(failed)` says where its trace goes. Every run costs the same and lasts
        RUN_SECONDS, so only its outcome tells the versions apart."""
        self.index += 1
        key = self.key()
        version = self.version(key)
        failed = self.fails(version, key)
        self.runs[version] += 1
        self.failed[version] += failed
        run_tracer = pick_tracer(failed)
        start = time.time_ns()
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": AGENT}
        root = run_tracer.start_span(
            f"invoke_agent {AGENT}", attributes={**attributes, "agentopz.prompt.version": version}, start_time=start
        )
        with trace.use_span(root, end_on_exit=False):
            emit_chat(run_tracer, error_type="RateLimitError" if failed else None)
        if failed:
            root.set_status(Status(StatusCode.ERROR))
        self.finish(root, start + int(RUN_SECONDS * 1e9), failed)
        return version

    def finish(self, root: trace.Span, end_time: int, failed: bool) -> None:
        root.end(end_time=end_time)


class Conversations(Agent):
    """Sticky users: the fleet's conversations of five runs each, each run evaluating the flag with the
    conversation id as its targeting key through the OpenFeature TracingHook (the
    `feature_flag.evaluation` event on the run's span carries `feature_flag.context.id`). Outcomes are
    shared within a conversation: one in ten of each version's conversations fails in every run, the
    rest never do (both versions alike)."""

    RUNS = 5

    def __init__(self, flags_url: str) -> None:
        super().__init__(flags_url, {})
        self.flags.add_hooks([TracingHook()])
        self.turns = fleet.Conversations(random.Random(0), fleet.fixed_runs(self.RUNS))
        self.conversations: Counter[str] = Counter()
        self.failing: dict[str, bool] = {}

    def key(self) -> str:
        return self.turns.next(AGENT).conversation_id

    def fails(self, version: str, key: str) -> bool:
        if key not in self.failing:
            self.failing[key] = self.conversations[version] % 10 == 0
            self.conversations[version] += 1
        return self.failing[key]

    def run(self, pick_tracer: Callable[[bool], trace.Tracer]) -> str:
        """The flag is evaluated inside the run's span, so the hook's event lands on it."""
        self.index += 1
        key = self.key()
        run_tracer = pick_tracer(False)
        start = time.time_ns()
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": AGENT}
        root = run_tracer.start_span(f"invoke_agent {AGENT}", attributes=attributes, start_time=start)
        with trace.use_span(root, end_on_exit=False):
            version = self.version(key)
            failed = self.fails(version, key)
            emit_chat(run_tracer, error_type="RateLimitError" if failed else None)
        self.runs[version] += 1
        self.failed[version] += failed
        if failed:
            root.set_status(Status(StatusCode.ERROR))
        root.end(end_time=start + int(RUN_SECONDS * 1e9))
        return version


def run_until(agent: Agent, pick_tracer, done: Callable[[], bool], max_runs: int, pace: float = 0.002) -> int:
    """Runs until `done()` (checked every 20 runs), at most `max_runs`; returns the runs made."""
    for count in range(1, max_runs + 1):
        agent.run(pick_tracer)
        time.sleep(pace)
        if count % 20 == 0 and done():
            return count
    return max_runs


def rollout_state(service) -> dict:
    return admin(service).ok("GET", f"/api/v1/rollouts/{AGENT}")


def wait_state(service, state: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while (rollout := rollout_state(service))["state"] != state and time.monotonic() < deadline:
        time.sleep(0.1)
    return rollout
