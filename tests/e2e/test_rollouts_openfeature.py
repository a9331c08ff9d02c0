"""Real OpenFeature clients against the service: Python and Node SDKs with their OFREP providers, and
flagd's own evaluator (the Python flagd provider, in-process, offline) on the exported flag set."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest
import requests
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from support.admin_api import Admin
from support.processes import require_binary
from support.service import rollouts_body

from agentopz_otel.extensions.rollouts.split import split_variant

NODE_CLIENT = Path(__file__).parent / "openfeature_node"
VERSIONS = {"support-v3": {"prompt": "support/v3"}, "support-v4": {"prompt": "support/v4"}}
CODE_DEFAULT = {"prompt": "support/built-in"}
KEYS = [f"conversation-{i}" for i in range(400)]


def python_client(base_url: str):
    api.set_provider(OFREPProvider(base_url=base_url), domain="agentopz-ofrep-test")
    return api.get_client("agentopz-ofrep-test")


def python_answers(client, keys: list[str]) -> list[tuple]:
    answers = []
    for key in keys:
        details = client.get_object_details("support-bot", CODE_DEFAULT, EvaluationContext(targeting_key=key))
        answers.append((details.value, details.variant, str(details.reason), details.error_code))
    return answers


def run_node(script: str, request: dict) -> str:
    if not (NODE_CLIENT / "node_modules" / "@openfeature").is_dir():
        message = "the Node OpenFeature packages are not installed: run scripts/install --test (npm ci)"
        if os.environ.get("AGENTOPZ_REQUIRE_ALL"):
            pytest.fail(message)
        pytest.skip(message)
    node = require_binary("node")
    done = subprocess.run(
        [node, str(NODE_CLIENT / script), json.dumps(request)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def node_answers(base_url: str, keys: list[str]) -> list[tuple]:
    request = {"baseUrl": base_url, "flag": "support-bot", "defaultValue": CODE_DEFAULT, "targetingKeys": keys}
    lines = [json.loads(line) for line in run_node("ofrep_evaluate.mjs", request).splitlines()]
    assert [line["targetingKey"] for line in lines] == keys
    return [(line["value"], line["variant"], line["reason"], line["errorCode"]) for line in lines]


def test_python_and_node_agents_get_their_versions_through_a_rollout(start_service, tmp_path):
    service = start_service(rollouts_body(tmp_path / "agentopz.sqlite"))
    admin = Admin(service.admin_url, actor="alice")
    client = python_client(service.admin_url)
    admin.define("support-bot", VERSIONS, "support-v3")

    # Before any rollout: the baseline for everyone.
    baseline = [(VERSIONS["support-v3"], "support-v3", "STATIC", None)] * len(KEYS)
    assert python_answers(client, KEYS) == baseline

    # A 5% canary: each conversation keeps the version flagd's hashing gives it.
    admin.start("support-bot", "support-v4", [5, 25, 50, 100])
    split = [("support-v4", 5), ("support-v3", 95)]
    expected = []
    for key in KEYS:
        variant = split_variant("support-bot", key, split)
        expected.append((VERSIONS[variant], variant, "SPLIT", None))
    assert 8 <= sum(variant == "support-v4" for _, variant, _, _ in expected) <= 35
    assert python_answers(client, KEYS) == expected
    assert node_answers(service.admin_url, KEYS) == expected

    # Promote: the candidate for everyone, at once.
    admin.act("support-bot", "promote")
    promoted = [(VERSIONS["support-v4"], "support-v4", "STATIC", None)] * len(KEYS)
    assert python_answers(client, KEYS) == promoted
    assert node_answers(service.admin_url, KEYS) == promoted

    # A new candidate, rolled back: the very next evaluation is the (new) baseline again.
    admin.define("support-bot", {**VERSIONS, "support-v5": {"prompt": "support/v5"}}, "support-v4")
    admin.start("support-bot", "support-v5", [50, 100])
    assert {variant for _, variant, _, _ in python_answers(client, KEYS)} == {"support-v4", "support-v5"}
    admin.act("support-bot", "rollback", reason="quality failures")
    assert python_answers(client, KEYS) == promoted
    assert node_answers(service.admin_url, KEYS) == promoted

    # Disabled: every client falls back to the default written in its code.
    admin.ok("POST", "/api/v1/agents/support-bot/disable", {"reason": "incident"})
    assert python_answers(client, KEYS[:50]) == [(CODE_DEFAULT, "", "DISABLED", None)] * 50
    # @openfeature/ofrep-provider 0.1 type-checks the absent value and reports an error instead of DISABLED;
    # the value the agent gets is still its code default.
    assert node_answers(service.admin_url, KEYS[:50]) == [(CODE_DEFAULT, None, "ERROR", "GENERAL")] * 50
    admin.ok("POST", "/api/v1/agents/support-bot/disable", {"reason": "incident", "fallback": "support-v3"})
    fallback = [(VERSIONS["support-v3"], "support-v3", "DISABLED", None)] * 50
    assert python_answers(client, KEYS[:50]) == fallback
    assert node_answers(service.admin_url, KEYS[:50]) == fallback

    evaluations = service.value("agentopz_flag_evaluations_total", agent="support-bot", prompt_version="support-v4")
    assert evaluations >= 3 * len(KEYS)


async def bulk_evaluations(base_url: str, keys: list[str], connections: int = 16) -> list[dict]:
    """The service's bulk OFREP answer for each targeting key, in order, over a few keep-alive connections."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def evaluate(key: str) -> dict:
            body = {"context": {"targetingKey": key}}
            async with session.post(f"{base_url}/ofrep/v1/evaluate/flags", json=body) as response:
                assert response.status == 200
                return await response.json()

        return await asyncio.gather(*(evaluate(key) for key in keys))


