"""The alertmanager_webhook extension: Alertmanager's webhook JSON in, rollout actions on the candidate out."""

from __future__ import annotations

import pytest
from support.admin_api import Admin
from support.service import service_body

TOKEN = "webhook-secret-0123456789abcdef0123"
ALERT_START = "2099-01-01T00:00:00.123456789Z"  # after any rollout a test starts


def alert(alertname: str, agent: str, version: str, *, status: str = "firing", fingerprint: str = "", **labels):
    return {
        "status": status,
        "labels": {"alertname": alertname, "severity": "ticket", "agent": agent, "prompt_version": version, **labels},
        "annotations": {
            "summary": f"{alertname} on {version}",
            "runbook_url": f"http://localhost:9464/runbooks/{alertname}",
        },
        "startsAt": ALERT_START,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint or f"{alertname}-{agent}-{version}",
    }


def notification(*alerts: dict, status: str = "firing") -> dict:
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "status": status,
        "receiver": "agentopz-rollouts",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }


@pytest.fixture
def admin(start_service, tmp_path):
    """A service with rollouts and the webhook; agent support (v1 baseline, v2, v3) with v2 at 5%."""

    def start(**webhook: object):
        token_file = tmp_path / "webhook-token"
        token_file.write_text(TOKEN + "\n")
        extensions = {
            "storage": {"path": str(tmp_path / "state.sqlite")},
            "rollouts": {},
            "alertmanager_webhook": {"auth": {"token_file": str(token_file)}, **webhook},
        }
        service = start_service(service_body(extensions=extensions))
        admin = Admin(service.admin_url)
        for agent in ("support", "triage"):
            admin.define(agent, {"v1": None, "v2": None, "v3": None}, "v1")
        admin.start("support", "v2", [5, 100])
        return service

    return start


def hook(service, *alerts: dict, token: str | None = TOKEN, status: str = "firing"):
    reply = Admin(service.admin_url, token).call("POST", "/api/v1/alertmanager", notification(*alerts, status=status))
    return reply.status, reply.body


def history(service) -> list[dict]:
    return Admin(service.admin_url).ok("GET", "/api/v1/history?agent=support")["entries"]


def rollout_state(service, agent: str = "support") -> str:
    return Admin(service.admin_url).ok("GET", f"/api/v1/rollouts/{agent}")["state"]


def outcomes(body: dict) -> list[tuple[str, str]]:
    return [(result["outcome"], result["reason"]) for result in body["results"]]


def test_a_regression_alert_on_the_candidate_rolls_it_back_once(admin):
    service = admin()
    firing = alert("PromptVersionQualityRegression", "support", "v2")
    status, body = hook(service, firing)
    assert status == 200
    assert outcomes(body) == [
        ("acted", "alert PromptVersionQualityRegression: PromptVersionQualityRegression on v2"),
    ]
    assert body["results"][0]["action"] == "rollback"
    assert rollout_state(service) == "rolled_back"
    # Alertmanager repeats the group every repeat_interval: the same firing is not acted on again.
    status, body = hook(service, firing)
    assert outcomes(body) == [("repeated", "acted on this firing before")]
    [entry] = [entry for entry in history(service) if entry["action"] == "rollback"]
    assert (entry["actor"], entry["actor_kind"]) == ("PromptVersionQualityRegression", "alert")
    assert entry["evidence"]["alert"]["labels"] == firing["labels"]
    assert entry["evidence"]["alert"]["annotations"]["runbook_url"] == (
        "http://localhost:9464/runbooks/PromptVersionQualityRegression"
    )
    assert entry["evidence"]["alert"]["fingerprint"] == "PromptVersionQualityRegression-support-v2"
    assert service.value("agentopz_rollout_actions_total", agent="support", action="rollback", actor="alert") == 1
    assert service.value("agentopz_alertmanager_webhook_alerts_total", outcome="acted") == 1
    assert service.value("agentopz_alertmanager_webhook_alerts_total", outcome="repeated") == 1
    # After the rollback the agent has no active rollout: a later alert does nothing.
    _, body = hook(service, alert("PromptVersionCostRegression", "support", "v2"))
    assert outcomes(body) == [("ignored", "agent 'support' has no active rollout")]


