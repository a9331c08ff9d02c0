"""The synthetic fleet: the AI agents that the demo, the benchmarks and the tests send traffic from.

One description of the agents (service, models, tools and how each fails, system prompts, prompt
versions, the limits the stack's config sets for them) and of their providers (server, how the API
fails, how often, retries), used by:

- `agentopz-otel demo`, which plays `plan_run` plans through the OpenTelemetry SDK: each plan is a run
  as data, drawn from a seed and the run's index alone, with its calls, failures, durations and the
  outcome it is meant to get (`RunPlan.intended`);
- bench/bench.py, which builds OTLP requests of random traces of the same agents, models and failure
  shapes (`dialect`: the instrumentation their traces speak there);
- the tests' span builders (tests/support), which start from `chat_attributes` and `tool_attributes`.

Realistic shapes: a failed call answers fast (a 429 in tenths of a second) unless it is a timeout,
which takes its timeout; a successful chat call takes as long as its output tokens at the model's
speed, a tool call its tool's declared seconds; retries back off exponentially with jitter; a
rate-limit storm hits OpenAI for a window of runs; a runaway retry loop climbs past the budget. Runs
come in sticky conversations (`Conversations`: ids per agent, runs per conversation geometric with a
mean of CONVERSATION_MEAN_RUNS) for whoever wants a targeting key reused; the demo's plans draw one
conversation id per run.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

from .records import ABANDONED, BUDGET_EXCEEDED, ERROR, LLM_ERROR, QUALITY_FAILURE, SUCCESS, TIMEOUT, TOOL_ERROR

# -- failure shapes, providers, models --------------------------------------------------------------

# A failed call answers within this many seconds (a 429, an overload, a 404, a missing key): it ends
# fast. A timeout takes its timeout, and a failure that does the work first (a failing test run) its work.
FAILED_CALL_SECONDS = (0.08, 0.4)


@dataclass(frozen=True)
class Failure:
    """How a failed call shows on its span: `error.type`, the status description, the HTTP status, the
    call status agentopz_llm_calls_total or agentopz_tool_calls_total counts it as, and how long it takes."""

    type: str
    message: str
    http_status: int | None = None
    status: str = "error"
    seconds: tuple[float, float] = FAILED_CALL_SECONDS


@dataclass(frozen=True)
class Provider:
    name: str  # gen_ai.provider.name
    server: str  # server.address
    failure: Failure  # how its API usually fails (the message may name the {model})
    failure_rate: float  # the share of attempts that fail so
    storm_failure_rate: float  # ... during a rate-limit storm
    attempts: int  # tries of one call by its SDK client before the agent gives up (llm_error)


OPENAI = "openai"
ANTHROPIC = "anthropic"
SELF_HOSTED = "vllm"
PROVIDERS = {
    provider.name: provider
    for provider in (
        Provider(
            OPENAI,
            "api.openai.com",
            Failure(
                "RateLimitError",
                "Error code: 429 - Rate limit reached for {model} on requests per min (RPM)",
                429,
                "rate_limited",
            ),
            0.02,
            0.55,
            4,
        ),
        Provider(
            ANTHROPIC,
            "api.anthropic.com",
            Failure(
                "OverloadedError",
                "Error code: 529 - {{'type': 'overloaded_error', 'message': 'Overloaded'}}",
                529,
                "server_error",
            ),
            0.01,
            0.01,
            3,
        ),
        Provider(SELF_HOSTED, "inference.internal", Failure("APIConnectionError", "Connection error."), 0.0, 0.0, 3),
    )
}
# The other way a provider's API fails: a server error that still reports its usage.
SERVER_ERROR = Failure("InternalServerError", "Internal server error", 500, "server_error")


@dataclass(frozen=True)
class Model:
    name: str  # gen_ai.request.model
    provider: str
    response: str  # gen_ai.response.model: the snapshot the provider says it ran
    tokens_per_second: float  # output speed, for call latencies
    priced: bool = True  # in the genai-prices catalogue


GPT_4O = "gpt-4o-2024-08-06"
GPT_4O_MINI = "gpt-4o-mini"
GPT_41_MINI = "gpt-4.1-mini"
CLAUDE_SONNET = "claude-sonnet-4-20250514"
CLAUDE_HAIKU = "claude-3-5-haiku-20241022"
ADDRESS_PARSER = "acme-address-parser-7b"
MODELS = {
    model.name: model
    for model in (
        Model(GPT_4O, OPENAI, GPT_4O, 70.0),
        Model(GPT_4O_MINI, OPENAI, "gpt-4o-mini-2024-07-18", 110.0),
        Model(GPT_41_MINI, OPENAI, "gpt-4.1-mini-2025-04-14", 100.0),
        Model(CLAUDE_SONNET, ANTHROPIC, CLAUDE_SONNET, 60.0),
        Model(CLAUDE_HAIKU, ANTHROPIC, CLAUDE_HAIKU, 90.0),
        Model(ADDRESS_PARSER, SELF_HOSTED, ADDRESS_PARSER, 200.0, priced=False),  # self-hosted: nobody prices it
    )
}
PRICED_MODELS = tuple(model for model in MODELS.values() if model.priced)


# -- tools and agents -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    seconds: tuple[float, float]  # how long an answered call takes
    failures: tuple[Failure, ...]  # how it fails, most common first


KB_TIMEOUT = Failure("TimeoutError", "search_kb: backend did not answer within 1.5s", seconds=(1.5, 1.55))
KB_UNAVAILABLE = Failure("ServiceUnavailable", "search_kb: kb-search is unavailable", 503)
CARRIER_TIMEOUT = Failure("TimeoutError", "carrier_api: read timed out after 30s", seconds=(30.0, 30.5))
SEARCH_UNAVAILABLE = Failure("HTTPError", "web_search: search backend unavailable", 503)
PAGE_NOT_FOUND = Failure("HTTPError", "fetch_page: page not found", 404)
# A broken suite fails at collection, a flaky test at the end of a full run.
TESTS_BROKEN = Failure("CalledProcessError", "run_tests: pytest exited with 2 (collection failed)", seconds=(4.0, 9.0))
TEST_FLAKY = Failure("CalledProcessError", "run_tests: 1 failed (test_retry_backoff)", seconds=(3.0, 8.0))

GENAI = "genai"  # the OpenTelemetry GenAI semantic conventions
OPENINFERENCE = "openinference"


@dataclass(frozen=True)
class Agent:
    name: str  # gen_ai.agent.name
    service: str  # service.name of the process it runs in
    share: float  # of the demo's runs (0: the demo has no plan for it; the bench still sends it)
    dialect: str  # GENAI or OPENINFERENCE: what its traces speak in the bench
    models: tuple[str, ...]
    tools: tuple[Tool, ...]
    system_prompts: tuple[str, ...]
    # Prompt versions (the rollout flag's variants) -> what each tells the agent to use; the first is the baseline.
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    agent_version: str | None = None  # gen_ai.agent.version on its agent span
    # The limits collector-config/agentopz.yaml (runs.limits) sets for it: the runaway loop and the
    # hanging carrier API are sized to cross them, every other run stays under.
    limits: dict[str, float] = field(default_factory=dict)

    def tool(self, name: str) -> Tool:
        return next(tool for tool in self.tools if tool.name == name)


RESEARCH_SYSTEM = (
    "You are a research assistant. Search the web, read the most relevant pages and answer with a "
    "concise, sourced summary. Cite every claim with its URL. Never invent sources."
)
SUPPORT_AGENT = "support-triage"
ORDER_AGENT = "order-tracker"
RESEARCH_AGENT = "research-assistant"
REVIEW_AGENT = "code-reviewer"
SUPPORT_BASELINE, SUPPORT_CANARY = "v12", "v13"

AGENTS = {
    agent.name: agent
    for agent in (
        Agent(
            SUPPORT_AGENT,
            "support-api",
            0.40,
            GENAI,
            (GPT_4O_MINI, GPT_4O),
            (
                Tool("search_kb", (0.08, 0.6), (KB_TIMEOUT, KB_UNAVAILABLE)),
                Tool(
                    "lookup_customer",
                    (0.05, 0.3),
                    (Failure("KeyError", "lookup_customer: no customer with that email"),),
                ),
                Tool(
                    "create_ticket",
                    (0.2, 0.8),
                    (Failure("HTTPError", "create_ticket: ticketing API answered 502", 502),),
                ),
                Tool(
                    "escalate",
                    (0.3, 1.2),
                    (Failure("TimeoutError", "escalate: paging service timed out", seconds=(10.0, 10.2)),),
                ),
            ),
            (
                "You are a customer support triage agent for Acme Cloud. Classify the request, look up the "
                "customer, search the knowledge base and either answer or open a ticket. Never promise refunds.",
                "You are a customer support triage agent for Acme Cloud (v2). Be concise. Always cite the KB "
                "article id you used. Escalate anything about billing disputes or data loss to a human.",
            ),
            versions={
                SUPPORT_BASELINE: {"prompt": "support-triage/v12", "model": GPT_4O_MINI},
                SUPPORT_CANARY: {"prompt": "support-triage/v13", "model": GPT_4O},
            },
            limits={"max_cost_usd": 0.5},
        ),
        Agent(
            ORDER_AGENT,
            "order-service",
            0.30,
            GENAI,
            (GPT_4O_MINI, ADDRESS_PARSER),
            (
                Tool("lookup_order", (0.03, 0.25), (Failure("KeyError", "lookup_order: no order with that id"),)),
                Tool("carrier_api", (0.2, 2.0), (CARRIER_TIMEOUT,)),
            ),
            (
                "You track orders. Look the order up, ask the carrier for its status and answer with one JSON "
                "object: order_id, status, carrier and eta. Never guess a status the carrier did not give.",
            ),
            limits={"max_duration_seconds": 30.0},
        ),
        Agent(
            RESEARCH_AGENT,
            "research-worker",
            0.15,
            OPENINFERENCE,
            (CLAUDE_SONNET,),
            (Tool("web_search", (0.4, 1.6), (SEARCH_UNAVAILABLE,)), Tool("fetch_page", (0.3, 2.5), (PAGE_NOT_FOUND,))),
            (RESEARCH_SYSTEM,),
            limits={"max_cost_usd": 1.0, "max_steps": 30},
        ),
        Agent(
            REVIEW_AGENT,
            "code-review-bot",
            0.15,
            GENAI,
            (GPT_4O,),
            (
                Tool("read_file", (0.02, 0.15), (Failure("FileNotFoundError", "read_file: no such file"),)),
                Tool("list_dir", (0.01, 0.08), (Failure("PermissionError", "list_dir: permission denied"),)),
                Tool("run_tests", (3.0, 8.0), (TEST_FLAKY, TESTS_BROKEN)),
                Tool("git_diff", (0.05, 0.4), (Failure("CalledProcessError", "git_diff: unknown revision"),)),
                Tool("post_comment", (0.2, 0.9), (Failure("HTTPError", "post_comment: GitHub API answered 403", 403),)),
            ),
            (
                "You review pull requests. Read the diff, run the tests, and leave specific, actionable comments. "
                "Flag security issues first, then correctness, then style.",
                "You review pull requests for the payments team. Pay special attention to money arithmetic, "
                "idempotency keys and retries. Leave at most five comments.",
            ),
            agent_version="3.2.0",
        ),
        Agent(
            "sql-analyst",
            "analytics-copilot",
            0.0,
            GENAI,
            (GPT_41_MINI, CLAUDE_HAIKU),
            (
                Tool(
                    "list_tables",
                    (0.1, 0.6),
                    (Failure("TimeoutError", "list_tables: warehouse did not answer", seconds=(20.0, 20.2)),),
                ),
                Tool("describe_table", (0.05, 0.4), (Failure("ValueError", "describe_table: unknown table"),)),
                Tool("run_query", (0.5, 12.0), (Failure("PermissionError", "run_query: read-only role cannot write"),)),
                Tool("plot_chart", (0.3, 1.5), (Failure("ValueError", "plot_chart: no numeric column"),)),
            ),
            (
                "You translate business questions into read-only SQL over the warehouse. Inspect the schema "
                "before querying, limit result sets to 1000 rows and explain the query in one sentence.",
            ),
        ),
    )
}
SUPPORT_VERSIONS = AGENTS[SUPPORT_AGENT].versions
LIMITS = {agent.name: agent.limits for agent in AGENTS.values() if agent.limits}

# Runs whose index falls in [start, end) of every STORM_PERIOD runs hit an OpenAI rate-limit storm.
STORM_PERIOD = 1200
STORM_WINDOW = (300, 420)
# An answered chat call takes as long as its output tokens at the model's speed, plus the time to the
# first token (an unanswered one takes its failure's seconds).
FIRST_TOKEN_SECONDS = (0.25, 0.6)
# The agent's own work between two calls (parsing an answer, building the next prompt).
THINK_SECONDS = (0.005, 0.05)
# Run index % RUNAWAY_PERIOD == RUNAWAY_OFFSET: a research-assistant run stuck in a retry loop.
RUNAWAY_PERIOD = 500
RUNAWAY_OFFSET = 40
RUNAWAY_ITERATIONS = (44, 50)

# -- sticky conversations ---------------------------------------------------------------------------

# A user asks again after a run with probability 1 - 1/CONVERSATION_MEAN_RUNS: runs per conversation
# are geometric, most conversations short and a few long.
CONVERSATION_MEAN_RUNS = 6.0
RunsDrawer = Callable[[random.Random], int]


def geometric_runs(mean: float = CONVERSATION_MEAN_RUNS) -> RunsDrawer:
    """Draws a conversation's runs from the geometric distribution on 1, 2, ... with this mean."""
    if not 1 <= mean < math.inf:
        raise ValueError(f"a conversation has at least one run and a finite mean: {mean}")
    if mean == 1:
        return lambda rng: 1
    log_continue = math.log(1.0 - 1.0 / mean)

    def draw(rng: random.Random) -> int:
        # Inverse CDF: P(runs > k) = (1 - 1/mean)^k; 1 - random() lies in (0, 1], so the log is finite.
        return 1 + int(math.log(1.0 - rng.random()) / log_continue)

    return draw