def test_exported_flag_set_gives_every_key_the_same_variant_in_flagd(start_service, tmp_path):
    service = start_service(rollouts_body(tmp_path / "agentopz.sqlite"))
    admin = Admin(service.admin_url)
    admin.define("support-bot", VERSIONS, "support-v3")
    admin.start("support-bot", "support-v4", [5, 25, 50, 100])
    admin.define("router", {"small": None, "large": None}, "small")
    admin.start("router", "large", [50, 100])
    admin.define("summarizer", {"a": 1, "b": 2}, "a")
    admin.start("summarizer", "b", [10, 100])
    admin.act("summarizer", "advance")  # the last step: every key on the candidate, not yet promoted
    admin.define("killed", {"on": True, "off": False}, "on")
    admin.ok("POST", "/api/v1/agents/killed/disable", {"reason": "incident"})
    admin.define("rerouted", {"x": "x", "y": "y"}, "x")
    admin.ok("POST", "/api/v1/agents/rerouted/disable", {"reason": "incident", "fallback": "y"})
    exported = tmp_path / "flags.json"
    exported.write_text(requests.get(f"{service.admin_url}/api/v1/flagd/flags.json", timeout=10).text)

    defaults = {"support-bot": CODE_DEFAULT, "router": "?", "summarizer": 0, "killed": True, "rerouted": "?"}
    keys = [f"user-{index}" for index in range(10_000)]
    served = {flag: [] for flag in defaults}
    for bulk in asyncio.run(bulk_evaluations(service.admin_url, keys)):
        for item in bulk["flags"]:
            served[item["key"]].append((item["variant"], item.get("value", defaults[item["key"]])))
    assert 450 <= sum(variant == "support-v4" for variant, _ in served["support-bot"]) <= 550
    assert 4_500 <= sum(variant == "large" for variant, _ in served["router"]) <= 5_500
    assert set(served["summarizer"]) == {("b", 2)}
    assert set(served["killed"]) == {("", True)}
    assert set(served["rerouted"]) == {("y", "y")}

    # flagd's evaluator for Python (the OpenFeature flagd provider, in-process with the file as its source).
    provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(exported))
    api.set_provider_and_wait(provider, domain="agentopz-flagd-test")
    flagd = api.get_client("agentopz-flagd-test")
    resolvers = {
        "support-bot": flagd.get_object_details,
        "router": flagd.get_string_details,
        "summarizer": flagd.get_integer_details,
        "killed": flagd.get_boolean_details,
        "rerouted": flagd.get_string_details,
    }
    try:
        for flag, resolve in resolvers.items():
            answers = [resolve(flag, defaults[flag], EvaluationContext(targeting_key=key)) for key in keys]
            assert [(details.variant or "", details.value) for details in answers] == served[flag], flag
        assert str(flagd.get_boolean_details("killed", True, EvaluationContext(targeting_key="k")).reason) == "DISABLED"
    finally:
        api.shutdown()

    # flagd's evaluator for JavaScript (@openfeature/flagd-core), which also validates the file against flagd's schema.
    request = {"file": str(exported), "flags": defaults, "targetingKeys": keys}
    javascript = json.loads(run_node("flagd_evaluate.mjs", request))
    for flag, answers in javascript.items():
        assert [(answer["variant"] or "", answer["value"]) for answer in answers] == served[flag], flag
    assert javascript["killed"][0]["reason"] == "DISABLED"