def test_alerts_that_must_not_act(admin):
    service = admin()
    cases = [
        alert("PromptVersionQualityRegression", "support", "v2", status="resolved"),
        alert("PromptVersionQualityRegression", "support", "v1"),
        alert("PromptVersionQualityRegression", "support", "v3"),
        alert("PromptVersionQualityRegression", "triage", "v2"),
        alert("PromptVersionQualityRegression", "unknown-agent", "v2"),
        alert("AgentRunTimeouts", "support", "v2"),
        alert("Custom", "support", "v2", agentopz_action="promote"),
        {**alert("PromptVersionQualityRegression", "support", "v2"), "startsAt": "2001-01-01T00:00:00Z"},
        {**alert("PromptVersionQualityRegression", "support", "v2"), "fingerprint": ""},
    ]
    status, body = hook(service, *cases)
    assert status == 200
    assert outcomes(body) == [
        ("ignored", "not firing"),
        ("ignored", "'v1' is the baseline of the rollout of 'support' ('v2')"),
        ("ignored", "'v3' is not the candidate of the rollout of 'support' ('v2')"),
        ("ignored", "agent 'triage' has no active rollout"),
        ("ignored", "agent 'unknown-agent' has no active rollout"),
        ("ignored", "neither a rollback alert nor labelled agentopz_action"),
        ("ignored", "agentopz_action 'promote' is not one of rollback, pause, disable, fallback_model"),
        ("ignored", "the alert began firing before the rollout started"),
        ("ignored", "the alert has no fingerprint"),
    ]
    # A resolved notification is ignored as a whole, whatever its alerts say.
    _, body = hook(
        service, alert("PromptVersionQualityRegression", "support", "v2", status="resolved"), status="resolved"
    )
    assert outcomes(body) == [("ignored", "not firing")]
    assert rollout_state(service) == "progressing"
    assert service.value("agentopz_alertmanager_webhook_alerts_total", outcome="ignored") == 10
    assert service.value("agentopz_rollout_actions_total", action="rollback") == 0


def test_agentopz_action_labels_pause_and_disable(admin):
    service = admin(max_remembered_alerts=1)
    pause = alert("CanaryErrorsUp", "support", "v2", agentopz_action="pause", fingerprint="a")
    other = alert("CanaryLatencyUp", "support", "v2", agentopz_action="pause", fingerprint="b")
    assert outcomes(hook(service, pause)[1])[0][0] == "acted"
    assert rollout_state(service) == "paused"
    assert outcomes(hook(service, other)[1])[0][0] == "acted"  # already paused: no second audit entry
    # Only one firing is remembered: `a` was forgotten when `b` came; now `a` is the one remembered.
    assert outcomes(hook(service, pause)[1])[0][0] == "acted"
    assert outcomes(hook(service, pause)[1])[0][0] == "repeated"
    assert [entry["action"] for entry in history(service)].count("pause") == 1
    _, body = hook(service, alert("CanaryCostUp", "support", "v2", agentopz_action="disable"))
    assert outcomes(body)[0][0] == "acted"
    evaluation = Admin(service.admin_url).evaluate("support", "user-1")
    assert (evaluation.status, evaluation.body["reason"]) == (200, "DISABLED")


def test_a_long_alert_name_and_summary_are_cut_to_the_rollouts_actor_and_reason_limits(admin):
    service = admin()
    # Labels and annotations are cut to 1,000 characters first, so these two give a reason of 2,008.
    name = "CanaryErrorsUp" + "x" * 986
    firing = alert(name, "support", "v2", agentopz_action="pause")
    firing["annotations"]["summary"] = "s" * 3000
    assert outcomes(hook(service, firing)[1])[0][0] == "acted"
    [entry] = [entry for entry in history(service) if entry["action"] == "pause"]
    assert entry["actor"] == name[:128]
    assert entry["reason"] == f"alert {name}: " + "s" * (2000 - len(f"alert {name}: "))