def fixed_runs(runs: int) -> RunsDrawer:
    """Every conversation has exactly `runs` runs."""
    if runs < 1:
        raise ValueError(f"a conversation has at least one run: {runs}")
    return lambda rng: runs


@dataclass(frozen=True)
class Turn:
    """A run's place in its conversation."""

    conversation_id: str  # gen_ai.conversation.id, and the run's targeting key for a rollout flag
    index: int  # 0 for the conversation's first run
    runs: int  # the conversation's runs in all

    @property
    def last(self) -> bool:
        return self.index == self.runs - 1


class Conversations:
    """Sticky conversations: each agent's runs come in conversations of several runs (as many as `runs`
    draws), one after another, so a conversation id is the targeting key of all of them. The same rng
    state gives the same ids and lengths; memory is one open conversation per agent."""

    def __init__(self, rng: random.Random, runs: RunsDrawer | None = None) -> None:
        self._rng = rng
        self._runs = runs or geometric_runs()
        self._open: dict[str, Turn] = {}

    def next(self, agent: str) -> Turn:
        """The agent's next run: the next turn of its open conversation, or the first of a new one."""
        turn = self._open.get(agent)
        if turn is None or turn.last:
            turn = Turn(f"conv-{self._rng.getrandbits(48):012x}", 0, self._runs(self._rng))
        else:
            turn = Turn(turn.conversation_id, turn.index + 1, turn.runs)
        self._open[agent] = turn
        return turn


