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

What each run does is a plan drawn from `--seed` and the run's index alone, so the same seed gives
the same runs (trace ids stay random and unique). Span timestamps follow the plan; `--speed` plays
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

from .records import ABANDONED, BUDGET_EXCEEDED, ERROR, LLM_ERROR, QUALITY_FAILURE, SUCCESS, TIMEOUT, TOOL_ERROR

OPENAI = "openai"
ANTHROPIC = "anthropic"
# How each provider's upstream fails in the demo: (status, error.type, message, HTTP status).
UPSTREAM_FAILURES = {
    OPENAI: (
        "rate_limited",
        "RateLimitError",
        "Error code: 429 - Rate limit reached for {model} on requests per min (RPM)",
        429,
    ),
    ANTHROPIC: (
        "server_error",
        "OverloadedError",
        "Error code: 529 - {{'type': 'overloaded_error', 'message': 'Overloaded'}}",
        529,
    ),
}
SELF_HOSTED = "vllm"

GPT_4O = "gpt-4o-2024-08-06"
GPT_4O_MINI = "gpt-4o-mini"
CLAUDE_SONNET = "claude-sonnet-4-20250514"
ADDRESS_PARSER = "acme-address-parser-7b"  # self-hosted: no catalogue price

SERVER_ADDRESSES = {OPENAI: "api.openai.com", ANTHROPIC: "api.anthropic.com", SELF_HOSTED: "inference.internal"}

# Output tokens per second, for call latencies.
TOKENS_PER_SECOND = {GPT_4O: 70.0, GPT_4O_MINI: 110.0, CLAUDE_SONNET: 60.0, ADDRESS_PARSER: 200.0}

# Runs whose index falls in [start, end) of every STORM_PERIOD runs hit an OpenAI rate-limit storm.
STORM_PERIOD = 1200
STORM_WINDOW = (300, 420)
RATE_LIMIT_PROBABILITY = 0.02
STORM_RATE_LIMIT_PROBABILITY = 0.55
OVERLOAD_PROBABILITY = 0.01
# Run index % RUNAWAY_PERIOD == RUNAWAY_OFFSET: a research-assistant run stuck in a retry loop.
RUNAWAY_PERIOD = 500
RUNAWAY_OFFSET = 40
RUNAWAY_ITERATIONS = (44, 50)

# The limits the stack's config (collector-config/agentopz.yaml, runs.limits) sets for these agents;
# the runaway loop and the hanging carrier API are sized to cross them, every other run stays under.
LIMITS = {
    "research-assistant": {"max_cost_usd": 1.0, "max_steps": 30},
    "order-tracker": {"max_duration_seconds": 30.0},
    "support-triage": {"max_cost_usd": 0.5},
}

RESEARCH_SYSTEM = (
    "You are a research assistant. Search the web, read the most relevant pages and answer with a "
    "concise, sourced summary. Cite every claim with its URL. Never invent sources."
)
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


# -- plans ------------------------------------------------------------------------------------------


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
class ToolFailure:
    type: str  # error.type
    message: str  # status description
    http_status: int | None = None