def test_fallback_model_sets_the_agents_model_flag_once(admin):
    """An alert labelled agentopz_action: fallback_model moves the agent to the model it names, with or
    without a rollout; repeats and a second alert asking for the same model change nothing."""
    service = admin()
    fallback = {"agentopz_action": "fallback_model", "agentopz_fallback_model": "anthropic/claude-sonnet-4"}
    firing = alert("LLMRateLimited", "triage", "v1", fingerprint="f", **fallback)
    status, body = hook(service, firing)
    assert (status, body["results"][0]["outcome"], body["results"][0]["model"]) == (
        200,
        "acted",
        "anthropic/claude-sonnet-4",
    )
    evaluation = Admin(service.admin_url).evaluate("triage.model", "user-1")
    assert (evaluation.body["value"], evaluation.body["variant"], evaluation.body["reason"]) == (
        "anthropic/claude-sonnet-4",
        "fallback",
        "STATIC",
    )
    assert outcomes(hook(service, firing)[1]) == [("repeated", "acted on this firing before")]
    again = alert("LLMCallErrors", "triage", "v1", fingerprint="g", **fallback)
    assert outcomes(hook(service, again)[1])[0][0] == "acted"  # the flag already says so: no new audit entry
    entries = Admin(service.admin_url).ok("GET", "/api/v1/history?agent=triage")["entries"]
    [entry] = [entry for entry in entries if entry["action"] == "fallback"]
    assert (entry["actor"], entry["actor_kind"], entry["after"]) == (
        "LLMRateLimited",
        "alert",
        {"key": "triage.model", "value": "anthropic/claude-sonnet-4"},
    )
    assert entry["evidence"]["alert"]["fingerprint"] == "f"
    # The model is required; a name a client cannot send as a flag key is refused by the rollouts extension.
    missing = alert("LLMRateLimited", "triage", "v1", fingerprint="h", agentopz_action="fallback_model")
    unsendable = alert("LLMRateLimited", "tri age", "v1", fingerprint="i", **fallback)
    _, body = hook(service, missing, unsendable)
    assert [result["outcome"] for result in body["results"]] == ["ignored", "failed"]
    assert body["results"][0]["reason"] == "a fallback_model alert needs the labels agent and agentopz_fallback_model"
    assert body["results"][1]["reason"].startswith("agent 'tri age' is not a valid name: 1 to 128 characters")


def test_the_webhook_needs_its_token(admin):
    service = admin()
    firing = alert("PromptVersionQualityRegression", "support", "v2")
    for token in (None, "wrong"):
        status, body = hook(service, firing, token=token)
        assert status == 401
        assert body == {"error": "this needs the webhook token as 'Authorization: Bearer <token>'"}
    assert rollout_state(service) == "progressing"


def test_bad_notifications_are_clear_400s_and_change_nothing(admin):
    service = admin(max_body_bytes=4096)
    webhook = Admin(service.admin_url, TOKEN)
    cases = [
        (b"{not json", 400, "the notification is not JSON (Alertmanager webhook version 4 expected)"),
        (b"[]", 400, "the notification has no list of alerts (Alertmanager webhook version 4 expected)"),
        (b'{"alerts": [1]}', 400, "the notification has no list of alerts (Alertmanager webhook version 4 expected)"),
        (b"[" * 100_000, 413, "the notification is larger than 4096 bytes"),
    ]
    for raw, status, error in cases:
        reply = webhook.call("POST", "/api/v1/alertmanager", raw)
        assert (reply.status, reply.body) == (status, {"error": error})
    assert rollout_state(service) == "progressing"
    # Still serving: a good notification acts.
    assert outcomes(hook(service, alert("PromptVersionQualityRegression", "support", "v2"))[1])[0][0] == "acted"


def test_a_rollout_under_canary_analysis_is_left_to_its_one_false_rollback_budget(start_service, tmp_path):
    """Each regression alert would spend a false-alarm rate of its own on top of the analysis's budget:
    under analysis they do not roll back; an explicit agentopz_action still acts, and the webhook can
    be told to act on them anyway."""
    token_file = tmp_path / "webhook-token"
    token_file.write_text(TOKEN)

    def start(name: str, **webhook: object):
        extensions = {
            "storage": {"path": str(tmp_path / f"{name}.sqlite")},
            "rollouts": {},
            "canary_analysis": {},
            "alertmanager_webhook": {"auth": {"token_file": str(token_file)}, **webhook},
        }
        service = start_service(service_body(extensions=extensions))
        Admin(service.admin_url).define("support", {"v1": None, "v2": None}, "v1")
        Admin(service.admin_url).start("support", "v2", [5, 100])
        return service

    service = start("deferring")
    _, body = hook(service, alert("PromptVersionQualityRegression", "support", "v2"))
    assert outcomes(body) == [
        (
            "ignored",
            "the canary analysis decides this rollout within its false-rollback budget (defer_to_analysis)",
        )
    ]
    assert rollout_state(service) == "progressing"
    _, body = hook(service, alert("Custom", "support", "v2", agentopz_action="rollback"))
    assert outcomes(body) == [("acted", "alert Custom: Custom on v2")]
    assert rollout_state(service) == "rolled_back"

    acting = start("acting", defer_to_analysis=False)
    _, body = hook(acting, alert("PromptVersionCostRegression", "support", "v2"))
    assert [outcome for outcome, _ in outcomes(body)] == ["acted"]
    assert rollout_state(acting) == "rolled_back"