# -- the demo's runs as data ------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One LLM or tool call of a plan; times are seconds from the start of the run."""

    kind: str  # "chat" or "tool"
    start: float
    end: float
    name: str  # model or tool name
    provider: str = ""
    status: str = "ok"  # as agentopz_llm_calls_total and agentopz_tool_calls_total count it
    error_type: str | None = None
    error_message: str = ""
    http_status: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    finish_reason: str | None = None
    output: str | None = None  # the final answer, on the run's last chat call
    output_type: str = "text"
    system: str | None = None


@dataclass(frozen=True)
class Evaluation:
    name: str
    label: str
    score: float
    explanation: str


@dataclass
class RunPlan:
    index: int
    service: str
    agent: str
    scenario: str
    intended: str  # the outcome the run is meant to get under the stack's config
    calls: list[Call] = field(default_factory=list)
    duration: float = 0.0
    prompt_version: str | None = None  # agentopz.prompt.version on the agent span
    agent_version: str | None = None  # gen_ai.agent.version on the agent span
    failure: tuple[str, str] | None = None  # (error.type, message) of a failed run
    crashed: bool = False  # the agent died: its span never ends
    evaluation: Evaluation | None = None
    conversation_id: str = ""


# Picks a support-triage run's prompt version (e.g. over OpenFeature), None: the seed picks it.
VersionPicker = Callable[[RunPlan], "str | None"]
DEMO_AGENTS = tuple(agent for agent in AGENTS.values() if agent.share)
SUPPORT_ANSWERS = (
    "You can reset your password from Settings > Security > Reset password. I have also sent a reset link "
    "to the email address on file.",
    "Your subscription renews on the 14th. To switch to annual billing, open Billing > Plan and choose "
    "Annual; the difference is prorated.",
    "The export finished but was larger than 25 MB, so we emailed a download link instead. It stays valid for 7 days.",
    "I have raised the seat limit on your workspace to 25. New invitations can be sent right away.",
)
SUPPORT_REFUSAL = "I'm sorry, but I can't help with that request."
CARRIERS = ("UPS", "DHL", "FedEx", "USPS")
ORDER_STATUSES = ("in_transit", "out_for_delivery", "delivered", "label_created")
RESEARCH_TOPICS = (
    "battery recycling regulation in the EU",
    "open-source vector databases",
    "heat pump efficiency in cold climates",
    "the history of the OTLP protocol",
    "carbon accounting standards for cloud workloads",
)


