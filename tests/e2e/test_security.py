"""The admin port against hostile input: forged and cross-site requests, rebound Host names, crafted
bytes, brute force, open redirects and oversize bodies. Real HTTP requests to a running service (the
built-in default config unless a test needs a token), and a page in Debian's chromium on another port.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import pytest
from support.admin_api import Admin
from support.browser import new_page
from support.service import RunningService, service_body

from agentopz_otel.admin_auth import Throttle, host_allowed, refusal
from agentopz_otel.bearer import MIN_TOKEN_CHARS, TokenConfig, token_matches
from agentopz_otel.extensions.console.actions import _next_path
from agentopz_otel.extensions.console.pages import escape
from agentopz_otel.metrics import Registry
from agentopz_otel.text import visible_direction_controls

ADMIN_TOKEN = "admin-token-for-security-tests-0123456789"
EVAL_TOKEN = "evaluation-token-for-security-tests-01234"
OTLP_TOKEN = "otlp-token-for-security-tests-0123456789"
EVIL = "http://evil.example"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def send(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str | bytes] | None = None) -> Answer:
    """One request with exactly these headers (Host defaults to 127.0.0.1:port; bytes values go raw)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    sent = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    if body or method not in ("GET", "HEAD"):
        sent.setdefault("Content-Length", str(len(body)))
    for name, value in sent.items():
        connection.putheader(name, value)
    connection.endheaders(body or None)
    response = connection.getresponse()
    answer = Answer(response.status, dict(response.getheaders()), response.read())
    connection.close()
    return answer


def send_chunked(port: int, path: str, body: bytes, headers: dict[str, str]) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    chunks = (body[offset : offset + 16384] for offset in range(0, len(body), 16384))
    connection.request("POST", path, body=chunks, headers=headers, encode_chunked=True)
    response = connection.getresponse()
    answer = Answer(response.status, dict(response.getheaders()), response.read())
    connection.close()
    return answer


def forged_alert(agent: str, version: str, action: str) -> bytes:
    alert = {
        "status": "firing",
        "labels": {"alertname": "Forged", "agent": agent, "prompt_version": version, "agentopz_action": action},
        "annotations": {},
        "startsAt": "2099-01-01T00:00:00Z",
        "fingerprint": f"forged-{action}",
    }
    return json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()


def with_rollout(service: RunningService, token: str | None = None) -> Admin:
    admin = Admin(service.admin_url, token=token)
    admin.define("support", {"v1": None, "v2": None}, "v1")
    admin.start("support", "v2", [5, 100])
    return admin


def state(admin: Admin) -> tuple[str, bool]:
    view = admin.ok("GET", "/api/v1/agents")["agents"][0]
    return view["state"], view["disabled"]


def tracebacks(service: RunningService) -> int:
    return service.log().count("Traceback")


@pytest.fixture
def default_service(start_service) -> RunningService:
    """The built-in default config: no admin token, so mutations from loopback need none."""
    return start_service(None)


def token_body(tmp_path, **admin) -> str:
    extensions = {
        "storage": {"path": str(tmp_path / "state.sqlite")},
        "rollouts": {"evaluation_auth": {"token": EVAL_TOKEN}},
        "console": {},
    }
    return service_body(
        receiver={"auth": {"token": OTLP_TOKEN}},
        extensions=extensions,
        service={"admin": {"endpoint": "127.0.0.1:@ADMIN_PORT@", "auth": {"token": ADMIN_TOKEN}, **admin}},
    )


# -- 1. cross-site forgery ---------------------------------------------------------------------