def node_component_answers(base_url: str, flag: str, kind: str, default: object) -> tuple:
    request = {"baseUrl": base_url, "flag": flag, "defaultValue": default, "targetingKeys": ["c-1"], "type": kind}
    [line] = [json.loads(line) for line in run_node("ofrep_evaluate.mjs", request).splitlines()]
    return (line["value"], line["variant"], line["reason"], line["errorCode"])


def python_component_answers(client, flag: str, kind: str, default: object) -> tuple:
    evaluate = client.get_boolean_details if kind == "boolean" else client.get_string_details
    details = evaluate(flag, default, EvaluationContext(targeting_key="c-1"))
    return (details.value, details.variant, str(details.reason), details.error_code)


def test_component_flags_route_around_a_tool_and_a_model_in_python_node_and_flagd(
    start_service, tmp_path, capsys, monkeypatch
):
    """The 2am mitigations an agent's code reads with its OpenFeature client: `<agent>.tool.<tool>`
    (boolean, code default true) and `<agent>.model` (string, code default its usual model)."""
    from agentopz_otel.cli import main

    service = start_service(rollouts_body(tmp_path / "agentopz.sqlite"))
    admin = Admin(service.admin_url, actor="erin")
    client = python_client(service.admin_url)
    tool, model = "support-bot.tool.search_kb", "support-bot.model"
    monkeypatch.setenv("USER", "erin")
    flags = ((tool, "boolean", True), (model, "string", "gpt-4o-mini"))

    def cli(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--url", service.admin_url])
        out, err = capsys.readouterr()
        return code, out, err

    # Nothing set: the flags do not exist and every client keeps the default in its code.
    assert python_component_answers(client, tool, "boolean", True)[:1] == (True,)
    assert python_component_answers(client, tool, "boolean", True)[3] is not None  # FLAG_NOT_FOUND
    assert admin.evaluate(tool).status == 404

    assert cli("route", "tool-off", "support-bot", "search_kb", "--reason", "kb is down") == (
        0,
        "support-bot.tool.search_kb: off (skip the tool)\n",
        "",
    )
    assert cli("route", "fallback", "support-bot", "anthropic/claude-sonnet-4", "--reason", "openai 429s") == (
        0,
        "support-bot.model: fall back to model 'anthropic/claude-sonnet-4'\n",
        "",
    )
    routed = {tool: (False, "off", "STATIC", None), model: ("anthropic/claude-sonnet-4", "fallback", "STATIC", None)}
    for flag, kind, default in flags:
        assert python_component_answers(client, flag, kind, default) == routed[flag]
        assert node_component_answers(service.admin_url, flag, kind, default) == routed[flag]
    # The agent's own flag is not there: component flags need no prompt versions. Bulk has both.
    bulk = admin.ok("POST", "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "c-1"}})
    assert [(item["key"], item["value"]) for item in bulk["flags"]] == [
        (model, "anthropic/claude-sonnet-4"),
        (tool, False),
    ]

    # Kill switch: once the agent is defined and disabled, its component flags answer DISABLED without a
    # value too, like its own flag: every client is back on its code default.
    admin.define("support-bot", VERSIONS, "support-v3")
    admin.ok("POST", "/api/v1/agents/support-bot/disable", {"reason": "incident"})
    disabled = {tool: (True, "", "DISABLED", None), model: ("gpt-4o-mini", "", "DISABLED", None)}
    for flag, kind, default in flags:
        assert python_component_answers(client, flag, kind, default) == disabled[flag]
        # @openfeature/ofrep-provider 0.1 reports the absent value as an error; the value is the code default.
        assert node_component_answers(service.admin_url, flag, kind, default) == (default, None, "ERROR", "GENERAL")

    # flagd serves the exported set the same way (the Python flagd provider, in-process).
    exported = tmp_path / "flags.json"
    assert cli("flags", "export", "-o", str(exported))[0] == 0
    document = json.loads(exported.read_text())["flags"]
    assert document[tool] == {
        "state": "DISABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "metadata": {"agent": "support-bot", "component": "tool"},
    }
    admin.ok("POST", "/api/v1/agents/support-bot/enable", {})
    exported.write_text(requests.get(f"{service.admin_url}/api/v1/flagd/flags.json", timeout=10).text)
    api.set_provider_and_wait(
        FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(exported)), domain="components"
    )
    try:
        flagd = api.get_client("components")
        for flag, kind, default in flags:
            assert python_component_answers(flagd, flag, kind, default) == routed[flag]
    finally:
        api.shutdown()
    client = python_client(service.admin_url)  # shutdown() closed every provider

    # Tool back on, model cleared: the tool flag serves true, the model flag is gone (code default).
    assert cli("route", "tool-on", "support-bot", "search_kb")[1] == "support-bot.tool.search_kb: on (use the tool)\n"
    assert (
        cli("route", "clear", "support-bot", "--model")[1]
        == "support-bot.model: cleared, clients use the default in their code\n"
    )
    assert cli("route", "clear", "support-bot", "--model")[1] == "nothing to clear: no such component flag is set\n"
    assert python_component_answers(client, tool, "boolean", True) == (True, "on", "STATIC", None)
    assert admin.evaluate(model).status == 404
    assert cli("route", "list")[1] == "support-bot.tool.search_kb: on (use the tool)\n"

    # Audited: who, what, before and after; the same value twice is one change.
    assert cli("route", "tool-on", "support-bot", "search_kb")[0] == 0
    lines = cli("rollout", "history", "support-bot")[1].splitlines()
    assert [line.split("  ")[2:4] for line in lines] == [
        ["clear", "by erin (user)"],
        ["tool_on", "by erin (user)"],
        ["enable", "by erin (user)"],
        ["disable", "by erin (user)"],
        ["define", "by erin (user)"],
        ["fallback", "by erin (user)"],
        ["tool_off", "by erin (user)"],
    ]
    assert lines[-1].endswith('- -> support-bot.tool.search_kb=false "kb is down"')
    assert lines[0].endswith('support-bot.model="anthropic/claude-sonnet-4" -> -')
    assert service.value("agentopz_rollout_actions_total", agent="support-bot", action="tool_off", actor="user") == 1
    assert (
        service.value(
            "agentopz_component_flag_evaluations_total",
            agent="support-bot",
            component="tool.search_kb",
            reason="DISABLED",
        )
        >= 2
    )