class _Builder:
    """Builds one run's calls in time order, with retries for rate limits and overloads."""

    def __init__(self, rng: random.Random, plan: RunPlan, storm: bool) -> None:
        self.rng = rng
        self.plan = plan
        self.storm = storm
        self.t = rng.uniform(0.005, 0.05)
        self.upstream_errors = True

    def think(self, low: float, high: float) -> None:
        self.t += self.rng.uniform(low, high)

    def _failure_rate(self, provider: Provider) -> float:
        if not self.upstream_errors:
            return 0.0
        return provider.storm_failure_rate if self.storm else provider.failure_rate

    def chat(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
        finish_reason: str = "stop",
        output: str | None = None,
        output_type: str = "text",
        system: str | None = None,
    ) -> bool:
        """A chat call; False when every attempt failed (the run then fails with llm_error)."""
        provider = PROVIDERS[MODELS[model].provider]
        attempts = provider.attempts
        for attempt in range(attempts):
            if self.rng.random() < self._failure_rate(provider):
                # The agent backs off before the next attempt.
                failure = provider.failure
                end = self.t + self.rng.uniform(*failure.seconds)
                call = Call(
                    "chat",
                    self.t,
                    end,
                    model,
                    provider.name,
                    status=failure.status,
                    error_type=failure.type,
                    error_message=failure.message.format(model=model),
                    http_status=failure.http_status,
                    system=system,
                )
                self.plan.calls.append(call)
                self.t = end
                if attempt < attempts - 1:
                    self.t += (2**attempt) * self.rng.uniform(0.8, 1.2)  # exponential backoff with jitter
                continue
            latency = self.rng.uniform(*FIRST_TOKEN_SECONDS) + output_tokens / MODELS[model].tokens_per_second
            end = self.t + latency
            self.plan.calls.append(
                Call(
                    "chat",
                    self.t,
                    end,
                    model,
                    provider.name,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cache_read=cache_read,
                    cache_write=cache_write,
                    finish_reason=finish_reason,
                    output=output,
                    output_type=output_type,
                    system=system,
                )
            )
            self.t = end
            return True
        last = self.plan.calls[-1]
        self.fail(last.error_type or "Error", last.error_message, LLM_ERROR)
        return False

    def tool(self, name: str, error: Failure | None = None) -> None:
        """A tool call that takes the tool's declared seconds, or its failure's."""
        seconds = AGENTS[self.plan.agent].tool(name).seconds if error is None else error.seconds
        end = self.t + self.rng.uniform(*seconds)
        if error is None:
            self.plan.calls.append(Call("tool", self.t, end, name))
        else:
            self.plan.calls.append(
                Call(
                    "tool",
                    self.t,
                    end,
                    name,
                    status="error",
                    error_type=error.type,
                    error_message=error.message,
                    http_status=error.http_status,
                )
            )
        self.t = end

    def fail(self, error_type: str, message: str, intended: str) -> None:
        self.plan.failure = (error_type, message)
        self.plan.intended = intended
        self.t += self.rng.uniform(0.01, 0.05)

    def finish(self) -> RunPlan:
        self.plan.duration = self.t + self.rng.uniform(0.01, 0.08)
        return self.plan


