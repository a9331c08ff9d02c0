"""Component flags on a running service: the admin API's answers to good and bad input, limits,
name clashes, restart, and the flagd export read from the database."""

from __future__ import annotations

import json

from support.admin_api import Admin
from support.service import rollouts_body

from agentopz_otel.cli import main

TOKEN = "route-secret-0123456789abcdef01234567"


def test_component_flag_api_refuses_bad_input_clearly_and_survives_a_restart(start_service, tmp_path):
    storage = tmp_path / "agentopz.sqlite"
    body = rollouts_body(storage, {"max_component_flags": 2}, admin_token=TOKEN)
    service = start_service(body)
    admin = Admin(service.admin_url, token=TOKEN, actor="frank")
    anonymous = Admin(service.admin_url)

    tool_path = "/api/v1/routes/support/tools/search_kb"
    assert anonymous.call("PUT", tool_path, {"enabled": False}).status == 401
    assert admin.ok("PUT", tool_path, {"enabled": False, "reason": "kb down"}) == {
        "agent": "support",
        "kind": "tool",
        "name": "search_kb",
        "value": False,
        "updated_at": admin.ok("GET", "/api/v1/routes")["routes"][0]["updated_at"],
        "key": "support.tool.search_kb",
        "variant": "off",
    }

    def refused(method: str, path: str, payload: object) -> tuple[int, str]:
        reply = admin.call(method, path, payload)
        return reply.status, reply.body["error"]

    assert refused("PUT", tool_path, {"enabled": "no"}) == (400, "enabled: Input should be a valid boolean")
    assert refused("PUT", tool_path, {"enabled": False, "extra": 1}) == (400, "extra: unknown field")
    assert refused("PUT", "/api/v1/routes/support/model", {"fallback": ""}) == (
        400,
        "the fallback model must be 1 to 256 printable characters, e.g. anthropic/claude-sonnet-4",
    )
    assert refused("PUT", "/api/v1/routes/support/tools/kb%20search", {"enabled": False}) == (
        400,
        "tool 'kb search' is not a valid name: 1 to 128 characters of A-Z a-z 0-9 . _ ~ -, starting with a letter "
        "or digit",
    )
    reply = admin.call(
        "PUT", tool_path, b"enabled=false", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    # A form that is not from this service's own pages is refused by the admin port's guard.
    assert (reply.status, reply.body) == (
        403,
        {"error": "a form is accepted only from this service's own pages (no matching Origin)"},
    )

    # A component key and an agent name never clash: each refuses the other.
    assert admin.ok("PUT", "/api/v1/routes/support/model", {"fallback": "gpt-4o-mini"})["key"] == "support.model"
    define = {"versions": {"v1": None}, "baseline": "v1"}
    assert refused("PUT", "/api/v1/agents/support.model", define) == (
        409,
        "'support.model' is the key of a component flag: give the agent another name",
    )
    # max_component_flags: 2 are set, a third is refused; changing one of them is not a new one.
    assert refused("PUT", "/api/v1/routes/other/model", {"fallback": "x"}) == (
        409,
        "at most 2 component flags can be set (max_component_flags)",
    )
    assert admin.ok("PUT", tool_path, {"enabled": True})["variant"] == "on"
    admin.ok("PUT", "/api/v1/agents/triage.model", define)
    admin.ok("DELETE", "/api/v1/routes/support/model", {"reason": "openai is back"})
    assert refused("PUT", "/api/v1/routes/triage/model", {"fallback": "x"}) == (
        409,
        "'triage.model' is the name of an agent: rename one of them",
    )
    admin.ok("PUT", "/api/v1/routes/support/model", {"fallback": "gpt-4o-mini"})

    assert service.stop() == 0
    # While the service is down, the flag set (component flags too) comes from its database.
    exported = tmp_path / "flags.json"
    assert main(["flags", "export", "--from-storage", str(storage), "-o", str(exported)]) == 0
    flags = json.loads(exported.read_text())["flags"]
    assert {key: flag["defaultVariant"] for key, flag in flags.items()} == {
        "triage.model": "v1",
        "support.model": "fallback",
        "support.tool.search_kb": "on",
    }
    assert flags["support.model"]["variants"] == {"fallback": "gpt-4o-mini"}
    restarted = start_service(body)
    again = Admin(restarted.admin_url, token=TOKEN)
    assert [(r["key"], r["value"]) for r in again.ok("GET", "/api/v1/routes")["routes"]] == [
        ("support.model", "gpt-4o-mini"),
        ("support.tool.search_kb", True),
    ]
    assert again.evaluate("support.tool.search_kb").body["value"] is True
    assert again.ok("GET", "/api/v1/routes?agent=nobody") == {"routes": []}
    entries = again.ok("GET", "/api/v1/history?agent=support")["entries"]
    tool_on = {"key": "support.tool.search_kb", "value": True}
    assert [(e["action"], e["actor"], e["before"], e["after"]) for e in entries] == [
        ("fallback", "frank", None, {"key": "support.model", "value": "gpt-4o-mini"}),
        ("clear", "frank", {"key": "support.model", "value": "gpt-4o-mini"}, None),
        ("tool_on", "frank", {"key": "support.tool.search_kb", "value": False}, tool_on),
        ("fallback", "frank", None, {"key": "support.model", "value": "gpt-4o-mini"}),
        ("tool_off", "frank", None, {"key": "support.tool.search_kb", "value": False}),
    ]
