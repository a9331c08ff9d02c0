"""The rollouts extension on a running service: admin API, OFREP protocol, auth, restart, concurrency, CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from support.admin_api import Admin
from support.service import rollouts_body

from agentopz_otel.admin_auth import ADMIN_AUTH, AdminAuth, require_admin
from agentopz_otel.cli import main
from agentopz_otel.extensions.rollouts.split import split_variant

VERSIONS = {"v1": {"prompt": "support-v1"}, "v2": {"prompt": "support-v2"}, "v3": {"prompt": "support-v3"}}
KEYS = [f"conversation-{i}" for i in range(200)]

EVAL_TOKEN = "eval-token-0123456789abcdef0123456789"
ADMIN_TOKEN = "admin-token-0123456789abcdef012345678"
CLI_TOKEN = "cli-token-0123456789abcdef0123456789ab"


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "state" / "agentopz.sqlite"


def test_an_actor_header_is_cut_to_the_audit_logs_limit_and_a_blank_one_is_user(start_service, storage):
    service = start_service(rollouts_body(storage))
    Admin(service.admin_url, actor="a" * 300).define("support-bot", VERSIONS, "v1")
    Admin(service.admin_url, actor="   ").define("other-bot", VERSIONS, "v1")
    entries = Admin(service.admin_url).ok("GET", "/api/v1/history")["entries"]
    assert [(e["agent"], e["actor"]) for e in entries] == [("other-bot", "user"), ("support-bot", "a" * 128)]


def test_rollout_moves_through_its_steps_and_every_change_is_audited(start_service, storage):
    service = start_service(rollouts_body(storage))
    admin = Admin(service.admin_url, actor="alice")
    admin.define("support-bot", VERSIONS, "v1")
    started = admin.start("support-bot", "v2", [5, 25, 50, 100], reason="new tone")
    assert (started["state"], started["weight"], started["step_index"], started["baseline"]) == (
        "progressing",
        5,
        0,
        "v1",
    )

    for key in KEYS:
        reply = admin.evaluate("support-bot", key)
        expected = split_variant("support-bot", key, [("v2", 5), ("v1", 95)])
        assert reply.status == 200
        assert reply.body["variant"] == expected
        assert reply.body["value"] == VERSIONS[expected]
        assert reply.body["reason"] == "SPLIT"
        assert reply.body["metadata"] == {
            "baseline": "v1",
            "candidate": "v2",
            "candidate_weight": 5,
            "rollout_id": started["id"],
            "rollout_state": "progressing",
        }
    on_candidate = sum(split_variant("support-bot", key, [("v2", 5), ("v1", 95)]) == "v2" for key in KEYS)
    assert service.value("agentopz_flag_evaluations_total", agent="support-bot", prompt_version="v2") == on_candidate
    assert service.value("agentopz_flag_evaluations_total", prompt_version="v1", reason="SPLIT") == 200 - on_candidate
    assert service.value("agentopz_rollout_weight", agent="support-bot", prompt_version="v1") == 95
    assert service.value("agentopz_rollout_weight", agent="support-bot", prompt_version="v2") == 5
    assert service.value("agentopz_rollout_weight", agent="support-bot", prompt_version="v3") == 0
    assert service.value("agentopz_rollout_state", agent="support-bot", state="progressing") == 1
    assert service.value("agentopz_rollout_state", agent="support-bot", state="none") == 0

    assert admin.act("support-bot", "pause")["state"] == "paused"
    refused = admin.call("POST", "/api/v1/rollouts/support-bot/advance", {"reason": ""})
    assert refused.status == 409
    assert "paused" in refused.body["error"]
    assert admin.act("support-bot", "resume")["state"] == "progressing"
    advanced = admin.act("support-bot", "advance")
    assert (advanced["weight"], advanced["step_index"]) == (25, 1)
    assert service.value("agentopz_rollout_weight", agent="support-bot", prompt_version="v2") == 25

    first = admin.act("support-bot", "rollback", reason="worse answers")
    second = admin.act("support-bot", "rollback", reason="worse answers")
    assert first == second
    assert (first["state"], first["weight"]) == ("rolled_back", 0)
    after = admin.evaluate("support-bot", KEYS[0]).body
    assert (after["variant"], after["reason"], after["value"]) == ("v1", "STATIC", VERSIONS["v1"])
    assert service.value("agentopz_rollout_state", agent="support-bot", state="rolled_back") == 1
    assert service.value("agentopz_rollout_actions_total", agent="support-bot", action="rollback", actor="user") == 1

    entries = admin.ok("GET", "/api/v1/history?agent=support-bot")["entries"]
    assert [e["action"] for e in entries] == ["rollback", "advance", "resume", "pause", "start", "define"]
    assert {e["actor"] for e in entries} == {"alice"}
    assert {e["actor_kind"] for e in entries} == {"user"}
    assert entries[0]["before"] == {"state": "progressing", "weight": 25, "step_index": 1}
    assert entries[0]["after"] == {"state": "rolled_back", "weight": 0, "step_index": 1}
    assert entries[0]["reason"] == "worse answers"
    assert admin.ok("GET", "/api/v1/history?agent=support-bot&limit=2")["entries"] == entries[:2]

    # A new rollout after a finished one; promotion makes the candidate the baseline.
    admin.start("support-bot", "v3", [50, 100])
    assert admin.act("support-bot", "advance")["weight"] == 100
    promoted = admin.act("support-bot", "advance")
    assert (promoted["state"], promoted["weight"]) == ("promoted", 100)
    agents = admin.ok("GET", "/api/v1/agents")["agents"]
    assert [(a["agent"], a["baseline"], a["state"]) for a in agents] == [("support-bot", "v3", "promoted")]
    assert admin.evaluate("support-bot").body["variant"] == "v3"
    assert admin.ok("GET", "/api/v1/history?agent=support-bot&limit=1")["entries"][0]["action"] == "promote"
    refused = admin.call("POST", "/api/v1/rollouts/support-bot/rollback", {"reason": ""})
    assert refused.status == 409
    assert "promoted" in refused.body["error"]


def test_definitions_and_commands_are_validated_with_clear_errors(start_service, storage):
    admin = Admin(start_service(rollouts_body(storage)).admin_url)
    admin.define("support-bot", VERSIONS, "v1")

    def refused(method: str, path: str, body, status: int, words: str) -> None:
        reply = admin.call(method, path, body)
        assert reply.status == status, (reply.status, reply.body)
        assert words in reply.body["error"], reply.body

    start = "/api/v1/rollouts"
    refused("POST", start, {"agent": "nobody", "candidate": "v2", "steps": [100]}, 404, "unknown agent 'nobody'")
    refused("POST", start, {"agent": "support-bot", "candidate": "v9", "steps": [100]}, 400, "no version 'v9'")
    refused("POST", start, {"agent": "support-bot", "candidate": "v1", "steps": [100]}, 400, "already the baseline")
    refused("POST", start, {"agent": "support-bot", "candidate": "v2", "steps": [5, 50]}, 400, "must end at 100")
    refused("POST", start, {"agent": "support-bot", "candidate": "v2", "steps": [50, 25, 100]}, 400, "must increase")
    refused("POST", start, {"agent": "support-bot", "candidate": "v2", "steps": [0, 100]}, 400, "from 1 to 100")
    refused("POST", start, {"agent": "support-bot", "candidate": "v2", "steps": [5, 101]}, 400, "from 1 to 100")
    refused("POST", start, {"agent": "support-bot", "candidate": "v2"}, 400, "steps: Field required")
    refused("POST", start, {"agent": "support-bot", "candidate": "v2", "steps": [100], "x": 1}, 400, "unknown field")
    refused("POST", start, b"{not json", 400, "not valid JSON")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert admin.call("POST", start, b"agent=support-bot", form).status == 403  # the port's guard: no Origin
    same_origin = {**form, "Origin": admin.url}
    assert admin.call("POST", start, b"agent=support-bot", same_origin).status == 415  # the API: JSON only
    admin.start("support-bot", "v2", [5, 100])
    refused("POST", start, {"agent": "support-bot", "candidate": "v3", "steps": [100]}, 409, "already has a rollout")

    agent = "/api/v1/agents/other-bot"
    refused("PUT", agent, {"versions": {"a": {"p": 1}, "b": "text"}, "baseline": "a"}, 400, "one JSON type")
    refused("PUT", agent, {"versions": {"a": None}, "baseline": "b"}, 400, "baseline 'b' is not one of")
    refused("PUT", agent, {"versions": {}, "baseline": "a"}, 400, "at least one version")
    refused("PUT", agent, {"versions": {" padded": None}, "baseline": " padded"}, 400, "not a valid name")
    refused("PUT", "/api/v1/agents/support-bot", {"versions": VERSIONS, "baseline": "v3"}, 409, "rollout in progress")
    refused("PUT", "/api/v1/agents/support-bot", {"versions": {"v1": {}, "v3": {}}, "baseline": "v1"}, 409, "candidate")
    refused("POST", "/api/v1/rollouts/nobody/rollback", {}, 404, "unknown agent")
    refused("POST", "/api/v1/agents/support-bot/disable", {"reason": "x", "fallback": "v9"}, 400, "no version 'v9'")
    refused("POST", "/api/v1/agents/support-bot/disable", {}, 400, "reason: Field required")
    refused("GET", "/api/v1/history?limit=lots", None, 400, "limit")
    assert admin.call("POST", "/api/v1/rollouts/support-bot/explode", {}).status == 404
    # Nothing refused was recorded.
    entries = admin.ok("GET", "/api/v1/history")["entries"]
    assert [e["action"] for e in entries] == ["start", "define"]


def test_ofrep_protocol_errors_bulk_etag_and_kill_switch(start_service, storage):
    service = start_service(rollouts_body(storage))
    admin = Admin(service.admin_url)
    admin.define("support-bot", VERSIONS, "v1")
    admin.define("router", {"small": None, "large": None}, "small")

    static = admin.evaluate("router")
    assert static.status == 200
    assert static.body == {
        "key": "router",
        "reason": "STATIC",
        "variant": "small",
        "value": "small",
        "metadata": {"baseline": "small"},
    }
    missing = admin.evaluate("nobody", "k")
    assert (missing.status, missing.body["errorCode"], missing.body["key"]) == (404, "FLAG_NOT_FOUND", "nobody")
    malformed = admin.call("POST", "/ofrep/v1/evaluate/flags/router", b"{")
    assert (malformed.status, malformed.body["errorCode"]) == (400, "PARSE_ERROR")
    array = admin.call("POST", "/ofrep/v1/evaluate/flags/router", b"[]")
    assert (array.status, array.body["errorCode"]) == (400, "PARSE_ERROR")
    bad_key = admin.call("POST", "/ofrep/v1/evaluate/flags/router", {"context": {"targetingKey": 7}})
    assert (bad_key.status, bad_key.body["errorCode"]) == (400, "INVALID_CONTEXT")
    assert admin.call("POST", "/ofrep/v1/evaluate/flags/router", b"").status == 200

    admin.start("support-bot", "v2", [5, 100])
    no_key = admin.evaluate("support-bot")
    assert (no_key.status, no_key.body["errorCode"]) == (400, "TARGETING_KEY_MISSING")

    bulk = admin.call("POST", "/ofrep/v1/evaluate/flags", {"context": {}})
    assert bulk.status == 200
    assert [item.get("errorCode") for item in bulk.body["flags"]] == [None, "TARGETING_KEY_MISSING"]
    context = {"context": {"targetingKey": "conversation-1"}}
    first = admin.call("POST", "/ofrep/v1/evaluate/flags", context)
    etag = first.headers["ETag"]
    assert [(f["key"], f["variant"]) for f in first.body["flags"]] == [
        ("router", "small"),
        ("support-bot", split_variant("support-bot", "conversation-1", [("v2", 5), ("v1", 95)])),
    ]
    counted = service.value("agentopz_flag_evaluations_total", agent="router")
    unchanged = admin.call("POST", "/ofrep/v1/evaluate/flags", context, {"If-None-Match": etag})
    assert (unchanged.status, unchanged.body, unchanged.headers["ETag"]) == (304, None, etag)
    assert service.value("agentopz_flag_evaluations_total", agent="router") == counted
    # The answer depends on the context: a key on the other version gets a new tag; one on the same, a 304.
    split = [("v2", 5), ("v1", 95)]
    mine = split_variant("support-bot", "conversation-1", split)
    other = next(key for key in KEYS if split_variant("support-bot", key, split) != mine)
    same = next(key for key in KEYS if key != "conversation-1" and split_variant("support-bot", key, split) == mine)
    for key, status in ((other, 200), (same, 304)):
        reply = admin.call(
            "POST", "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": key}}, {"If-None-Match": etag}
        )
        assert reply.status == status

    # Kill switch: reason DISABLED and no value, so clients use the default in their code; or a fallback.
    admin.ok("POST", "/api/v1/agents/support-bot/disable", {"reason": "2am incident"})
    changed = admin.call("POST", "/ofrep/v1/evaluate/flags", context, {"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    disabled = admin.evaluate("support-bot").body
    assert disabled == {
        "key": "support-bot",
        "reason": "DISABLED",
        "variant": "",
        "metadata": {
            "baseline": "v1",
            "candidate": "v2",
            "candidate_weight": 5,
            "disabled": True,
            "rollout_id": 1,
            "rollout_state": "progressing",
        },
    }
    assert service.value("agentopz_rollout_state", agent="support-bot", state="disabled") == 1
    assert service.value("agentopz_rollout_weight", agent="support-bot") == 0
    admin.ok("POST", "/api/v1/agents/support-bot/disable", {"reason": "route to v1", "fallback": "v1"})
    fallback = admin.evaluate("support-bot", "k").body
    assert (fallback["reason"], fallback["variant"], fallback["value"]) == ("DISABLED", "v1", VERSIONS["v1"])
    assert service.value("agentopz_rollout_weight", agent="support-bot", prompt_version="v1") == 100

    flagd = admin.call("GET", "/api/v1/flagd/flags.json")
    assert flagd.body["flags"]["support-bot"]["state"] == "ENABLED"
    assert flagd.body["flags"]["support-bot"]["defaultVariant"] == "v1"
    assert "targeting" not in flagd.body["flags"]["support-bot"]
    assert admin.call("GET", "/api/v1/flagd/flags.json", headers={"If-None-Match": flagd.headers["ETag"]}).status == 304

    admin.ok("POST", "/api/v1/agents/support-bot/enable", {"reason": "fixed"})
    again = admin.evaluate("support-bot", "conversation-1").body
    assert (again["reason"], again["variant"]) == ("SPLIT", first.body["flags"][1]["variant"])
    flags = admin.ok("GET", "/api/v1/flagd/flags.json")["flags"]
    assert flags["support-bot"]["targeting"] == {"fractional": [["v2", 5], ["v1", 95]]}
    assert flags["router"] == {
        "state": "ENABLED",
        "variants": {"small": "small", "large": "large"},
        "defaultVariant": "small",
        "metadata": {"baseline": "small"},
    }
    assert [e["action"] for e in admin.ok("GET", "/api/v1/history?agent=support-bot")["entries"]][:3] == [
        "enable",
        "disable",
        "disable",
    ]


def test_mutations_need_the_admin_token_and_evaluation_its_own(start_service, storage):
    body = rollouts_body(storage, rollouts={"evaluation_auth": {"token": EVAL_TOKEN}}, admin_token=ADMIN_TOKEN)
    service = start_service(body)
    anonymous = Admin(service.admin_url)
    refused = anonymous.call("PUT", "/api/v1/agents/bot", {"versions": {"a": None}, "baseline": "a"})
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "admin token" in refused.body["error"]
    assert Admin(service.admin_url, token="wrong").call("POST", "/api/v1/agents/bot/enable", {}).status == 401
    lower_case = anonymous.call(
        "PUT",
        "/api/v1/agents/bot",
        {"versions": {"a": None}, "baseline": "a"},
        {"Authorization": f"bearer {ADMIN_TOKEN}"},
    )
    assert lower_case.status == 200
    assert anonymous.call("GET", "/api/v1/agents").status == 200
    assert anonymous.evaluate("bot").status == 401
    assert Admin(service.admin_url, token="wrong").evaluate("bot").status == 403
    assert Admin(service.admin_url, token=EVAL_TOKEN).evaluate("bot").status == 200
    api_key = anonymous.call("POST", "/ofrep/v1/evaluate/flags/bot", {}, {"X-API-Key": EVAL_TOKEN})
    assert (api_key.status, api_key.body["variant"]) == (200, "a")
    assert anonymous.call("GET", "/api/v1/flagd/flags.json").status == 401
    assert Admin(service.admin_url, token=ADMIN_TOKEN).call("GET", "/api/v1/flagd/flags.json").status == 200


def _request_from(peer: str, auth: AdminAuth, authorization: str | None = None) -> web.Request:
    class Transport:
        def get_extra_info(self, name: str, default=None):
            return (peer, 40000) if name == "peername" else default

    app = web.Application()
    app[ADMIN_AUTH] = auth
    headers = {"Authorization": authorization} if authorization else {}
    return make_mocked_request("POST", "/api/v1/rollouts", headers=headers, app=app, transport=Transport())


def test_without_a_token_mutations_are_accepted_from_loopback_only():
    open_auth = AdminAuth(None)
    for peer in ("127.0.0.1", "127.3.4.5", "::1"):
        require_admin(_request_from(peer, open_auth))
    for peer in ("10.0.0.8", "192.168.1.20", "2001:db8::1"):
        with pytest.raises(web.HTTPForbidden):
            require_admin(_request_from(peer, open_auth))
    token_auth = AdminAuth(ADMIN_TOKEN)
    with pytest.raises(web.HTTPUnauthorized):
        require_admin(_request_from("127.0.0.1", token_auth))
    require_admin(_request_from("10.0.0.8", token_auth, f"BEARER {ADMIN_TOKEN}"))


def test_state_and_audit_log_survive_a_restart(start_service, storage):
    first = start_service(rollouts_body(storage))
    admin = Admin(first.admin_url, actor="bob")
    admin.define("support-bot", VERSIONS, "v1")
    admin.start("support-bot", "v2", [5, 25, 100], reason="canary")
    admin.act("support-bot", "advance")
    admin.ok("POST", "/api/v1/agents/support-bot/disable", {"reason": "incident", "fallback": "v1"})
    agents_before = admin.ok("GET", "/api/v1/agents")
    history_before = admin.ok("GET", "/api/v1/history")
    flagd_before = admin.call("GET", "/api/v1/flagd/flags.json")
    assert first.stop() == 0
    # With the service down, the flag set for flagd comes straight from its database.
    offline = storage.parent / "offline.json"
    assert main(["flags", "export", "--from-storage", str(storage), "-o", str(offline)]) == 0
    assert offline.read_text() == json.dumps(flagd_before.body, indent=2) + "\n"

    second = start_service(rollouts_body(storage))
    admin = Admin(second.admin_url, actor="bob")
    assert admin.ok("GET", "/api/v1/agents") == agents_before
    assert admin.ok("GET", "/api/v1/history") == history_before
    flagd_after = admin.call("GET", "/api/v1/flagd/flags.json")
    assert (flagd_after.body, flagd_after.headers["ETag"]) == (flagd_before.body, flagd_before.headers["ETag"])
    assert second.value("agentopz_rollout_state", agent="support-bot", state="disabled") == 1
    admin.ok("POST", "/api/v1/agents/support-bot/enable", {})
    assert admin.evaluate("support-bot", "k").body["metadata"]["candidate_weight"] == 25
    assert [e["id"] for e in admin.ok("GET", "/api/v1/history")["entries"]] == [5, 4, 3, 2, 1]


def test_concurrent_commands_are_serialized_and_a_repeated_rollback_is_one(start_service, storage):
    admin = Admin(start_service(rollouts_body(storage)).admin_url)
    admin.define("support-bot", VERSIONS, "v1")
    replies = []

    def send(path: str, body: dict) -> None:
        replies.append(admin.call("POST", path, body).status)

    def race(path: str, body: dict, count: int = 16) -> list[int]:
        replies.clear()
        threads = [threading.Thread(target=send, args=(path, body)) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(replies)

    start = {"agent": "support-bot", "candidate": "v2", "steps": [5, 100]}
    assert race("/api/v1/rollouts", start) == [201] + [409] * 15
    assert race("/api/v1/rollouts/support-bot/rollback", {"reason": "bad"}) == [200] * 16
    entries = admin.ok("GET", "/api/v1/history")["entries"]
    assert [e["action"] for e in entries] == ["rollback", "start", "define"]


def test_cli_rolls_out_rolls_back_and_exports(start_service, storage, tmp_path, monkeypatch, capsys):
    service = start_service(rollouts_body(storage, admin_token=CLI_TOKEN))
    token_file = tmp_path / "token"
    token_file.write_text(CLI_TOKEN + "\n")
    auth = ["--token-file", str(token_file), "--actor", "carol"]

    def cli(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--url", service.admin_url])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli(
        "agent",
        "define",
        "support-bot",
        "--version",
        'v1={"prompt": "a"}',
        "--version",
        'v2={"prompt": "b"}',
        "--baseline",
        "v1",
        *auth,
    )
    assert (code, out) == (0, "support-bot: none, serving 'v1' to all; versions: v1, v2\n")
    code, _, err = cli("rollout", "start", "support-bot", "--candidate", "v2")
    assert code == 1
    assert "admin token" in err and "--token-file" in err
    code, out, _ = cli("rollout", "start", "support-bot", "--candidate", "v2", "--steps", "5,50,100", *auth)
    assert code == 0
    assert out.startswith("support-bot: progressing, v1 95% / v2 5% (step 1 of 5,50,100, since ")
    code, _, err = cli("rollout", "start", "support-bot", "--candidate", "v2", "--steps", "5,50", *auth)
    assert code == 1
    assert "already has a rollout in progress" in err
    assert cli("rollout", "rollback", "nobody", *auth)[1:] == (
        "",
        "agentopz-otel: unknown agent 'nobody': define it first (agentopz-otel agent define)\n",
    )
    code, _, err = cli("agent", "define", "x", "--version", "v1={oops", "--baseline", "v1", *auth)
    assert (code, err) == (
        1,
        "agentopz-otel: --version v1: the value after '=' is not JSON (Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)); quote strings\n",
    )

    exported = tmp_path / "flags.json"
    assert cli("flags", "export", "-o", str(exported))[0] == 0
    assert json.loads(exported.read_text())["flags"]["support-bot"]["targeting"] == {
        "fractional": [["v2", 5], ["v1", 95]]
    }

    monkeypatch.setenv("AGENTOPZ_ADMIN_TOKEN", CLI_TOKEN)
    monkeypatch.setenv("USER", "dave")
    code, out, _ = cli("rollout", "rollback", "support-bot", "--reason", "quality")
    assert (code, out) == (
        0,
        "support-bot: rolled_back, serving 'v1' to all; last rollout v1 -> v2 rolled_back; versions: v1, v2\n",
    )
    code, out, _ = cli("agent", "disable", "support-bot", "--reason", "incident")
    assert out.startswith("support-bot: disabled, clients use their code default")
    lines = cli("rollout", "history", "support-bot")[1].splitlines()
    assert len(lines) == 4
    assert lines[0].endswith('  support-bot  disable  by dave (user)  baseline v1 -> baseline v1 disabled "incident"')
    assert lines[1].endswith('  support-bot  rollback  by dave (user)  progressing 5% -> rolled_back 0% "quality"')
    assert lines[3].endswith("  support-bot  define  by carol (user)  - -> baseline v1")
    assert cli("rollout", "status")[1].startswith("support-bot: disabled")
    code = main(["rollout", "status", "--url", "http://127.0.0.1:9"])
    assert code == 1
    assert "cannot reach the service at http://127.0.0.1:9" in capsys.readouterr().err
