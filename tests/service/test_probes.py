"""Reachability probes: the pure decisions, the config's errors, and probes through the running
service against a real HTTP agent stand-in that answers, fails, slows, or stops emitting runs."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.request

import pytest
from support.probe_stand_in import running_stand_in
from support.processes import free_port
from support.service import RunningService, service_body

from agentopz_otel.components import Context
from agentopz_otel.config import ConfigError, parse_config
from agentopz_otel.extensions.probes import FACTORY
from agentopz_otel.extensions.probes.config import Expect, HeaderFromEnv, HeaderFromFile, ProbesConfig, header_value
from agentopz_otel.extensions.probes.core import (
    BODY_TOO_LARGE,
    JSON_PATH,
    REASONS,
    REGEX,
    RUN_FAILED,
    STATUS,
    SUCCESS,
    Answer,
    Expectation,
    SentProbe,
    SentProbes,
    check_answer,
    run_reason,
    traceparent,
)
from agentopz_otel.metrics import Registry


def expectation(**expect) -> Expectation:
    config = Expect(**expect)
    return Expectation(
        frozenset(config.status), config.compiled_json_path(), config.json_value, config.compiled_regex()
    )


def answer(body: object = None, status: int = 200, truncated: bool = False) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, raw, truncated)


# -- the decisions ------------------------------------------------------------------------------


def test_the_status_decides_when_no_body_check_is_configured():
    expect = expectation(status=[200, 204])
    assert check_answer(expect, answer(b"", 200)) == SUCCESS
    assert check_answer(expect, answer(b"", 204)) == SUCCESS
    assert check_answer(expect, answer(b"", 500)) == STATUS
    assert check_answer(expect, answer(b"", 201)) == STATUS
    # No check reads the body, so a long one is not a failure.
    assert check_answer(expect, answer(b"x" * 10, truncated=True)) == SUCCESS


def test_a_json_path_must_find_a_value_and_equal_json_value_when_given():
    found = expectation(json_path="$.status")
    assert check_answer(found, answer({"status": "degraded"})) == SUCCESS
    assert check_answer(found, answer({"state": "ok"})) == JSON_PATH
    assert check_answer(found, answer(b"<html>ok</html>")) == JSON_PATH
    assert check_answer(found, answer(b"[" * 100_000)) == JSON_PATH  # too deep: not JSON for us
    equal = expectation(json_path="$.checks[*].name", json_value="model")
    assert check_answer(equal, answer({"checks": [{"name": "db"}, {"name": "model"}]})) == SUCCESS
    assert check_answer(equal, answer({"checks": [{"name": "db"}]})) == JSON_PATH
    assert check_answer(expectation(json_path="$.ok", json_value=False), answer({"ok": False})) == SUCCESS
    assert check_answer(expectation(json_path="$.n", json_value=0), answer({"n": 0})) == SUCCESS


def test_a_regex_must_match_the_text_and_the_status_is_checked_first():
    expect = expectation(regex=r"pong|hello")
    assert check_answer(expect, answer(b"...pong...")) == SUCCESS
    assert check_answer(expect, answer(b"ping")) == REGEX
    assert check_answer(expect, answer(b"\xff\xfepong")) == SUCCESS  # undecodable bytes do not fail it
    assert check_answer(expect, answer(b"pong", status=503)) == STATUS


def test_a_body_longer_than_was_read_fails_a_body_check():
    assert check_answer(expectation(regex="pong"), answer(b"pong", truncated=True)) == BODY_TOO_LARGE
    assert check_answer(expectation(json_path="$.a"), answer({"a": 1}, truncated=True)) == BODY_TOO_LARGE


def test_a_run_outcome_gives_the_probe_reason():
    assert run_reason("success") == SUCCESS
    for outcome in ("quality_failure", "llm_error", "tool_error", "budget_exceeded", "timeout", "abandoned", "error"):
        assert run_reason(outcome) == RUN_FAILED


def test_traceparent_is_w3c_and_sampled():
    assert traceparent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331") == (
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )


def test_sent_probes_wait_for_their_run_then_give_up_and_forget():
    sent = SentProbes(limit=10, remember_seconds=100)
    sent.add("a" * 32, "agent-a", now=0, wait=5)
    sent.add("b" * 32, "agent-b", now=0, wait=None)  # not waiting: remembered only
    assert sent.waiting() == 1
    assert sent.expire(4.999) == []
    late = sent.expire(5)
    assert [(probe.agent, probe.deadline) for probe in late] == [("agent-a", None)]
    assert sent.expire(6) == []  # given up once
    # A run that comes after the wait is still known as the probe's (not organic), not waiting.
    arrived = sent.arrived("a" * 32)
    assert arrived is not None and arrived.agent == "agent-a" and arrived.deadline is None
    assert sent.arrived("a" * 32) is None
    assert len(sent) == 1
    sent.expire(99.9)
    assert len(sent) == 1
    sent.expire(100)
    assert len(sent) == 0
    assert sent.arrived("b" * 32) is None


def test_a_probe_whose_run_arrived_in_time_is_not_late_and_arrived_ids_do_not_pile_up():
    sent = SentProbes(limit=2, remember_seconds=100)
    for index in range(10):
        trace_id = f"{index:032x}"
        sent.add(trace_id, "a", now=index, wait=5)
        # Forgotten at the later of its wait and remember_seconds; it waited until now + 5.
        assert sent.arrived(trace_id) == SentProbe("a", index, index + 100, index + 5)
    assert len(sent._deadlines) <= 4  # rebuilt from the waiting probes past twice the limit
    assert sent.expire(100) == []
    sent.add("f" * 32, "a", now=100, wait=5)
    assert [probe.agent for probe in sent.expire(105)] == ["a"]


def test_sent_probes_are_bounded_and_the_oldest_waiting_ones_are_given_up():
    sent = SentProbes(limit=2, remember_seconds=100)
    assert sent.add("1" * 32, "a", now=0, wait=5) == []
    assert sent.add("2" * 32, "b", now=1, wait=None) == []
    given_up = sent.add("3" * 32, "c", now=2, wait=5)
    assert [probe.agent for probe in given_up] == ["a"]
    assert sent.add("4" * 32, "d", now=3, wait=5) == []  # "b" goes, and it was not waiting
    assert len(sent) == 2
    assert sent.arrived("1" * 32) is None and sent.arrived("2" * 32) is None


# -- the config -------------------------------------------------------------------------------


CONFIG_ERRORS = [
    ({"probes": [{"agent": "a", "url": "ftp://x/"}]}, "url"),
    ({"probes": [{"agent": "a", "url": "http://x/", "interval_seconds": 5, "timeout_seconds": 10}]}, "timeout_seconds"),
    ({"probes": [{"agent": "a", "url": "http://x/"}, {"agent": "a", "url": "http://y/"}]}, "two probes"),
    ({"probes": [{"agent": "a", "url": "http://x/", "expect": {"json_path": "$.["}}]}, "not a JSONPath"),
    ({"probes": [{"agent": "a", "url": "http://x/", "expect": {"regex": "("}}]}, "not a valid regex"),
    ({"probes": [{"agent": "a", "url": "http://x/", "expect": {"json_value": 1}}]}, "json_value needs json_path"),
    ({"probes": [{"agent": "a", "url": "http://x/", "expect": {"status": [700]}}]}, "not an HTTP status"),
    ({"probes": [{"agent": "a", "url": "http://x/", "headers": {"traceparent": "x"}}]}, "set by the probe"),
    ({"probes": [{"agent": "a", "url": "http://x/", "headers": {"bad name": "x"}}]}, "not an HTTP header name"),
    ({"probes": [{"agent": "a", "url": "http://x/", "run_wait_seconds": 0}]}, "run_wait_seconds"),
    ({"max_body_bytes": 10}, "max_body_bytes"),
    ({"probes": [{"agent": "a", "url": "http://x/", "retries": 3}]}, "retries"),
]


@pytest.mark.parametrize(("config", "message"), CONFIG_ERRORS, ids=[m for _, m in CONFIG_ERRORS])
def test_a_bad_probe_config_is_refused_naming_the_key(config, message):
    text = (
        "receivers: {otlp: {}}\nprocessors: {normalize: {}}\nexporters: {prometheus: {}}\n"
        f"extensions: {{probes: {json.dumps(config)}}}\n"
        "service: {extensions: [probes], pipelines: {traces: {receivers: [otlp], processors: [normalize], "
        "exporters: [prometheus]}}}\n"
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    assert "extensions.probes" in str(error.value)
    assert message in str(error.value)


def test_header_values_come_from_the_config_the_environment_or_a_file(tmp_path, monkeypatch):
    what = "extensions.probes.probes[0]"
    assert header_value("X-Key", "inline", what) == "inline"
    monkeypatch.setenv("PROBE_KEY", "from-env")
    assert header_value("X-Key", HeaderFromEnv(env="PROBE_KEY"), what) == "from-env"
    monkeypatch.setenv("PROBE_KEY", "")
    with pytest.raises(OSError, match=r"^extensions.probes.probes\[0\].headers.X-Key: environment variable PROBE_KEY"):
        header_value("X-Key", HeaderFromEnv(env="PROBE_KEY"), what)
    secret = tmp_path / "key"
    secret.write_text("  from-file\n")
    assert header_value("X-Key", HeaderFromFile(file=secret), what) == "from-file"
    secret.write_text("\n")
    with pytest.raises(OSError, match=rf"^{re.escape(what)}.headers.X-Key: file {re.escape(str(secret))} is empty$"):
        header_value("X-Key", HeaderFromFile(file=secret), what)
    monkeypatch.setenv("PROBE_KEY", "a\r\nX-Injected: 1")
    with pytest.raises(OSError, match=r"headers.X-Key: the value has a line break"):
        header_value("X-Key", HeaderFromEnv(env="PROBE_KEY"), what)
    with pytest.raises(OSError, match=r"headers.X-Key: the value has a line break"):
        header_value("X-Key", "a\nb", what)
    missing = tmp_path / "missing"
    with pytest.raises(OSError, match=r"headers.X-Key: cannot read file .*missing: No such file or directory$"):
        header_value("X-Key", HeaderFromFile(file=missing), what)


def test_the_default_config_has_probes_on_with_none_configured():
    assert ProbesConfig().probes == []
    from agentopz_otel.config import load_config

    config = load_config(None)
    assert "probes" in config.service.extensions
    assert config.extensions["probes"].config.probes == []


# -- through the running service ----------------------------------------------------------------


RUNS = {"grace_seconds": 0.3, "tick_seconds": 0.1, "root_wait_seconds": 0.5}


def probe_statuses(service: RunningService) -> dict[str, dict]:
    with urllib.request.urlopen(f"{service.admin_url}/api/v1/probes", timeout=5) as response:
        return {probe["agent"]: probe for probe in json.load(response)["probes"]}


def wait_for_reason(service: RunningService, agent: str, reason: str, at_least: float, timeout: float = 20) -> None:
    value = service.wait_for("agentopz_probe_results_total", at_least, timeout=timeout, agent=agent, reason=reason)
    assert value >= at_least, f"{agent}: {reason} {value}; statuses {probe_statuses(service)}"


def reasons(service: RunningService, agent: str) -> dict[str, float]:
    return {reason: service.value("agentopz_probe_results_total", agent=agent, reason=reason) for reason in REASONS}


def test_probes_through_the_service_follow_the_agent_answers_failures_and_runs(start_service, tmp_path):
    token_file = tmp_path / "agent-token"
    token_file.write_text("file-secret\n")
    with running_stand_in() as agent:
        agent.slow_seconds = 1.5
        agent.mode = "fail"  # until it can send its runs to the service
        probes = {
            "probes": [
                {
                    "agent": "stand-in",
                    "url": agent.url + "?key=query-secret",
                    "method": "POST",
                    "body": '{"message": "ping"}',
                    "headers": {
                        "Content-Type": "application/json",
                        "X-Env-Token": {"env": "PROBE_TEST_TOKEN"},
                        "X-File-Token": {"file": str(token_file)},
                    },
                    "interval_seconds": 1,
                    "timeout_seconds": 0.8,
                    "run_wait_seconds": 2,
                    "expect": {"status": [200], "json_path": "$.status", "json_value": "ok"},
                },
                {"agent": "nobody", "url": f"http://127.0.0.1:{free_port()}/", "interval_seconds": 1},
            ],
            "tick_seconds": 0.1,
        }
        started = time.time()
        service = start_service(
            service_body(runs=RUNS, extensions={"probes": probes}), env={"PROBE_TEST_TOKEN": "env-secret"}
        )
        agent.export_to(service.grpc_endpoint)
        agent.mode = "answer"

        # Answering, with its run finishing as success: only successes (after the 500s before).
        wait_for_reason(service, "stand-in", "success", 2)
        counted = reasons(service, "stand-in")
        assert counted["status"] >= 1
        others = [reason for reason in REASONS if reason not in ("success", "status")]
        assert {reason: counted[reason] for reason in others} == dict.fromkeys(others, 0.0)
        assert service.value("agentopz_probe_success", agent="stand-in") == 1
        last = service.value("agentopz_probe_last_success_timestamp_seconds", agent="stand-in")
        assert started < last <= time.time()
        # Every probe ran in a fresh trace, sent the configured headers, and its run was the probe's:
        # all of the agent's runs are probe runs, none organic.
        sent = list(agent.requests)
        trace_ids = [re.fullmatch(r"00-([0-9a-f]{32})-[0-9a-f]{16}-01", r["traceparent"]).group(1) for r in sent]
        assert len(set(trace_ids)) == len(trace_ids)
        assert {(r["X-Env-Token"], r["X-File-Token"], r["User-Agent"]) for r in sent} == {
            ("env-secret", "file-secret", "agentopz-otel-probe")
        }
        assert set(agent.runs) <= set(trace_ids)
        probe_runs = service.value("agentopz_probe_runs_total", service="stand-in-svc", agent="stand-in")
        assert probe_runs >= 2
        assert service.value("agentopz_runs_total", service="stand-in-svc", agent="stand-in") == probe_runs
        assert service.value("agentopz_probe_runs_total", agent="stand-in", outcome="success") == probe_runs
        status = probe_statuses(service)["stand-in"]
        assert status["url"] == agent.url  # the query, which may hold a credential, is not shown
        assert status["reason"] == "success"

        # The port nobody listens on.
        wait_for_reason(service, "nobody", "connect_error", 1)
        assert service.value("agentopz_probe_success", agent="nobody") == 0
        assert service.value("agentopz_probe_last_success_timestamp_seconds", agent="nobody") == 0

        # The run the probe starts fails upstream: the answer is fine, the probe is not.
        agent.mode = "failing_run"
        wait_for_reason(service, "stand-in", "run_failed", 1)
        assert service.value("agentopz_probe_runs_total", agent="stand-in", outcome="llm_error") >= 1
        assert probe_statuses(service)["stand-in"]["reason"] == "run_failed"

        # It answers but its telemetry stopped: the run never comes within run_wait_seconds.
        agent.mode = "silent"
        wait_for_reason(service, "stand-in", "run_missing", 1)
        assert service.value("agentopz_probe_success", agent="stand-in") == 0

        agent.mode = "fail"
        wait_for_reason(service, "stand-in", "status", 1)

        # Slower than timeout_seconds (0.8): a timeout, measured at about the timeout.
        agent.mode = "slow"
        wait_for_reason(service, "stand-in", "timeout", 1)
        assert 0.75 <= probe_statuses(service)["stand-in"]["duration_seconds"] < 1.5

        # Runs start and hang (an LLM call made, the agent span never ends): in flight, never finished.
        missing = service.value("agentopz_probe_results_total", agent="stand-in", reason="run_missing")
        agent.mode = "hang"
        wait_for_reason(service, "stand-in", "run_missing", missing + 1)
        in_flight = {
            dict(labels)["agent"]: value
            for (name, labels), value in service.metrics().items()
            if name == "agentopz_runs_in_flight" and dict(labels)["service"] == "stand-in-svc"
        }
        assert in_flight.get("stand-in", 0) >= 1, in_flight

        # Back to answering: success again.
        before = service.value("agentopz_probe_results_total", agent="stand-in", reason="success")
        agent.mode = "answer"
        wait_for_reason(service, "stand-in", "success", before + 1)
        assert service.value("agentopz_probe_success", agent="stand-in") == 1
        assert "Traceback" not in service.log()


def test_a_header_from_an_unset_variable_is_a_clear_start_up_error(start_service):
    probes = {"probes": [{"agent": "a", "url": "http://127.0.0.1:9/", "headers": {"X-Key": {"env": "NO_SUCH_VAR_X"}}}]}
    with pytest.raises(RuntimeError) as error:
        start_service(service_body(extensions={"probes": probes}))
    assert "extensions.probes.probes[0].headers.X-Key: environment variable NO_SUCH_VAR_X is not set" in str(
        error.value
    )


def test_the_built_in_default_runs_the_probes_extension_with_no_probe(start_service):
    service = start_service(None)
    with urllib.request.urlopen(f"{service.admin_url}/api/v1/probes", timeout=5) as response:
        assert json.load(response) == {"probes": [], "waiting": 0}
    assert "# HELP agentopz_probe_results_total " in service.metrics_text()
    assert service.value("agentopz_probe_results_total") == 0


def test_an_unexpected_failure_is_logged_once_and_probing_goes_on(caplog):
    config = ProbesConfig(probes=[{"agent": "a", "url": "http://127.0.0.1:9/", "interval_seconds": 1}])
    extension = FACTORY.create("probes", config, Context(metrics=Registry()))
    calls = []

    async def broken(probe) -> None:
        calls.append(probe.agent)
        raise KeyError("a bug")

    extension.probe_once = broken

    async def run_for_a_while() -> None:
        task = asyncio.create_task(extension._every(config.probes[0]))
        await asyncio.sleep(2.5)
        task.cancel()

    with caplog.at_level(logging.ERROR, logger="agentopz_otel.probes"):
        asyncio.run(run_for_a_while())
    assert calls == ["a", "a", "a"]
    assert [record.getMessage() for record in caplog.records] == [
        "probe of a failed unexpectedly; probing again each interval"
    ]