def _support(b: _Builder, rng: random.Random, pick_version: VersionPicker | None) -> None:
    plan = b.plan
    canary = rng.random() < 0.05  # drawn either way, so the rest of the plan does not depend on the flags
    picked = pick_version(plan) if pick_version is not None else None
    if picked in SUPPORT_VERSIONS:
        canary = picked == SUPPORT_CANARY
    plan.prompt_version = SUPPORT_CANARY if canary else SUPPORT_BASELINE
    roll = rng.random()
    quality = roll < (0.15 if canary else 0.02)
    tool_failure = not quality and roll > 0.985
    plan.scenario = "quality_failure" if quality else "tool_failure" if tool_failure else "normal"
    question = rng.randint(600, 1400)
    if not b.chat(GPT_4O_MINI, question + 700, rng.randint(25, 70), cache_read=640 if rng.random() < 0.8 else 0):
        return
    b.think(0.005, 0.03)
    if tool_failure:
        b.tool("search_kb", KB_TIMEOUT)
        b.think(0.02, 0.1)
        b.tool("search_kb", KB_UNAVAILABLE)
        b.fail("ToolError", "search_kb failed twice; giving up", TOOL_ERROR)
        return
    if rng.random() < 0.04:  # a flaky search that works on the second try
        b.tool("search_kb", KB_TIMEOUT)
        b.think(0.01, 0.05)
    b.tool("search_kb")
    if rng.random() < 0.5:
        b.tool("lookup_customer")
    b.think(0.005, 0.03)
    context = question + rng.randint(1800, 3200)
    answer = SUPPORT_REFUSAL if quality else rng.choice(SUPPORT_ANSWERS)
    if canary:
        if not b.chat(GPT_4O, context + 700, rng.randint(250, 500), cache_read=1024):
            return
        b.think(0.005, 0.03)
        if not b.chat(GPT_4O, context + 1200, rng.randint(200, 450), cache_read=1024, output=answer):
            return
    elif not b.chat(GPT_4O_MINI, context + 700, rng.randint(120, 380), cache_read=1024, output=answer):
        return
    if quality:
        plan.intended = QUALITY_FAILURE
        plan.evaluation = Evaluation("helpfulness", "fail", round(rng.uniform(0.05, 0.3), 2), "the answer refuses")


