"""Sign-in, the rollouts view's actions and the agent page's routing (component flags): the same
calls as the CLI and the admin API.

Reading is open; acting needs the admin token, entered once on /login and exchanged for a session
(a random id in a Secure, HttpOnly, SameSite=Strict cookie; the token itself never reaches the
browser again). Every state-changing form carries the session's CSRF token, and its Origin (or
Referer) must be this console. The Host must be an IP address, localhost or a configured name, so a
DNS-rebinding page cannot borrow a loopback-only session.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from aiohttp import web

from ...admin_auth import ADMIN_AUTH, is_loopback, token_matches
from ..canary_analysis import CanaryAnalysisExtension
from ..rollouts import ACTIVE_STATES, RolloutError, RolloutsExtension
from ..rollouts.model import MODEL, TOOL, ComponentFlag
from . import pages
from .pages import html_response as _html


class PageMaker(Protocol):
    """The console page frame (navigation, session, CSRF token) the actions render into."""

    def __call__(self, request: web.Request, title: str, active: str, **extra: Any) -> pages.PageContext: ...


COOKIE = "agentopz_console"
MAX_SESSIONS = 1000
ROLLOUT_ACTIONS = ("rollback", "promote", "pause", "resume")
FLAG_ACTIONS = ("disable", "enable")
# Agent page actions on component flags (POST /routes/{agent}/{action}).
ROUTE_ACTIONS = ("tool-off", "tool-on", "fallback", "clear-model")
MAX_REASON_CHARS = 500


@dataclass
class Session:
    id: str
    name: str
    csrf: str
    expires: float


class ConsoleActions:
    def __init__(
        self,
        page: PageMaker,
        extensions: dict[str, Any],
        rollouts_id: str,
        session_hours: float,
        allowed_hosts: Sequence[str],
    ) -> None:
        self._page = page
        self._extensions = extensions  # the service's extensions by id (filled before any starts)
        self._rollouts_id = rollouts_id
        self._session_seconds = session_hours * 3600
        self._allowed_hosts = frozenset(allowed_hosts)
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/login", self._login_form),
            ("POST", "/login", self._login),
            ("POST", "/logout", self._logout),
            ("GET", "/rollouts", self._rollouts_view),
            ("POST", "/rollouts/{agent}/{action}", self._act),
            ("POST", "/routes/{agent}/{action}", self._route),
        ]

    # -- sessions ------------------------------------------------------------------------------

    def session(self, request: web.Request) -> Session | None:
        session = self._sessions.get(request.cookies.get(COOKIE, ""))
        if session is None:
            return None
        if session.expires < time.time():
            del self._sessions[session.id]
            return None
        return session

    def _new_session(self, name: str) -> Session:
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        expires = time.time() + self._session_seconds
        session = Session(secrets.token_urlsafe(32), name, secrets.token_urlsafe(32), expires)
        self._sessions[session.id] = session
        return session

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        page = self._page(request, "Sign in", "rollouts")
        token_configured = request.app[ADMIN_AUTH].token is not None
        return _html(pages.login_page(page, None, token_configured, _next_path(request.query.get("next"))))

    async def _login(self, request: web.Request) -> web.StreamResponse:
        _check_origin(request, self._allowed_hosts)
        form = await request.post()
        name = str(form.get("name", "")).strip()[:64]
        token = str(form.get("token", "")).strip()
        next_path = _next_path(str(form.get("next", "")))
        auth = request.app[ADMIN_AUTH]
        page = self._page(request, "Sign in", "rollouts")
        if auth.token is None:
            error = None if is_loopback(request) else "No admin token is configured: only loopback may act."
        else:
            error = None if token_matches(token, auth.token) else "That is not the admin token."
        if error is None and not name:
            error = "Enter your name: the audit log records who acted."
        if error is not None:
            status = 403 if auth.token is None else 401
            return _html(pages.login_page(page, error, auth.token is not None, next_path), status=status)
        session = self._new_session(name)
        response = web.HTTPSeeOther(next_path)
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(self._session_seconds),
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        _check_origin(request, self._allowed_hosts)
        session = self.session(request)
        form = await request.post()
        if session is not None and secrets.compare_digest(str(form.get("csrf", "")), session.csrf):
            self._sessions.pop(session.id, None)
        response = web.HTTPSeeOther("/")
        response.del_cookie(COOKIE, path="/")
        raise response

    # -- rollouts ------------------------------------------------------------------------------

    def rollouts(self) -> RolloutsExtension | None:
        """The rollouts extension, or None when it is not switched on."""
        found = self._extensions.get(self._rollouts_id)
        return found if isinstance(found, RolloutsExtension) else None

    def version_roles(self, agent: str) -> tuple[dict[str, str], str]:
        """(version -> baseline | candidate, a line of HTML about the agent's rollout) on the event loop."""
        rollouts = self.rollouts()
        if rollouts is None:
            return {}, ""
        roles: dict[str, str] = {}
        flag = next((flag for flag in rollouts.agents() if flag.agent == agent), None)
        if flag is not None:
            roles[flag.baseline] = "baseline"
        rollout = rollouts.rollout(agent)
        line = ""
        if rollout is not None:
            if rollout.state in ACTIVE_STATES:
                roles[rollout.baseline] = "baseline"
                roles[rollout.candidate] = "candidate"
            line = (
                f'<p class="rollout">Rollout: <b>{escape(rollout.candidate)}</b> at {rollout.weight}% beside '
                f"{escape(rollout.baseline)}, {escape(rollout.state)} "
                f'(<a href="/rollouts#agent-{escape(quote(agent, safe=""))}">rollouts</a>)</p>'
            )
        if flag is not None and flag.disabled:
            line += f'<p class="reason bad">● Disabled (fallback {escape(flag.fallback or "the default in code")})</p>'
        return roles, line

    async def _rollouts_view(self, request: web.Request) -> web.StreamResponse:
        page = self._page(request, "Rollouts", "rollouts", notice=_notice(request.query.get("done", "")))
        rollouts = self.rollouts()
        if rollouts is None:
            return _html(pages.rollouts_off_page(page, self._rollouts_id))
        flags = rollouts.agents()
        current = {flag.agent: rollouts.rollout(flag.agent) for flag in flags}
        history = rollouts.history(limit=100)
        analyses = [ext for ext in self._extensions.values() if isinstance(ext, CanaryAnalysisExtension)]
        verdicts = {
            agent: status
            for agent, rollout in current.items()
            if rollout is not None
            for analysis in analyses
            if (status := analysis.status(rollout)) is not None
        }
        return _html(pages.rollouts_page(page, flags, current, history, verdicts))

    async def _signed_form(
        self, request: web.Request, page: pages.PageContext, back: str
    ) -> tuple[Session, Any] | web.Response:
        """The session and form of a state-changing post, or the page refusing it (not signed in, stale or
        cross-site form)."""
        _check_origin(request, self._allowed_hosts)
        session = self.session(request)
        if session is None:
            text = "Sign in with the admin token first: reading is open, acting is not."
            return _html(pages.message_page(page, "Not signed in", text, back=f"/login?next={back}"), status=401)
        form = await request.post()
        if not secrets.compare_digest(str(form.get("csrf", "")), session.csrf):
            text = "The form is stale or came from another site; reload the page."
            return _html(pages.message_page(page, "Refused", text, back=back), status=403)
        return session, form

    async def _act(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        action = request.match_info["action"]
        if action not in ROLLOUT_ACTIONS + FLAG_ACTIONS:
            raise web.HTTPNotFound(text=f"unknown action {action!r}\n")
        page = self._page(request, "Rollouts", "rollouts")
        signed = await self._signed_form(request, page, "/rollouts")
        if isinstance(signed, web.Response):
            return signed
        session, form = signed
        reason = str(form.get("reason", "")).strip()[:MAX_REASON_CHARS] or f"{action} from the console"
        if form.get("confirmed") != "yes":
            detail = f"This {action}s {agent} at once for every client, recorded under your name ({session.name})."
            return _html(pages.confirm_page(page, agent, action, reason, detail))
        rollouts = self.rollouts()
        if rollouts is None:
            return _html(pages.rollouts_off_page(page, self._rollouts_id), status=404)
        try:
            if action in ROLLOUT_ACTIONS:
                rollouts.act(agent, action, actor=session.name, actor_kind="user", reason=reason)
            elif action == "disable":
                rollouts.disable(agent, actor=session.name, actor_kind="user", reason=reason)
            else:
                rollouts.enable(agent, actor=session.name, actor_kind="user", reason=reason)
        except RolloutError as error:
            return _html(pages.message_page(page, f"Cannot {action} {agent}", error.message), status=error.status)
        raise web.HTTPSeeOther(f"/rollouts?done={quote(action)}:{quote(agent, safe='')}")

    # -- routing (component flags) on the agent page -----------------------------------------------

    def routes_of(self, agent: str) -> list[ComponentFlag] | None:
        """The agent's component flags, None when the rollouts extension is off (on the event loop)."""
        rollouts = self.rollouts()
        return None if rollouts is None else rollouts.components(agent)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        action = request.match_info["action"]
        if action not in ROUTE_ACTIONS:
            raise web.HTTPNotFound(text=f"unknown action {action!r}\n")
        back = pages.agent_href(agent)
        page = self._page(request, agent, "fleet")
        signed = await self._signed_form(request, page, back)
        if isinstance(signed, web.Response):
            return signed
        session, form = signed
        tool = str(form.get("tool", "")).strip()
        model = str(form.get("model", "")).strip()
        reason = str(form.get("reason", "")).strip()[:MAX_REASON_CHARS] or f"{action} from the console"
        if form.get("confirmed") != "yes":
            what = {
                "tool-off": f"switches tool {tool} off for {agent}: its code skips the tool",
                "tool-on": f"switches tool {tool} on again for {agent}",
                "fallback": f"makes {agent} call model {model} instead of the one in its code",
                "clear-model": f"removes {agent}'s model fallback: it calls the model in its code again",
            }[action]
            detail = f"This {what}, at once for every client, recorded under your name ({session.name})."
            return _html(pages.route_confirm_page(page, agent, action, tool, model, reason, detail))
        rollouts = self.rollouts()
        if rollouts is None:
            return _html(pages.rollouts_off_page(page, self._rollouts_id), status=404)
        try:
            if action == "clear-model":
                rollouts.clear_route(agent, MODEL, actor=session.name, reason=reason)
            elif action == "fallback":
                rollouts.route(agent, MODEL, "", model, actor=session.name, reason=reason)
            else:
                rollouts.route(agent, TOOL, tool, action == "tool-on", actor=session.name, reason=reason)
        except RolloutError as error:
            label = pages.ROUTE_LABELS[action].lower()
            return _html(pages.message_page(page, f"Cannot {label}", error.message, back=back), status=error.status)
        raise web.HTTPSeeOther(f"{back}?done={quote(action)}#routing")


def route_notice(done: str) -> str | None:
    return f"Done: {pages.ROUTE_LABELS[done].lower()}." if done in ROUTE_ACTIONS else None


def _notice(done: str) -> str | None:
    action, _, agent = done.partition(":")
    if action not in ROLLOUT_ACTIONS + FLAG_ACTIONS or not agent:
        return None
    return f"Done: {pages.ACTION_LABELS[action].lower()} {agent}."


def _next_path(value: str | None) -> str:
    """Only a path on this console: never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/rollouts"
    return value


def _host_allowed(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _check_origin(request: web.Request, allowed_hosts: frozenset[str]) -> None:
    """Refuse a state-changing request from another site (CSRF) or through a rebound DNS name."""
    host = request.host
    if not _host_allowed(host) and (urlsplit(f"//{host}").hostname or "") not in allowed_hosts:
        raise web.HTTPForbidden(text="this console answers actions on an IP address, localhost or a configured host\n")
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or urlsplit(origin).netloc != host:
        raise web.HTTPForbidden(text="cross-site request refused (Origin does not match this console)\n")