def test_a_forged_text_plain_webhook_post_is_refused_and_acts_on_nothing(default_service):
    admin = with_rollout(default_service)
    port = default_service.admin_port
    body = forged_alert("support", "v2", "rollback")
    cross_site = send(port, "POST", "/api/v1/alertmanager", body, {"Content-Type": "text/plain", "Origin": EVIL})
    assert cross_site.status == 403
    assert "cross-site" in cross_site.json()["error"]
    fetch_site = {"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"}
    assert send(port, "POST", "/api/v1/alertmanager", body, fetch_site).status == 403
    # Without any browser header a text/plain body is still not a state change the port takes.
    no_origin = send(port, "POST", "/api/v1/alertmanager", body, {"Content-Type": "text/plain"})
    assert (no_origin.status, no_origin.json()["error"]) == (
        415,
        "state changes take a JSON body (Content-Type: application/json)",
    )
    # A same-origin form passes the port's guard (the console's forms are such), but not the webhook.
    local = f"http://127.0.0.1:{port}"
    form = send(
        port,
        "POST",
        "/api/v1/alertmanager",
        body,
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": local},
    )
    assert form.status == 415
    assert form.json()["error"] == "send the notification as JSON (Content-Type: application/json)"
    assert state(admin) == ("progressing", False)
    assert default_service.value("agentopz_alertmanager_webhook_alerts_total") == 0
    # Alertmanager's own request (JSON, no browser headers) still acts.
    acted = send(port, "POST", "/api/v1/alertmanager", body, {"Content-Type": "application/json"})
    assert acted.status == 200
    assert [r["outcome"] for r in acted.json()["results"]] == ["acted"]
    assert state(admin) == ("rolled_back", False)


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    """An attacker's page on another port: no-cors fetches and a form post to the admin port."""

    admin = ""

    def do_GET(self) -> None:
        admin = self.admin
        disable = forged_alert("support", "v2", "disable").decode()
        page = f"""<!doctype html><html><body>
<form id=f method=post action="{admin}/api/v1/rollouts/support/pause" enctype="text/plain" target=sink>
<input name='{{"reason":"x","pad":"' value='"}}'></form><iframe name=sink></iframe>
<script>
async function attack() {{
  const sent = [];
  for (const [path, body] of [["/api/v1/alertmanager", {json.dumps(disable)}],
                              ["/api/v1/rollouts/support/pause", '{{"reason": "forged"}}'],
                              ["/api/v1/agents/support/disable", '{{"reason": "forged"}}']]) {{
    try {{
      await fetch("{admin}" + path, {{method: "POST", mode: "no-cors", body,
                                      headers: {{"Content-Type": "text/plain"}}}});
      sent.push(path);
    }} catch (e) {{ sent.push("error " + e); }}
  }}
  document.getElementById("f").submit();
  return sent;
}}
</script></body></html>"""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def attacker_site(default_service) -> Iterator[str]:
    handler = type("Page", (_AttackerPage,), {"admin": f"http://127.0.0.1:{default_service.admin_port}"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_port_cannot_act_through_the_operators_browser(
    default_service,
    attacker_site,
    chromium,
):
    admin = with_rollout(default_service)
    page = new_page(chromium)
    page.goto(attacker_site)
    sent = page.evaluate("attack()")
    assert sent == ["/api/v1/alertmanager", "/api/v1/rollouts/support/pause", "/api/v1/agents/support/disable"]
    page.wait_for_timeout(1000)  # the form post lands in the iframe
    assert state(admin) == ("progressing", False)
    assert default_service.value("agentopz_alertmanager_webhook_alerts_total") == 0
    assert [entry["action"] for entry in admin.ok("GET", "/api/v1/history")["entries"]] == ["start", "define"]


# -- 2. DNS rebinding ----------------------------------------------------------------------------

READS = [
    "/",
    "/metrics",
    "/healthz",
    "/api/v1/history",
    "/api/v1/agents",
    "/api/v1/flagd/flags.json",
    "/rollouts",
    "/api/v1/probes",
    "/api/v1/routes",
]


def test_every_route_refuses_a_rebound_host_name(default_service):
    admin = with_rollout(default_service)
    port = default_service.admin_port
    rebound = {"Host": f"evil.example:{port}"}
    for path in READS:
        refused = send(port, "GET", path, headers=rebound)
        assert refused.status == 403, path
        assert "is not an IP address, localhost or one of service.admin.allowed_hosts" in refused.json()["error"]
        assert send(port, "GET", path, headers={"Host": f"localhost:{port}"}).status == 200, path
        assert send(port, "GET", path, headers={"Host": f"[::1]:{port}"}).status == 200, path
    json_type = {"Content-Type": "application/json"}
    evaluation = send(port, "POST", "/ofrep/v1/evaluate/flags/support", b'{"context":{}}', {**rebound, **json_type})
    assert evaluation.status == 403
    pause = send(port, "POST", "/api/v1/rollouts/support/pause", b"{}", {**rebound, **json_type})
    assert pause.status == 403
    tool_off = send(port, "PUT", "/api/v1/routes/support/tools/search", b'{"enabled": false}', {**rebound, **json_type})
    assert tool_off.status == 403
    assert send(port, "GET", "/api/v1/routes").json()["routes"] == []
    assert state(admin) == ("progressing", False)
    assert send(port, "POST", "/api/v1/rollouts/support/pause", b"{}", json_type).status == 200
    assert state(admin) == ("paused", False)


def test_allowed_hosts_admits_a_configured_name(start_service, tmp_path):
    service = start_service(token_body(tmp_path, allowed_hosts=["agentopz.internal"]))
    port = service.admin_port
    assert send(port, "GET", "/metrics", headers={"Host": f"agentopz.internal:{port}"}).status == 200
    assert send(port, "GET", "/metrics", headers={"Host": f"AGENTOPZ.internal.:{port}"}).status == 200
    assert send(port, "GET", "/metrics", headers={"Host": f"other.internal:{port}"}).status == 403


def test_the_guard_rules_as_plain_data():
    allowed = frozenset({"ops.example"})
    assert host_allowed("127.0.0.1:9464", allowed) and host_allowed("[::1]:9464", allowed)
    assert host_allowed("localhost", allowed) and host_allowed("app.localhost:1", allowed)
    assert host_allowed("ops.example:9464", allowed)
    assert not host_allowed("evil.example:9464", allowed)
    assert not host_allowed("127.0.0.1.evil.example", allowed)
    assert not host_allowed("[::1", allowed) and not host_allowed("", allowed)
    host = "127.0.0.1:9464"
    json_type, form, plain = "application/json", "application/x-www-form-urlencoded", "text/plain"
    assert refusal("GET", host, EVIL, "cross-site", plain, allowed) is None  # reads are open to any origin
    assert refusal("POST", host, None, None, json_type, allowed) is None  # the CLI, Alertmanager, curl
    assert refusal("POST", None, None, None, json_type, allowed) is None  # HTTP/1.0 without Host
    assert refusal("POST", host, f"http://{host}", "same-origin", form, allowed) is None  # the console
    assert refusal("POST", host, None, "none", json_type, allowed) is None
    for method, origin, site, kind, status in [
        ("POST", EVIL, None, json_type, 403),
        ("POST", "null", None, json_type, 403),
        ("POST", "http://127.0.0.1:9465", None, json_type, 403),  # another port is another origin
        ("POST", None, "same-site", json_type, 403),
        ("POST", None, "cross-site", json_type, 403),
        ("PUT", EVIL, None, json_type, 403),
        ("POST", None, None, form, 403),  # a form without its origin
        ("POST", None, None, plain, 415),
        ("POST", None, None, "", 415),
        ("DELETE", f"http://{host}", "same-origin", plain, 415),
    ]:
        refused = refusal(method, host, origin, site, kind, allowed)
        assert refused is not None and refused.status == status, (method, origin, site, kind)


# -- 3. open redirect ----------------------------------------------------------------------------


def test_sign_in_redirects_only_to_console_paths(default_service):
    port = default_service.admin_port
    local = f"http://127.0.0.1:{port}"
    for next_value, expected in [
        ("/\t/evil.example", "/rollouts"),
        ("//evil.example", "/rollouts"),
        ("/\\evil.example", "/rollouts"),
        ("http://evil.example/", "/rollouts"),
        ("/login", "/rollouts"),
        ("/agents/support?window=24h", "/agents/support?window=24h"),
    ]:
        form = urlencode({"name": "Ann", "token": "", "next": next_value}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": local}
        answer = send(port, "POST", "/login", form, headers)
        assert (answer.status, answer.headers["Location"]) == (303, expected), next_value
    # The query form: %2F%09%2F decodes to "/<tab>/"; the page carries the safe path only.
    page = send(port, "GET", "/login?next=%2F%09%2Fevil.example").body.decode()
    assert 'name="next" value="/rollouts"' in page


def test_next_path_grammar():
    assert _next_path("/") == "/" and _next_path(None) == "/rollouts"
    assert _next_path("/rollouts#agent-support") == "/rollouts#agent-support"
    assert _next_path("/runbooks/AgentopzDown") == "/runbooks/AgentopzDown"
    for hostile in ("/rollouts\n", "/agents/a/../../x", "/ /evil", "/%0d%0a", "javascript:alert(1)", "/agents/"):
        assert _next_path(hostile) == "/rollouts", hostile


# -- 4. brute force and short tokens -------------------------------------------------------------


def test_throttle_lets_five_wrong_tokens_through_then_backs_off():
    throttle = Throttle(free=5, max_delay=60, forget_after=900, max_clients=2)
    for _ in range(5):
        assert throttle.wait("a", 100.0) == 0
        throttle.failed("a", 100.0)
    assert throttle.wait("a", 100.0) == 1.0  # the 6th waits 1 s after the 5th
    assert throttle.wait("a", 101.0) == 0
    throttle.failed("a", 101.0)
    assert throttle.wait("a", 101.0) == 2.0
    for _ in range(20):
        throttle.failed("a", 101.0)
    assert throttle.wait("a", 101.0) == 60.0  # capped
    assert throttle.wait("a", 1002.0) == 0  # forgotten after 900 quiet seconds
    for client in ("b", "c", "d"):
        throttle.failed(client, 0.0)
    assert throttle.wait("b", 0.0) == 0 and len(throttle._failures) == 2  # bounded: the quietest went
    throttle.succeeded("c")
    assert "c" not in throttle._failures


def test_wrong_sign_ins_and_bearer_tokens_are_throttled_and_counted(start_service, tmp_path):
    service = start_service(token_body(tmp_path))
    port = service.admin_port
    local = f"http://127.0.0.1:{port}"
    form_headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": local}

    def sign_in(token: str) -> Answer:
        return send(port, "POST", "/login", urlencode({"name": "Mallory", "token": token}).encode(), form_headers)

    assert [sign_in("wrong").status for _ in range(5)] == [401] * 5
    throttled = sign_in(ADMIN_TOKEN)  # even the right token waits: the client is throttled
    assert throttled.status == 429
    assert throttled.headers["Retry-After"] == "1"
    assert "Too many wrong tokens" in throttled.body.decode()
    time.sleep(1.1)
    assert sign_in(ADMIN_TOKEN).status == 303
    # The API's bearer tokens share the throttle.
    api = Admin(service.admin_url, token="w" * 40)
    assert [api.call("POST", "/api/v1/agents/x/enable", {}).status for _ in range(6)] == [401] * 5 + [429]
    assert service.value("agentopz_admin_auth_refused_total", reason="wrong_token") == 10
    assert service.value("agentopz_admin_auth_refused_total", reason="throttled") == 2


def test_tokens_shorter_than_32_characters_are_refused(start_service, tmp_path):
    assert MIN_TOKEN_CHARS == 32
    TokenConfig(token="x" * 32)
    with pytest.raises(ValueError, match="token has 31 characters; use at least 32"):
        TokenConfig(token="x" * 31)
    short_file = tmp_path / "short"
    short_file.write_text("y" * 31 + "\n")
    with pytest.raises(OSError, match=r"service.admin.auth: token_file .*short has 31 characters; use at least 32"):
        TokenConfig(token_file=short_file).secret("service.admin.auth")
    body = service_body(service={"admin": {"endpoint": "127.0.0.1:@ADMIN_PORT@", "auth": {"token": "a"}}})
    with pytest.raises(
        RuntimeError, match=r"invalid config:\nservice.admin.auth: Value error, token has 1 characters; use at least 32"
    ):
        start_service(body)


# -- 5. crafted bytes ------------------------------------------------------------------------------


def test_token_comparison_on_bytes_never_raises():
    assert token_matches("é" * 16, "é" * 16)
    assert not token_matches("\udcff\udcfe", ADMIN_TOKEN)  # header bytes \xff\xfe, surrogate-escaped
    assert not token_matches("é", "x" * 32) and not token_matches(None, "x" * 32)


def test_crafted_token_bytes_are_a_mismatch_not_a_500(start_service, tmp_path):
    service = start_service(token_body(tmp_path))
    port = service.admin_port
    crafted = {"Authorization": b"Bearer \xff\xfe", "Content-Type": "application/json"}
    assert send(port, "POST", "/api/v1/agents/x/enable", b"{}", crafted).status == 401
    assert send(port, "POST", "/ofrep/v1/evaluate/flags/x", b"{}", crafted).status == 403
    assert send(port, "POST", "/ofrep/v1/evaluate/flags/x", b"{}", {**crafted, "X-API-Key": b"\xff"}).status == 403
    otlp = {"Authorization": b"Bearer \xff\xfe", "Content-Type": "application/x-protobuf"}
    assert send(service.http_port, "POST", "/v1/traces", b"", otlp).status == 401
    assert tracebacks(service) == 0


def sign_in_locally(port: int, name: str = "Ann") -> tuple[str, str]:
    """(session cookie, CSRF token) of a loopback sign-in on a service without an admin token."""
    local = f"http://127.0.0.1:{port}"
    form = urlencode({"name": name, "token": ""}).encode()
    answer = send(port, "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded", "Origin": local})
    assert answer.status == 303
    cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
    page = send(port, "GET", "/rollouts", headers={"Cookie": cookie}).body.decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return cookie, csrf.group(1)


def test_a_non_ascii_csrf_field_is_refused_not_a_500(default_service):
    admin = with_rollout(default_service)
    port = default_service.admin_port
    cookie, _ = sign_in_locally(port)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": f"http://127.0.0.1:{port}",
        "Cookie": cookie,
    }
    for field in ("é", "%ED%A0%80", "%FF%FE"):
        answer = send(port, "POST", "/rollouts/support/pause", f"csrf={field}&confirmed=yes".encode(), headers)
        assert answer.status == 403, field
    assert state(admin) == ("progressing", False)
    assert tracebacks(default_service) == 0


# -- 6. sign-out ---------------------------------------------------------------------------------


def test_sign_out_needs_the_csrf_token_and_ends_the_session(default_service):
    admin = with_rollout(default_service)
    port = default_service.admin_port
    cookie, csrf = sign_in_locally(port)
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://127.0.0.1:{port}", "Cookie": cookie}
    refused = send(port, "POST", "/logout", b"", form)
    assert refused.status == 403 and "Set-Cookie" not in refused.headers
    out = send(port, "POST", "/logout", f"csrf={csrf}".encode(), form)
    assert out.status == 303
    # The old cookie, replayed, is no session any more.
    replay = send(port, "POST", "/rollouts/support/pause", f"csrf={csrf}&confirmed=yes".encode(), form)
    assert replay.status == 401
    assert state(admin) == ("progressing", False)


# -- 7. OFREP body cap ---------------------------------------------------------------------------


def test_the_ofrep_body_cap_holds_for_chunked_bodies(default_service):
    with_rollout(default_service)
    port = default_service.admin_port
    headers = {"Content-Type": "application/json", "Host": f"127.0.0.1:{port}"}
    huge = json.dumps({"context": {"targetingKey": "k" * 1_000_000}}).encode()
    for path in ("/ofrep/v1/evaluate/flags/support", "/ofrep/v1/evaluate/flags"):
        answer = send_chunked(port, path, huge, headers)
        assert (answer.status, answer.json()["errorCode"]) == (400, "PARSE_ERROR"), path
        assert send(port, "POST", path, huge, headers).status == 400
    at_cap = json.dumps({"context": {"targetingKey": "k" * (65_536 - 33)}}).encode()
    assert len(at_cap) == 65_536
    assert send_chunked(port, "/ofrep/v1/evaluate/flags/support", at_cap, headers).status == 200
    assert send_chunked(port, "/ofrep/v1/evaluate/flags/support", at_cap + b" ", headers).status == 400


# -- 8. names --------------------------------------------------------------------------------------


def test_agent_define_refuses_names_urls_and_ofrep_keys_cannot_carry(default_service):
    admin = Admin(default_service.admin_url)
    grammar = "1 to 128 characters of A-Z a-z 0-9 . _ ~ -, starting with a letter or digit"
    for name in ("a?b", "a#b", "..", ".hidden", "a{b}", "a b", "a%2Fb", "a\u202eb", "é", "x" * 129):
        reply = admin.call(
            "PUT", f"/api/v1/agents/{quote(name, safe='')}", {"versions": {"v1": None}, "baseline": "v1"}
        )
        assert reply.status in (400, 404), name
        if reply.status == 400:
            assert reply.body["error"] == f"agent {name!r} is not a valid name: {grammar}", name
    bad_version = admin.call("PUT", "/api/v1/agents/ok", {"versions": {"v?1": None}, "baseline": "v?1"})
    assert (bad_version.status, bad_version.body["error"]) == (400, f"version 'v?1' is not a valid name: {grammar}")
    for name in ("support-bot", "a.b_c~d-1", "X" * 128):
        assert admin.call("PUT", f"/api/v1/agents/{name}", {"versions": {"v1": None}, "baseline": "v1"}).status == 200
    assert admin.ok("GET", "/api/v1/agents")["agents"][0]["agent"] in ("support-bot", "a.b_c~d-1", "X" * 128)


def test_direction_overrides_are_shown_escaped():
    assert visible_direction_controls("модель ✓") == "модель ✓"
    assert escape("bot\u202etxt.exe") == "bot\\u202etxt.exe"
    assert escape("\u2066a\u2069 <b>") == "\\u2066a\\u2069 &lt;b&gt;"
    assert escape('"\u200f') == "&quot;\\u200f"


# -- left from the reliability work ----------------------------------------------------------------


def test_sign_in_sessions_survive_a_restart_and_the_database_holds_no_cookie(start_service, tmp_path):
    first = start_service(token_body(tmp_path))
    port = first.admin_port
    form = urlencode({"name": "Ann", "token": ADMIN_TOKEN}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://127.0.0.1:{port}"}
    signed_in = send(port, "POST", "/login", form, headers)
    assert signed_in.status == 303
    cookie = signed_in.headers["Set-Cookie"].split(";", 1)[0]
    assert first.stop() == 0
    second = start_service(token_body(tmp_path))
    page = send(second.admin_port, "GET", "/rollouts", headers={"Cookie": cookie}).body.decode()
    assert "Signed in as <b>Ann</b>" in page
    stranger = send(second.admin_port, "GET", "/rollouts", headers={"Cookie": cookie[:-2] + "xx"}).body.decode()
    assert "Signed in as" not in stranger
    files = list(tmp_path.glob("state.sqlite*"))
    assert files and all(cookie.split("=", 1)[1].encode() not in path.read_bytes() for path in files)


def test_held_run_roots_are_bounded_in_bytes(start_service, tmp_path):
    from support.otlp_proto import make_request
    from support.otlp_sinks import GrpcSink
    from support.runs import raw_run, runs_config, send

    runs = {
        name: raw_run(bytes([index + 1]) * 16, agent=name) for index, name in enumerate(("first", "second", "third"))
    }
    alone = make_request([runs["first"][0]], service="svc").resource_spans[0]
    one_root = (
        alone.resource.ByteSize() + alone.scope_spans[0].scope.ByteSize() + alone.scope_spans[0].spans[0].ByteSize()
    )
    with GrpcSink() as backend:
        exporters = {"otlp/backend": {"endpoint": backend.endpoint, "protocol": "grpc"}}
        config = runs_config(tmp_path / "runs.jsonl", max_held_root_bytes=one_root)
        service = start_service(service_body(runs=config, exporters=exporters))
        # Two roots in one request: the first fills the budget exactly, the second goes on at once.
        send(service, [*runs["first"], *runs["second"]])
        assert service.wait_for("agentopz_runs_total", 2) == 2
        send(service, list(runs["third"]))  # the budget is free again once the first run finished
        assert service.wait_for("agentopz_runs_total", 3) == 3
        assert backend.wait_for_spans(9) == 9
        outcomes = {
            span.name: {kv.key for kv in span.attributes} & {"agentopz.run.outcome"}
            for _, _, span in backend.spans()
            if span.name.startswith("invoke_agent")
        }
    assert outcomes == {
        "invoke_agent first": {"agentopz.run.outcome"},
        "invoke_agent second": set(),
        "invoke_agent third": {"agentopz.run.outcome"},
    }
    assert service.value("agentopz_unheld_run_roots_total") == 1


def test_cli_agent_define_names_the_grammar(default_service, capsys):
    from agentopz_otel.cli import main

    code = main(["agent", "define", "a?b", "--version", "v1", "--baseline", "v1", "--url", default_service.admin_url])
    _, err = capsys.readouterr()
    assert code == 1
    assert "agent 'a?b' is not a valid name: 1 to 128 characters of A-Z a-z 0-9 . _ ~ -" in err
    assert Admin(default_service.admin_url).ok("GET", "/api/v1/agents")["agents"] == []


def test_the_console_counts_the_finished_run_batches_it_drops():
    from agentopz_otel.components import Context
    from agentopz_otel.extensions.console import FACTORY, MAX_PENDING_BATCHES, ConsoleConfig

    registry = Registry()
    context = Context(metrics=registry)
    FACTORY.create("console", ConsoleConfig(), context)  # not started: nothing drains the queue

    def dropped() -> float:
        [family] = [f for f in registry.snapshot() if f.name == "agentopz_console_dropped_batches_total"]
        return sum(value for _, value in family.series)

    for _ in range(MAX_PENDING_BATCHES):
        context.finished_runs.publish([])
    assert dropped() == 0
    context.finished_runs.publish([])
    context.finished_runs.publish([])
    assert dropped() == 2


def test_direction_overrides_are_escaped_in_label_values():
    registry = Registry()
    calls = registry.counter("calls_total", "Calls.", ("model",))
    for _ in range(2):
        calls.series(("gpt\u202e-4o",)).value += 1
    calls.series(("plain-модель",)).value += 1
    assert dict(calls.snapshot().series) == {("gpt\\u202e-4o",): 2, ("plain-модель",): 1}
    assert registry.label_value("model", "gpt\u202e-4o") == "gpt\\u202e-4o"