def _order(b: _Builder, rng: random.Random) -> None:
    plan = b.plan
    roll = rng.random()
    plan.scenario = (
        "crash"
        if roll < 0.005
        else "bug"
        if roll < 0.015
        else "carrier_hang"
        if roll < 0.035
        else "quality_failure"
        if roll < 0.065
        else "normal"
    )
    if plan.scenario == "bug":
        b.upstream_errors = False  # a plain bug, nothing upstream to blame
    order_id = f"A-{rng.randint(10000, 99999)}"
    if not b.chat(GPT_4O_MINI, rng.randint(700, 1100), rng.randint(20, 45), cache_read=512):
        return
    b.think(0.005, 0.02)
    if plan.scenario == "bug":
        b.fail("KeyError", "KeyError: 'tracking_number'", ERROR)
        return
    b.tool("lookup_order")
    if plan.scenario == "crash":
        b.think(0.05, 0.2)
        plan.crashed = True
        plan.intended = ABANDONED
        return
    if plan.scenario == "carrier_hang":
        b.tool("carrier_api", CARRIER_TIMEOUT)
    else:
        b.tool("carrier_api")
    # A free-text address goes through the self-hosted parser.
    if rng.random() < 0.1 and not b.chat(ADDRESS_PARSER, rng.randint(150, 300), rng.randint(20, 40)):
        return
    b.think(0.005, 0.02)
    if plan.scenario == "quality_failure":
        output = "Your order is probably on its way! Let me know if there is anything else."
    elif plan.scenario == "carrier_hang":
        output = json.dumps({"order_id": order_id, "status": "unknown", "carrier": None, "eta": None})
    else:
        output = json.dumps(
            {
                "order_id": order_id,
                "status": rng.choice(ORDER_STATUSES),
                "carrier": rng.choice(CARRIERS),
                "eta": f"2025-07-{rng.randint(1, 28):02d}",
            }
        )
    if not b.chat(GPT_4O_MINI, rng.randint(1200, 1800), rng.randint(40, 90), 512, output=output, output_type="json"):
        return
    if plan.scenario == "carrier_hang":
        plan.intended = TIMEOUT
    elif plan.scenario == "quality_failure":
        plan.intended = QUALITY_FAILURE
        plan.evaluation = Evaluation("format", "fail", 0.0, "the answer is not the JSON order status")