KB_TIMEOUT = ToolFailure("TimeoutError", "search_kb: backend did not answer within 1.5s")
KB_UNAVAILABLE = ToolFailure("ServiceUnavailable", "search_kb: kb-search is unavailable", 503)
CARRIER_TIMEOUT = ToolFailure("TimeoutError", "carrier_api: read timed out after 30s")
SEARCH_UNAVAILABLE = ToolFailure("HTTPError", "web_search: search backend unavailable", 503)
PAGE_NOT_FOUND = ToolFailure("HTTPError", "fetch_page: page not found", 404)
TESTS_BROKEN = ToolFailure("CalledProcessError", "run_tests: pytest exited with 2 (collection failed)")
TEST_FLAKY = ToolFailure("CalledProcessError", "run_tests: 1 failed (test_retry_backoff)")


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

    def _failure_probability(self, provider: str) -> float:
        if not self.upstream_errors:
            return 0.0
        if provider == OPENAI:
            return STORM_RATE_LIMIT_PROBABILITY if self.storm else RATE_LIMIT_PROBABILITY
        if provider == ANTHROPIC:
            return OVERLOAD_PROBABILITY
        return 0.0

    def chat(
        self,
        provider: str,
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
        attempts = 4 if provider == OPENAI else 3
        for attempt in range(attempts):
            if self.rng.random() < self._failure_probability(provider):
                end = self.t + self.rng.uniform(0.08, 0.4)
                status, error_type, error_message, http_status = UPSTREAM_FAILURES[provider]
                call = Call(
                    "chat",
                    self.t,
                    end,
                    model,
                    provider,
                    status=status,
                    error_type=error_type,
                    error_message=error_message.format(model=model),
                    http_status=http_status,
                    system=system,
                )
                self.plan.calls.append(call)
                self.t = end
                if attempt < attempts - 1:
                    self.t += (2**attempt) * self.rng.uniform(0.8, 1.2)  # exponential backoff with jitter
                continue
            latency = self.rng.uniform(0.25, 0.6) + output_tokens / TOKENS_PER_SECOND.get(model, 80.0)
            end = self.t + latency
            self.plan.calls.append(
                Call(
                    "chat",
                    self.t,
                    end,
                    model,
                    provider,
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

    def tool(self, name: str, low: float, high: float, error: ToolFailure | None = None) -> None:
        end = self.t + self.rng.uniform(low, high)
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
    if not b.chat(
        OPENAI, GPT_4O_MINI, question + 700, rng.randint(25, 70), cache_read=640 if rng.random() < 0.8 else 0
    ):
        return
    b.think(0.005, 0.03)
    if tool_failure:
        b.tool("search_kb", 0.2, 1.5, KB_TIMEOUT)
        b.think(0.02, 0.1)
        b.tool("search_kb", 1.0, 2.5, KB_UNAVAILABLE)
        b.fail("ToolError", "search_kb failed twice; giving up", TOOL_ERROR)
        return
    if rng.random() < 0.04:  # a flaky search that works on the second try
        b.tool("search_kb", 0.3, 1.5, KB_TIMEOUT)
        b.think(0.01, 0.05)
    b.tool("search_kb", 0.08, 0.6)
    if rng.random() < 0.5:
        b.tool("lookup_customer", 0.05, 0.3)
    b.think(0.005, 0.03)
    context = question + rng.randint(1800, 3200)
    answer = SUPPORT_REFUSAL if quality else rng.choice(SUPPORT_ANSWERS)
    if canary:
        if not b.chat(OPENAI, GPT_4O, context + 700, rng.randint(250, 500), cache_read=1024):
            return
        b.think(0.005, 0.03)
        if not b.chat(OPENAI, GPT_4O, context + 1200, rng.randint(200, 450), cache_read=1024, output=answer):
            return
    elif not b.chat(OPENAI, GPT_4O_MINI, context + 700, rng.randint(120, 380), cache_read=1024, output=answer):
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
    if not b.chat(OPENAI, GPT_4O_MINI, rng.randint(700, 1100), rng.randint(20, 45), cache_read=512):
        return
    b.think(0.005, 0.02)
    if plan.scenario == "bug":
        b.fail("KeyError", "KeyError: 'tracking_number'", ERROR)
        return
    b.tool("lookup_order", 0.03, 0.25)
    if plan.scenario == "crash":
        b.think(0.05, 0.2)
        plan.crashed = True
        plan.intended = ABANDONED
        return
    if plan.scenario == "carrier_hang":
        b.tool("carrier_api", 30.0, 30.5, CARRIER_TIMEOUT)
    else:
        b.tool("carrier_api", 0.2, 2.0)
    # A free-text address goes through the self-hosted parser.
    if rng.random() < 0.1 and not b.chat(SELF_HOSTED, ADDRESS_PARSER, rng.randint(150, 300), rng.randint(20, 40)):
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
    if not b.chat(
        OPENAI, GPT_4O_MINI, rng.randint(1200, 1800), rng.randint(40, 90), 512, output=output, output_type="json"
    ):
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
        b.chat(ANTHROPIC, CLAUDE_SONNET, context, 300, cache_write=2200, system=RESEARCH_SYSTEM)
        for _ in range(rng.randint(*RUNAWAY_ITERATIONS)):
            b.tool("web_search", 0.3, 0.9, SEARCH_UNAVAILABLE)
            context += rng.randint(1800, 2600)
            # The retries rewrite the scratchpad, so only the system prompt stays cached.
            b.chat(ANTHROPIC, CLAUDE_SONNET, context, rng.randint(120, 250), cache_read=2200, system=RESEARCH_SYSTEM)
        b.fail("MaxIterationsExceeded", "agent stopped after too many iterations", BUDGET_EXCEEDED)
        return
    quality = rng.random() < 0.04
    plan.scenario = "quality_failure" if quality else "normal"
    context = rng.randint(2500, 4000)
    if not b.chat(ANTHROPIC, CLAUDE_SONNET, context, rng.randint(120, 300), cache_write=2200, system=RESEARCH_SYSTEM):
        return
    for _ in range(rng.randint(2, 5)):
        b.tool("web_search", 0.4, 1.6)
        b.tool("fetch_page", 0.3, 2.5, None if rng.random() > 0.03 else PAGE_NOT_FOUND)
        context += rng.randint(1500, 4000)
        if not b.chat(
            ANTHROPIC, CLAUDE_SONNET, context, rng.randint(150, 400), cache_read=context - 1500, system=RESEARCH_SYSTEM
        ):
            return
    b.think(0.01, 0.05)
    if quality:
        output = f"Summary: {topic}. The main findings are that the first source argues"
        ok = b.chat(
            ANTHROPIC, CLAUDE_SONNET, context, 1024, context - 1500, 0, "length", output, system=RESEARCH_SYSTEM
        )
    else:
        output = f"Summary: {topic}. Three sources agree on the main points; see the cited URLs for details."
        ok = b.chat(
            ANTHROPIC,
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
    plan.agent_version = "3.2.0"
    roll = rng.random()
    plan.scenario = "tests_broken" if roll < 0.03 else "quality_failure" if roll < 0.05 else "normal"
    diff = rng.randint(3000, 9000)
    if not b.chat(OPENAI, GPT_4O, diff + 900, rng.randint(150, 300), cache_read=768):
        return
    for _ in range(rng.randint(2, 5)):
        b.tool("read_file", 0.02, 0.15)
    context = diff + rng.randint(4000, 9000)
    if not b.chat(OPENAI, GPT_4O, context, rng.randint(200, 500), cache_read=diff):
        return
    if plan.scenario == "tests_broken":
        b.tool("run_tests", 4.0, 9.0, TESTS_BROKEN)
        b.fail("ToolError", "cannot review: the test suite does not run", TOOL_ERROR)
        return
    if rng.random() < 0.08:  # a flaky test, green on the rerun
        b.tool("run_tests", 3.0, 8.0, TEST_FLAKY)
    b.tool("run_tests", 3.0, 8.0)
    quality = plan.scenario == "quality_failure"
    output = "" if quality else "LGTM with two suggestions: guard the empty-list case and add a test for it."
    if not b.chat(OPENAI, GPT_4O, context + 1500, 5 if quality else rng.randint(300, 700), context, output=output):
        return
    if quality:
        plan.intended = QUALITY_FAILURE
        plan.evaluation = Evaluation("review_usefulness", "fail", 0.0, "the review is empty")


AGENTS: tuple[tuple[str, str, float], ...] = (
    ("support-api", "support-triage", 0.40),
    ("order-service", "order-tracker", 0.30),
    ("research-worker", "research-assistant", 0.15),
    ("code-review-bot", "code-reviewer", 0.15),
)


def in_storm(index: int) -> bool:
    return STORM_WINDOW[0] <= index % STORM_PERIOD < STORM_WINDOW[1]


def plan_run(seed: int, index: int, pick_version: VersionPicker | None = None) -> RunPlan:
    """The run with this index under this seed: always the same plan, but for support-triage's prompt
    version when `pick_version` (called with the plan's agent and conversation id set) picks it."""
    rng = random.Random(f"agentopz-demo:{seed}:{index}")
    runaway = index % RUNAWAY_PERIOD == RUNAWAY_OFFSET
    if runaway:
        service, agent = "research-worker", "research-assistant"
    else:
        roll = rng.random()
        for candidate in AGENTS:
            service, agent, weight = candidate
            if roll < weight:
                break
            roll -= weight
    plan = RunPlan(index, service, agent, "normal", SUCCESS, conversation_id=f"conv-{rng.getrandbits(48):012x}")
    builder = _Builder(rng, plan, in_storm(index))
    if agent == SUPPORT_AGENT:
        _support(builder, rng, pick_version)
    elif agent == "order-tracker":
        _order(builder, rng)
    elif agent == "research-assistant":
        _research(builder, rng, runaway)
    else:
        _code_review(builder, rng)
    if plan.evaluation is None and plan.intended == SUCCESS and rng.random() < 0.25:
        # An online evaluator samples a quarter of the good runs.
        plan.evaluation = Evaluation("helpfulness", "pass", round(rng.uniform(0.75, 1.0), 2), "answers the question")
    return builder.finish()


# -- emitting ---------------------------------------------------------------------------------------


def _chat_attributes(plan: RunPlan, call: Call, rng: random.Random) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": call.provider,
        "gen_ai.request.model": call.name,
        "gen_ai.agent.name": plan.agent,
        "gen_ai.conversation.id": plan.conversation_id,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 1024 if call.provider == ANTHROPIC else 2048,
        "gen_ai.output.type": call.output_type,
        "server.address": SERVER_ADDRESSES.get(call.provider, "localhost"),
        "server.port": 443,
    }
    if call.system is not None:
        attributes["gen_ai.system_instructions"] = json.dumps([{"type": "text", "content": call.system}])
    if call.status != "ok":
        attributes["error.type"] = call.error_type or "Error"
        if call.http_status is not None:
            attributes["http.response.status_code"] = call.http_status
        return attributes
    attributes.update(
        {
            "gen_ai.response.model": call.name,
            "gen_ai.response.id": f"resp_{rng.getrandbits(64):016x}",
            "gen_ai.response.finish_reasons": [call.finish_reason or "stop"],
            "gen_ai.usage.input_tokens": call.input_tokens,
            "gen_ai.usage.output_tokens": call.output_tokens,
        }
    )
    if call.cache_read:
        attributes["gen_ai.usage.cache_read.input_tokens"] = call.cache_read
    if call.cache_write:
        attributes["gen_ai.usage.cache_creation.input_tokens"] = call.cache_write
    if call.output is not None:
        message = {
            "role": "assistant",
            "parts": [{"type": "text", "content": call.output}],
            "finish_reason": call.finish_reason or "stop",
        }
        attributes["gen_ai.output.messages"] = json.dumps([message])
    return attributes


def _tool_attributes(plan: RunPlan, call: Call, rng: random.Random) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": call.name,
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": f"call_{rng.getrandbits(64):016x}",
        "gen_ai.agent.name": plan.agent,
    }
    if call.status != "ok":
        attributes["error.type"] = call.error_type or "Error"
        if call.http_status is not None:
            attributes["http.response.status_code"] = call.http_status
    return attributes


SUPPORT_AGENT = "support-triage"
SUPPORT_BASELINE, SUPPORT_CANARY = "v12", "v13"
# The flag's variants: what each prompt version tells the agent to use.
SUPPORT_VERSIONS = {
    SUPPORT_BASELINE: {"prompt": "support-triage/v12", "model": GPT_4O_MINI},
    SUPPORT_CANARY: {"prompt": "support-triage/v13", "model": GPT_4O},
}
CANARY_STEPS = [5, 25, 50, 100]
# The demo's support runs last seconds: their start intervals are evidence a minute after they end.
DEMO_ANALYSIS = {"max_run_seconds": 60, "step_min_seconds": 60}
VersionPicker = Callable[[RunPlan], "str | None"]


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


class Fleet:
    """One TracerProvider (with a batching OTLP exporter) per service of the demo fleet."""

    def __init__(self, endpoint: str, protocol: str, export_delay_ms: int = 500) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.providers = {}
        self.tracers = {}
        for service, _, _ in AGENTS:
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
                    schedule_delay_millis=export_delay_ms,
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
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": plan.agent,
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

        if call.kind == "chat":
            name = f"chat {call.name}"
            attributes = _chat_attributes(self.plan, call, self.rng)
            kind = SpanKind.CLIENT
        else:
            name = f"execute_tool {call.name}"
            attributes = _tool_attributes(self.plan, call, self.rng)
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
        fleet: Fleet,
        rate: float,
        seed: int = 1,
        speed: float = 1.0,
        duration: float | None = None,
        runs: int | None = None,
        drain: float = 120.0,
        log: Callable[[str], None] = lambda line: print(f"agentopz-otel demo: {line}", file=sys.stderr, flush=True),
        flags: PromptFlags | None = None,
    ) -> None:
        self.fleet = fleet
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

    def _picker(self, wall_ns: int, roots: list) -> VersionPicker | None:
        """Picks the version over OpenFeature inside the run's agent span (started here, kept in `roots`),
        so that the TracingHook's event lands on it."""
        flags = self.flags
        if flags is None:
            return None
        from opentelemetry import trace

        def pick(plan: RunPlan) -> str | None:
            root = start_root(self.fleet.tracers[plan.service], plan, wall_ns)
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
                plan = plan_run(self.seed, index, self._picker(wall_ns, roots))
                index += 1
                tracer = self.fleet.tracers[plan.service]
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
    protocol = "grpc" if args.protocol == "grpc" else "http"
    endpoint = args.endpoint or ("localhost:4317" if protocol == "grpc" else "localhost:4318")
    fleet = Fleet(endpoint, protocol)
    demo = Demo(fleet, args.rate, args.seed, args.speed, args.duration, args.runs, args.drain)
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
        fleet.shutdown()
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
        "--drain",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="when stopping, wait this long for open runs before cutting them short (default: 120)",
    )
