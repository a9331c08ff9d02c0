"""Sign-in, the rollouts view's actions and the agent page's routing (component flags): the same
calls as the CLI and the admin API.

Reading is open; acting needs the admin token, entered once on /login and exchanged for a session
(a random id in a Secure, HttpOnly, SameSite=Strict cookie; the token itself never reaches the
browser again). Wrong tokens are throttled per client (admin_auth.Throttle). Every state-changing
form carries the session's CSRF token; the admin port's guard (admin_auth.admin_guard) has already
refused it unless its Host is an IP address, localhost or an allowed name and its Origin is this
console.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web

from ...admin_auth import ADMIN_AUTH, TooManyAttempts, is_loopback, token_matches
from ..canary_analysis import CanaryAnalysisExtension
from ..rollouts import ACTIVE_STATES, RolloutError, RolloutsExtension
from ..rollouts.model import MODEL, TOOL, ComponentFlag
from . import pages
from .pages import escape
from .pages import html_response as _html
from .sessions import Session, Sessions


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


class ConsoleActions:
    def __init__(
        self,
        page: PageMaker,
        extensions: dict[str, Any],
        rollouts_id: str,
        session_hours: float,
    ) -> None:
        self._page = page
        self._extensions = extensions  # the service's extensions by id (filled before any starts)
        self._rollouts_id = rollouts_id
        self._session_seconds = session_hours * 3600
        self.sessions = Sessions(MAX_SESSIONS)

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
        return self.sessions.get(request.cookies.get(COOKIE, ""), time.time())

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        page = self._page(request, "Sign in", "rollouts")
        token_configured = request.app[ADMIN_AUTH].token is not None
        return _html(pages.login_page(page, None, token_configured, _next_path(request.query.get("next"))))

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name = str(form.get("name", "")).strip()[:64]
        token = str(form.get("token", "")).strip()
        next_path = _next_path(str(form.get("next", "")))
        auth = request.app[ADMIN_AUTH]
        page = self._page(request, "Sign in", "rollouts")
        if auth.token is None:
            error = None if is_loopback(request) else "No admin token is configured: only loopback may act."
        else:
            try:
                error = None if auth.attempt(request.remote or "", token) else "That is not the admin token."
            except TooManyAttempts as refused:
                text = f"Too many wrong tokens from this address: try again in {refused.retry_after} s."
                response = _html(pages.login_page(page, text, True, next_path), status=429)
                response.headers["Retry-After"] = str(refused.retry_after)
                return response
        if error is None and not name:
            error = "Enter your name: the audit log records who acted."
        if error is not None:
            status = 403 if auth.token is None else 401
            return _html(pages.login_page(page, error, auth.token is not None, next_path), status=status)
        cookie, _ = self.sessions.new(name, self._session_seconds, time.time())
        response = web.HTTPSeeOther(next_path)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self._session_seconds),
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        form = await request.post()
        if session is not None:
            # Without its CSRF token a sign-out is refused outright: clearing only the cookie would leave
            # the session usable by whoever holds its id.
            if not token_matches(str(form.get("csrf", "")), session.csrf):
                page = self._page(request, "Sign out", "rollouts")
                text = "The form is stale or came from another site; reload the page and sign out again."
                return _html(pages.message_page(page, "Refused", text), status=403)
            self.sessions.drop(session)
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
        session = self.session(request)
        if session is None:
            text = "Sign in with the admin token first: reading is open, acting is not."
            return _html(pages.message_page(page, "Not signed in", text, back=f"/login?next={back}"), status=401)
        form = await request.post()
        if not token_matches(str(form.get("csrf", "")), session.csrf):
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


# Where a sign-in may send the browser on: the console's own pages, as its links write them. Only
# unreserved characters and percent escapes: no scheme, no `//`, no backslash, no whitespace or
# control character (a browser strips a tab, so "/<tab>/evil.example" would become "//evil.example").
_SEGMENT = r"[A-Za-z0-9._~%-]+"
_NEXT_PATH = re.compile(
    rf"/(?:(?:rollouts|runbooks)(?:/{_SEGMENT})?|agents/{_SEGMENT})?(?:\?[A-Za-z0-9._~%=&:-]*)?(?:#{_SEGMENT})?"
)


def _next_path(value: str | None) -> str:
    """A known console path, else /rollouts: never an open redirect."""
    return value if value and _NEXT_PATH.fullmatch(value) else "/rollouts"