def _research(b: _Builder, rng: random.Random, runaway: bool) -> None:
    plan = b.plan
    topic = rng.choice(RESEARCH_TOPICS)
    if runaway:
        plan.scenario = "runaway"
        plan.intended = BUDGET_EXCEEDED
        b.upstream_errors = False
        context = rng.randint(30000, 34000)
        b.chat(CLAUDE_SONNET, context, 300, cache_write=2200, system=RESEARCH_SYSTEM)
        for _ in range(rng.randint(*RUNAWAY_ITERATIONS)):
            b.tool("web_search", SEARCH_UNAVAILABLE)
            context += rng.randint(1800, 2600)
            # The retries rewrite the scratchpad, so only the system prompt stays cached.
            b.chat(CLAUDE_SONNET, context, rng.randint(120, 250), cache_read=2200, system=RESEARCH_SYSTEM)
        b.fail("MaxIterationsExceeded", "agent stopped after too many iterations", BUDGET_EXCEEDED)
        return
    quality = rng.random() < 0.04
    plan.scenario = "quality_failure" if quality else "normal"
    context = rng.randint(2500, 4000)
    if not b.chat(CLAUDE_SONNET, context, rng.randint(120, 300), cache_write=2200, system=RESEARCH_SYSTEM):
        return
    for _ in range(rng.randint(2, 5)):
        b.tool("web_search")
        b.tool("fetch_page", None if rng.random() > 0.03 else PAGE_NOT_FOUND)
        context += rng.randint(1500, 4000)
        if not b.chat(CLAUDE_SONNET, context, rng.randint(150, 400), cache_read=context - 1500, system=RESEARCH_SYSTEM):
            return
    b.think(0.01, 0.05)
    if quality:
        output = f"Summary: {topic}. The main findings are that the first source argues"
        ok = b.chat(CLAUDE_SONNET, context, 1024, context - 1500, 0, "length", output, system=RESEARCH_SYSTEM)
    else:
        output = f"Summary: {topic}. Three sources agree on the main points; see the cited URLs for details."
        ok = b.chat(
            CLAUDE_SONNET,
            context,
            rng.randint(500, 900),
            context - 1500,
            output=output,
            system=RESEARCH_SYSTEM,
        )
    if ok and quality:
        plan.intended = QUALITY_FAILURE
        plan.evaluation = Evaluation("faithfulness", "fail", 0.2, "the answer is cut off mid-sentence")


def _code_review(b: _Builder, rng: random.Random) -> None:
    plan = b.plan
    roll = rng.random()
    plan.scenario = "tests_broken" if roll < 0.03 else "quality_failure" if roll < 0.05 else "normal"
    diff = rng.randint(3000, 9000)
    if not b.chat(GPT_4O, diff + 900, rng.randint(150, 300), cache_read=768):
        return
    for _ in range(rng.randint(2, 5)):
        b.tool("read_file")
    context = diff + rng.randint(4000, 9000)
    if not b.chat(GPT_4O, context, rng.randint(200, 500), cache_read=diff):
        return
    if plan.scenario == "tests_broken":
        b.tool("run_tests", TESTS_BROKEN)
        b.fail("ToolError", "cannot review: the test suite does not run", TOOL_ERROR)
        return
    if rng.random() < 0.08:  # a flaky test, green on the rerun
        b.tool("run_tests", TEST_FLAKY)
    b.tool("run_tests")
    quality = plan.scenario == "quality_failure"
    output = "" if quality else "LGTM with two suggestions: guard the empty-list case and add a test for it."
    if not b.chat(GPT_4O, context + 1500, 5 if quality else rng.randint(300, 700), context, output=output):
        return
    if quality:
        plan.intended = QUALITY_FAILURE
        plan.evaluation = Evaluation("review_usefulness", "fail", 0.0, "the review is empty")


PLANS: dict[str, Callable[[_Builder, random.Random], None]] = {ORDER_AGENT: _order, REVIEW_AGENT: _code_review}


def in_storm(index: int) -> bool:
    return STORM_WINDOW[0] <= index % STORM_PERIOD < STORM_WINDOW[1]


