"""Demo traffic: a small fleet of AI agents that emits GenAI semantic-convention traces over OTLP.

`agentopz-otel demo` sends what a real fleet sends, through the OpenTelemetry SDK and its OTLP
exporters, so every dashboard, SLO and alert has something to show:

- support-triage (service support-api): prompt version v12, with a 5% canary of v13 that answers with
  a bigger model (more cost) and fails quality checks far more often. The demo starts that canary as a
  rollout on the service (`--flags-url`, its admin port) and each run picks its version there through
  OpenFeature (OFREP provider), the evaluation recorded on the run's span by OpenFeature's
  OpenTelemetry TracingHook (`feature_flag.evaluation`); without rollouts on the service (or with
  `--no-rollout`) the seed picks the 5%. The canary is held at 5% for the dashboards, unless
  `--canary-analysis`: then the service's canary analysis watches it and rolls the worse v13 back by
  itself (in the console, the audit log and the PromptRolloutRolledBack alert);
- order-tracker (service order-service): a flaky carrier API that sometimes hangs past the agent's
  duration limit (timeout), a self-hosted model nobody has a price for, crashes that never close
  their run (abandoned), and plain bugs (error);
- research-assistant (service research-worker): Anthropic with prompt caching, versioned by its
  system instructions, and now and then a runaway retry loop that keeps calling the model while its
  cost climbs until it breaks the budget (budget_exceeded);
- code-reviewer (service code-review-bot): gpt-4o with a flaky test runner (tool_error).

Every OpenAI call can hit the provider's rate limit (HTTP 429, retried with backoff); during a
scheduled rate-limit storm most calls do and some runs give up (llm_error). Quality failures are
final answers a check fails (refusals, truncated or non-JSON output), each with a
`gen_ai.evaluation.result` event labelled `fail`.

What each run does is a plan (`agentopz_otel.fleet.plan_run`, where the agents are described) drawn
from `--seed` and the run's index alone, so the same seed gives the same runs (trace ids stay random
and unique). Span timestamps follow the plan; `--speed` plays
the plan faster in real time without changing the durations the spans report.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .fleet import (
    DEMO_AGENTS,
    SUPPORT_AGENT,
    SUPPORT_BASELINE,
    SUPPORT_CANARY,
    SUPPORT_VERSIONS,
    Call,
    Conversations,
    RunPlan,
    VersionPicker,
    agent_attributes,
    call_attributes,
    geometric_runs,
    plan_run,
)

CANARY_STEPS = [5, 25, 50, 100]
# A tenth of the SDK's default batching delay, so a run's spans reach the service soon after it ends.
EXPORT_DELAY_MS = 500
# The demo's support runs last seconds: their start intervals are evidence a minute after they end.
DEMO_ANALYSIS = {"max_run_seconds": 60, "step_min_seconds": 60}


class PromptFlags:
    """support-triage's prompt version per run, from the service over OpenFeature (OFREP provider); the
    OpenTelemetry TracingHook records each evaluation as a `feature_flag.evaluation` event on the
    current span (the run's agent span)."""

    def __init__(self, admin_url: str, token: str | None = None) -> None:
        from openfeature import api
        from openfeature.contrib.hook.opentelemetry import TracingHook
        from openfeature.contrib.provider.ofrep import OFREPProvider

        self.admin_url = admin_url.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        api.set_provider(OFREPProvider(base_url=self.admin_url, headers_factory=lambda: headers), domain="demo")
        self.client = api.get_client(domain="demo")
        self.client.add_hooks([TracingHook()])

    def version(self, agent: str, targeting_key: str) -> str | None:
        from openfeature.evaluation_context import EvaluationContext

        return self.client.get_object_details(agent, {}, EvaluationContext(targeting_key=targeting_key)).variant

    def start_canary(self, analysed: bool = False) -> str:
        """Define support-triage's versions and start the 5% canary of v13 (kept if one is in progress),
        under canary analysis if `analysed`; what was done, in words. OSError or ValueError with the
        service's answer when it cannot."""
        self._call(
            "PUT", f"/api/v1/agents/{SUPPORT_AGENT}", {"versions": SUPPORT_VERSIONS, "baseline": SUPPORT_BASELINE}
        )
        body = {
            "agent": SUPPORT_AGENT,
            "candidate": SUPPORT_CANARY,
            "steps": CANARY_STEPS,
            "reason": "agentopz-otel demo",
            # Held at 5% for the dashboards, unless analysed: the analysis rolls v13 back within minutes.
            "analysis": DEMO_ANALYSIS if analysed else {"enabled": False},
        }
        status, answer = self._call("POST", "/api/v1/rollouts", body, conflict_ok=True)
        if status == 409:
            return f"{SUPPORT_AGENT} already has a rollout: {answer.get('error', '')}"
        watched = " under canary analysis (watch /rollouts)" if analysed else ""
        return f"started a {CANARY_STEPS[0]}% canary of {SUPPORT_AGENT} {SUPPORT_CANARY} on {self.admin_url}{watched}"

    def _call(self, method: str, path: str, body: dict, conflict_ok: bool = False) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.admin_url + path, data=json.dumps(body).encode(), headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            try:
                answer = json.loads(error.read() or b"{}")
            except ValueError:
                answer = {}
            if conflict_ok and error.code == 409:
                return error.code, answer
            raise ValueError(f"{method} {path}: HTTP {error.code} {answer.get('error', error.reason)}") from None


class Tracers:
    """One TracerProvider (with a batching OTLP exporter) per service of the agents the demo plays."""

    def __init__(self, endpoint: str, protocol: str) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.providers = {}
        self.tracers = {}
        for service in dict.fromkeys(agent.service for agent in DEMO_AGENTS):
            provider = TracerProvider(
                resource=Resource.create(
                    {
                        "service.name": service,
                        "service.version": "2025.7.1",
                        "service.namespace": "agentopz-demo",
                        "deployment.environment.name": "demo",
                    }
                )
            )
            provider.add_span_processor(
                BatchSpanProcessor(
                    _exporter(endpoint, protocol),
                    max_queue_size=65536,
                    max_export_batch_size=1024,
                    schedule_delay_millis=EXPORT_DELAY_MS,
                )
            )
            self.providers[service] = provider
            self.tracers[service] = provider.get_tracer("agentopz_otel.demo")

    def shutdown(self) -> None:
        for provider in self.providers.values():
            provider.shutdown()


def _exporter(endpoint: str, protocol: str):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = not endpoint.startswith("https://")
        return OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    if not url.rstrip("/").endswith("/v1/traces"):
        url = url.rstrip("/") + "/v1/traces"
    return HttpSpanExporter(endpoint=url)


def sticky_conversations(seed: int, mean_runs: float) -> Conversations:
    """The conversations `--conversation-runs` plays: drawn from the seed, so the same seed sends the same ids."""
    return Conversations(random.Random(f"agentopz-demo-conversations:{seed}"), geometric_runs(mean_runs))


def start_root(tracer, plan: RunPlan, wall_ns: int):
    """The run's agent span, started (its attributes are set by RunExecution)."""
    from opentelemetry.trace import SpanKind

    return tracer.start_span(f"invoke_agent {plan.agent}", kind=SpanKind.INTERNAL, start_time=wall_ns)


class RunExecution:
    """Plays one plan: child spans are emitted when they end, the agent span last."""

    def __init__(self, plan: RunPlan, tracer, started: float, wall_ns: int, root=None) -> None:
        from opentelemetry import trace

        self.plan = plan
        self.tracer = tracer
        self.started = started  # monotonic
        self.wall_ns = wall_ns
        self.rng = random.Random(f"agentopz-demo-ids:{plan.index}")
        attributes: dict[str, Any] = {
            **agent_attributes(plan.agent),
            "gen_ai.agent.id": f"agt_{plan.agent.replace('-', '_')}",
            "gen_ai.conversation.id": plan.conversation_id,
        }
        if plan.prompt_version is not None:
            attributes["agentopz.prompt.version"] = plan.prompt_version
        if plan.agent_version is not None:
            attributes["gen_ai.agent.version"] = plan.agent_version
        self.root = root if root is not None else start_root(tracer, plan, wall_ns)
        self.root.set_attributes(attributes)
        self.context = trace.set_span_in_context(self.root)
        self.trace_id = format(self.root.get_span_context().trace_id, "032x")
        events: list[tuple[float, Callable[[], None]]] = [
            (call.end, (lambda call=call: self._emit(call))) for call in plan.calls
        ]
        if not plan.crashed:
            events.append((plan.duration, self._end_root))
        self._events: Iterator[tuple[float, Callable[[], None]]] = iter(events)
        self._next = next(self._events, None)
        self.done = self._next is None
        self.last_end_ns = wall_ns

    def _ns(self, offset: float) -> int:
        return self.wall_ns + int(offset * 1e9)

    def due(self, speed: float) -> float:
        assert self._next is not None
        return self.started + self._next[0] / speed

    def step(self) -> None:
        """Run the next event; `done` once the plan is played out."""
        assert self._next is not None
        self._next[1]()
        self._next = next(self._events, None)
        self.done = self._next is None

    def _emit(self, call: Call) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        attributes = call_attributes(self.plan, call, self.rng)
        if call.kind == "chat":
            name = f"chat {call.name}"
            kind = SpanKind.CLIENT
        else:
            name = f"execute_tool {call.name}"
            kind = SpanKind.INTERNAL
        span = self.tracer.start_span(
            name, context=self.context, kind=kind, attributes=attributes, start_time=self._ns(call.start)
        )
        if call.status != "ok":
            span.set_status(Status(StatusCode.ERROR, call.error_message))
        end = self._ns(call.end)
        span.end(end_time=end)
        self.last_end_ns = max(self.last_end_ns, end)

    def _end_root(self) -> None:
        from opentelemetry.trace import Status, StatusCode

        plan = self.plan
        end = self._ns(plan.duration)
        if plan.evaluation is not None:
            evaluation = plan.evaluation
            self.root.add_event(
                "gen_ai.evaluation.result",
                {
                    "gen_ai.evaluation.name": evaluation.name,
                    "gen_ai.evaluation.score.label": evaluation.label,
                    "gen_ai.evaluation.score.value": evaluation.score,
                    "gen_ai.evaluation.explanation": evaluation.explanation,
                },
                timestamp=end,
            )
        if plan.failure is not None:
            self.root.set_attribute("error.type", plan.failure[0])
            self.root.set_status(Status(StatusCode.ERROR, plan.failure[1]))
        self.root.end(end_time=end)

    def cut_short(self) -> None:
        """End the run now, as a process that is shutting down would."""
        from opentelemetry.trace import Status, StatusCode

        self.root.set_attribute("error.type", "Interrupted")
        self.root.set_status(Status(StatusCode.ERROR, "the demo stopped before the run finished"))
        self.root.end(end_time=max(time.time_ns(), self.last_end_ns + 1000))
        self.done = True


# -- the loop ---------------------------------------------------------------------------------------


@dataclass
class DemoStats:
    started: int = 0
    finished: int = 0
    cut_short: int = 0
    intended: Counter = field(default_factory=Counter)  # (agent, outcome) -> runs

    def line(self) -> str:
        return f"{self.started} runs started, {self.finished} finished, {self.started - self.finished} open"


class Demo:
    def __init__(
        self,
        tracers: Tracers,
        rate: float,
        seed: int = 1,
        speed: float = 1.0,
        duration: float | None = None,
        runs: int | None = None,
        drain: float = 120.0,
        log: Callable[[str], None] = lambda line: print(f"agentopz-otel demo: {line}", file=sys.stderr, flush=True),
        flags: PromptFlags | None = None,
        conversation_runs: float | None = None,
    ) -> None:
        self.tracers = tracers
        self.flags = flags
        self.rate = rate
        self.seed = seed
        self.speed = speed
        self.duration = duration
        self.runs = runs
        self.drain = drain
        self.log = log
        self.stats = DemoStats()
        self.stopping = False
        self.abort = False
        self._arrivals = random.Random(f"agentopz-demo-arrivals:{seed}")
        # None: every run is a conversation of its own, as the plan draws it.
        self._conversations = None if conversation_runs is None else sticky_conversations(seed, conversation_runs)

    def _picker(self, wall_ns: int, roots: list) -> VersionPicker | None:
        """Picks the version over OpenFeature inside the run's agent span (started here, kept in `roots`),
        so that the TracingHook's event lands on it."""
        flags = self.flags
        if flags is None:
            return None
        from opentelemetry import trace

        def pick(plan: RunPlan) -> str | None:
            root = start_root(self.tracers.tracers[plan.service], plan, wall_ns)
            roots.append(root)
            with trace.use_span(root, end_on_exit=False):
                return flags.version(plan.agent, plan.conversation_id)

        return pick

    def stop(self) -> None:
        """First call: start no new runs and let the open ones finish; second call: cut them short."""
        if self.stopping:
            self.abort = True
        self.stopping = True

    def run(self) -> DemoStats:
        heap: list[tuple[float, int, RunExecution]] = []
        sequence = itertools.count()
        begin = time.monotonic()
        next_arrival = begin
        next_report = begin + 30.0
        stopped_at: float | None = None
        index = 0
        while True:
            now = time.monotonic()
            if not self.stopping and (
                (self.duration is not None and now - begin >= self.duration)
                or (self.runs is not None and index >= self.runs)
            ):
                self.stopping = True
            if self.stopping and stopped_at is None:
                stopped_at = now
                if heap:
                    self.log(f"stopping: {self.stats.line()}; waiting for the open runs (Ctrl-C again: cut short)")
            while not self.stopping and now >= next_arrival:
                wall_ns = time.time_ns() - int((now - next_arrival) * 1e9)
                roots: list = []
                plan = plan_run(self.seed, index, self._picker(wall_ns, roots), self._conversations)
                index += 1
                tracer = self.tracers.tracers[plan.service]
                execution = RunExecution(plan, tracer, next_arrival, wall_ns, roots[0] if roots else None)
                self.stats.started += 1
                self.stats.intended[(plan.agent, plan.intended)] += 1
                if execution.done:
                    self.stats.finished += 1
                else:
                    heapq.heappush(heap, (execution.due(self.speed), next(sequence), execution))
                next_arrival += self._arrivals.expovariate(self.rate)
                if self.runs is not None and index >= self.runs:
                    break
            while heap and heap[0][0] <= now:
                _, _, execution = heapq.heappop(heap)
                execution.step()
                if execution.done:
                    self.stats.finished += 1
                else:
                    heapq.heappush(heap, (execution.due(self.speed), next(sequence), execution))
            if self.stopping and (
                not heap or self.abort or (stopped_at is not None and now - stopped_at >= self.drain)
            ):
                for _, _, execution in heap:
                    execution.cut_short()
                    self.stats.cut_short += 1
                    self.stats.finished += 1
                break
            if now >= next_report:
                self.log(self.stats.line())
                next_report += 30.0
            wake = heap[0][0] if heap else math.inf
            if not self.stopping:
                wake = min(wake, next_arrival)
            time.sleep(max(0.0, min(wake - time.monotonic(), 0.1)))
        return self.stats


def main(args: argparse.Namespace) -> int:
    try:
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        print(
            "agentopz-otel demo needs the OpenTelemetry SDK and OTLP exporters: pip install 'agentopz-otel[demo]'",
            file=sys.stderr,
        )
        return 1
    for name in ("rate", "speed"):
        if not getattr(args, name) > 0:
            print(f"agentopz-otel demo: --{name} must be greater than 0", file=sys.stderr)
            return 2
    if args.conversation_runs is not None and not 1 <= args.conversation_runs < math.inf:
        print("agentopz-otel demo: --conversation-runs must be a number of at least 1", file=sys.stderr)
        return 2
    protocol = "grpc" if args.protocol == "grpc" else "http"
    endpoint = args.endpoint or ("localhost:4317" if protocol == "grpc" else "localhost:4318")
    tracers = Tracers(endpoint, protocol)
    demo = Demo(
        tracers,
        args.rate,
        args.seed,
        args.speed,
        args.duration,
        args.runs,
        args.drain,
        conversation_runs=args.conversation_runs,
    )
    if not args.no_rollout:
        demo.flags = _prompt_flags(args.flags_url, demo.log, args.canary_analysis)

    def on_signal(signum, frame) -> None:
        demo.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    until = f"for {args.duration:g}s" if args.duration is not None else "until stopped (Ctrl-C)"
    if args.runs is not None:
        until = f"{args.runs} runs"
    demo.log(f"sending {args.rate:g} runs/s to {endpoint} over {protocol}, seed {args.seed}, {until}")
    try:
        stats = demo.run()
    finally:
        tracers.shutdown()
        if demo.flags is not None:
            from openfeature import api

            api.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = ", ".join(f"{outcome} {count}" for outcome, count in sorted(_by_outcome(stats).items()))
    cut = f"; {stats.cut_short} cut short" if stats.cut_short else ""
    demo.log(f"done: {stats.started} runs sent{cut}; planned outcomes: {summary}")
    return 0


def _prompt_flags(flags_url: str, log: Callable[[str], None], analysed: bool = False) -> PromptFlags | None:
    """The OpenFeature client with the canary started on the service, else None (said in the log)."""
    try:
        flags = PromptFlags(flags_url, os.environ.get("AGENTOPZ_ADMIN_TOKEN"))
    except ImportError:
        log("no rollout: the OpenFeature SDK is missing (pip install 'agentopz-otel[demo]')")
        return None
    try:
        log(flags.start_canary(analysed))
    except (OSError, ValueError) as error:
        log(f"no rollout on {flags_url} ({error}); the seed picks {SUPPORT_AGENT}'s {CANARY_STEPS[0]}% canary")
        return None
    return flags


def _by_outcome(stats: DemoStats) -> Counter:
    totals: Counter = Counter()
    for (_, outcome), count in stats.intended.items():
        totals[outcome] += count
    return totals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="OTLP endpoint (default: localhost:4317 for grpc, localhost:4318 for http)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="OTLP transport (default: grpc)")
    parser.add_argument(
        "--rate", type=float, default=2.0, metavar="RUNS_PER_SEC", help="new runs per second (default: 2)"
    )
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop starting runs after this long")
    parser.add_argument("--runs", type=int, metavar="N", help="stop after starting N runs")
    parser.add_argument("--seed", type=int, default=1, help="the same seed sends the same runs (default: 1)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="play runs FACTOR times faster than the durations their spans report (default: 1)",
    )
    parser.add_argument(
        "--flags-url",
        default="http://127.0.0.1:9464",
        metavar="URL",
        help="the service's admin port: the demo starts its canary there and picks versions over OpenFeature "
        "(default: http://127.0.0.1:9464; admin token from AGENTOPZ_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--no-rollout", action="store_true", help="no rollout or OpenFeature: the seed picks the 5%% canary"
    )
    parser.add_argument(
        "--canary-analysis",
        action="store_true",
        help="start the canary under the service's canary analysis, which rolls the worse version back by itself",
    )
    parser.add_argument(
        "--conversation-runs",
        type=float,
        metavar="MEAN",
        help="sticky conversations: each agent's conversation id (the canary's targeting key) is reused for "
        "MEAN runs on average, geometrically distributed (default: every run a conversation of its own)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="when stopping, wait this long for open runs before cutting them short (default: 120)",
    )