def plan_run(
    seed: int, index: int, pick_version: VersionPicker | None = None, conversations: Conversations | None = None
) -> RunPlan:
    """The run with this index under this seed: always the same plan, but for support-triage's prompt
    version when `pick_version` (called with the plan's agent and conversation id set) picks it, and for
    the conversation id when `conversations` gives it (the next turn of the agent's conversation)."""
    rng = random.Random(f"agentopz-demo:{seed}:{index}")
    runaway = index % RUNAWAY_PERIOD == RUNAWAY_OFFSET
    if runaway:
        agent = AGENTS[RESEARCH_AGENT]
    else:
        roll = rng.random()
        for agent in DEMO_AGENTS:
            if roll < agent.share:
                break
            roll -= agent.share
    conversation_id = f"conv-{rng.getrandbits(48):012x}"  # drawn either way: the rest of the plan stays
    if conversations is not None:
        conversation_id = conversations.next(agent.name).conversation_id
    plan = RunPlan(index, agent.service, agent.name, "normal", SUCCESS, conversation_id=conversation_id)
    plan.agent_version = agent.agent_version
    builder = _Builder(rng, plan, in_storm(index))
    if agent.name == SUPPORT_AGENT:
        _support(builder, rng, pick_version)
    elif agent.name == RESEARCH_AGENT:
        _research(builder, rng, runaway)
    else:
        PLANS[agent.name](builder, rng)
    if plan.evaluation is None and plan.intended == SUCCESS and rng.random() < 0.25:
        # An online evaluator samples a quarter of the good runs.
        plan.evaluation = Evaluation("helpfulness", "pass", round(rng.uniform(0.75, 1.0), 2), "answers the question")
    return builder.finish()


# -- spans ------------------------------------------------------------------------------------------


def chat_attributes(model: str, provider: str) -> dict[str, Any]:
    """What every chat span of the fleet says in the GenAI semantic conventions, answered or not."""
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model}


def usage_attributes(input_tokens: Any, output_tokens: Any, cache_read: Any = None, cache_write: Any = None) -> dict:
    """A chat call's token usage (cache counts only when given); values as given, so tests can send bad ones."""
    attributes = {"gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": output_tokens}
    if cache_read is not None:
        attributes["gen_ai.usage.cache_read.input_tokens"] = cache_read
    if cache_write is not None:
        attributes["gen_ai.usage.cache_creation.input_tokens"] = cache_write
    return attributes


def agent_attributes(name: str) -> dict[str, Any]:
    """The run's agent span (invoke_agent) in the GenAI semantic conventions."""
    return {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name}


def tool_attributes(name: str) -> dict[str, Any]:
    return {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}


def call_attributes(plan: RunPlan, call: Call, rng: random.Random) -> dict[str, Any]:
    """A demo call's span attributes in the GenAI semantic conventions; `rng` draws its response or tool call id."""
    if call.kind == "tool":
        return _tool_call_attributes(plan, call, rng)
    attributes: dict[str, Any] = {
        **chat_attributes(call.name, call.provider),
        "gen_ai.agent.name": plan.agent,
        "gen_ai.conversation.id": plan.conversation_id,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 1024 if call.provider == ANTHROPIC else 2048,
        "gen_ai.output.type": call.output_type,
        "server.address": PROVIDERS[call.provider].server,
        "server.port": 443,
    }
    if call.system is not None:
        attributes["gen_ai.system_instructions"] = json.dumps([{"type": "text", "content": call.system}])
    if call.status != "ok":
        return {**attributes, **_failure_attributes(call)}
    attributes.update(
        {
            "gen_ai.response.model": call.name,
            "gen_ai.response.id": f"resp_{rng.getrandbits(64):016x}",
            "gen_ai.response.finish_reasons": [call.finish_reason or "stop"],
            **usage_attributes(
                call.input_tokens, call.output_tokens, call.cache_read or None, call.cache_write or None
            ),
        }
    )
    if call.output is not None:
        message = {
            "role": "assistant",
            "parts": [{"type": "text", "content": call.output}],
            "finish_reason": call.finish_reason or "stop",
        }
        attributes["gen_ai.output.messages"] = json.dumps([message])
    return attributes


def _tool_call_attributes(plan: RunPlan, call: Call, rng: random.Random) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        **tool_attributes(call.name),
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": f"call_{rng.getrandbits(64):016x}",
        "gen_ai.agent.name": plan.agent,
    }
    return {**attributes, **_failure_attributes(call)}


def _failure_attributes(call: Call) -> dict[str, Any]:
    """A failed call's error type and HTTP status; nothing for a call that went well."""
    if call.status == "ok":
        return {}
    attributes: dict[str, Any] = {"error.type": call.error_type or "Error"}
    if call.http_status is not None:
        attributes["http.response.status_code"] = call.http_status
    return attributes


def any_value(value: Any) -> AnyValue:
    """An attribute value as OTLP protobuf: bool, int, float, sequences as arrays, anything else as text."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[any_value(item) for item in value]))
    return AnyValue(string_value=str(value))


def otlp_attributes(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in values.items()]
