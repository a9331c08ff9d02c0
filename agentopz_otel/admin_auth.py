"""The admin port's security boundary: one request guard in front of every route, the admin token for
mutations, and a throttle on wrong tokens.

A browser on the operator's machine is loopback too, so "loopback only" is not authentication: a web
page the operator opens can send requests to 127.0.0.1:9464, and a DNS name rebound to 127.0.0.1
makes them look same-origin to the browser. So every request, on every route, must name the service
by an IP address, `localhost` or a host in `service.admin.allowed_hosts` (a rebound name is none of
these); and every state change must be JSON (which a page can only send cross-site after a CORS
preflight that is never granted) or a same-origin console form with its CSRF token, and must not
say it comes from another site (`Origin`, `Sec-Fetch-Site`).

`service.admin.auth` holds the admin token (`token`, or `token_file` read at start-up), separate from
any OTLP token. With a token configured every mutation must present it; with none, mutations are
accepted from loopback only, so a service bound to a network address is never silently open.
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from . import catalogue
from .bearer import TokenConfig, bearer_credentials, token_matches
from .metrics import Registry

# agentopz_admin_auth_refused_total{reason}, declared in the catalogue.
REFUSAL_REASONS = WRONG_TOKEN, THROTTLED = catalogue.enum("admin_refusal_reason")

__all__ = [
    "ADMIN_AUTH",
    "AdminAuth",
    "TokenConfig",
    "admin_guard",
    "bearer_token",
    "is_loopback",
    "refusal",
    "require_admin",
    "token_matches",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPE = "application/json"
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})  # `none`: typed in the address bar, a bookmark


def bearer_token(request: web.Request) -> str | None:
    """The request's `Authorization: Bearer ...` credentials, else None."""
    return bearer_credentials(request.headers.get("Authorization"))


def is_loopback(request: web.Request) -> bool:
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote.split("%", 1)[0]).is_loopback
    except ValueError:  # a Unix socket or an unparsable peer: not provably local
        return False


# -- the request guard ----------------------------------------------------------------------------


def host_name(host: str) -> str | None:
    """The lower-case name of a Host header value (`name`, `name:port`, `[v6]:port`); None if unreadable."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return None
    return name.removesuffix(".") if name else None


def host_allowed(host: str, allowed_hosts: frozenset[str]) -> bool:
    """An IP literal, localhost (or a name under .localhost) or an allowed name: never a rebound DNS name."""
    name = host_name(host)
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost") or name in allowed_hosts:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


def refusal(
    method: str,
    host: str | None,
    origin: str | None,
    fetch_site: str | None,
    content_type: str,
    allowed_hosts: frozenset[str],
) -> Refusal | None:
    """Why the admin port refuses a request (None: it does not); plain data in, so every rule is testable.

    `host` None is a client that sent no Host header (HTTP/1.0): not a browser, so not a rebinding."""
    if host is not None and not host_allowed(host, allowed_hosts):
        return Refusal(
            403,
            f"Host {host!r} is not an IP address, localhost or one of service.admin.allowed_hosts "
            "(a DNS name pointed here by another site is refused)",
        )
    if method in SAFE_METHODS:
        return None
    if fetch_site is not None and fetch_site.lower() not in SAME_ORIGIN_FETCH:
        return Refusal(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    same_origin = False
    if origin is not None:
        try:
            same_origin = host is not None and urlsplit(origin).netloc.lower() == host.lower()
        except ValueError:
            same_origin = False
        if not same_origin:
            return Refusal(403, f"cross-site request refused (Origin {origin!r} is not this service)")
    if content_type == JSON_TYPE:
        return None
    if content_type in FORM_TYPES:
        if same_origin:
            return None  # the console's forms; each also carries its session's CSRF token
        return Refusal(403, "a form is accepted only from this service's own pages (no matching Origin)")
    return Refusal(415, "state changes take a JSON body (Content-Type: application/json)")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_guard(allowed_hosts: Iterable[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware that applies `refusal` to every request of the admin port."""
    allowed = frozenset(name.lower().removesuffix(".") for name in allowed_hosts)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        # Browsers send Origin on state changes; Referer stands in for an older one that does not.
        origin = headers.get("Origin") or headers.get("Referer")
        refused = refusal(
            request.method,
            headers.get("Host"),
            origin,
            headers.get("Sec-Fetch-Site"),
            request.content_type if headers.get("Content-Type") else "",
            allowed,
        )
        if refused is not None:
            return web.json_response({"error": refused.message}, status=refused.status)
        return await handler(request)

    return guard


# -- wrong-token throttle -------------------------------------------------------------------------


class Throttle:
    """Wrong tokens per client: the first `free` are answered at once, then each further attempt must
    wait 2**k seconds (k = wrong tokens past `free`, up to `max_delay`) after the last wrong one.
    A client forgotten after `forget_after` quiet seconds starts afresh; at most `max_clients` are
    remembered (the quietest forgotten first). `now` is passed in: a plain, clock-free core."""

    def __init__(
        self, free: int = 5, max_delay: float = 60.0, forget_after: float = 900.0, max_clients: int = 10_000
    ) -> None:
        self.free = free
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_clients = max_clients
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def wait(self, client: str, now: float) -> float:
        """Seconds until `client` may try a token again (0: now)."""
        found = self._failures.get(client)
        if found is None:
            return 0.0
        count, last = found
        if now - last > self.forget_after:
            del self._failures[client]
            return 0.0
        if count < self.free:
            return 0.0
        return max(0.0, last + min(self.max_delay, 2.0 ** (count - self.free)) - now)

    def failed(self, client: str, now: float) -> None:
        count, _ = self._failures.pop(client, (0, now))
        self._failures[client] = (count + 1, now)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class TooManyAttempts(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many wrong tokens: try again in {math.ceil(retry_after)} s")
        self.retry_after = math.ceil(retry_after)


class AdminAuth:
    """The admin token in force (None: loopback-only mutations) and the throttle on wrong ones."""

    def __init__(
        self, token: str | None, metrics: Registry | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.token = token
        self.throttle = Throttle()
        self._clock = clock
        self._refused = (metrics or Registry()).metric("agentopz_admin_auth_refused_total")
        for reason in REFUSAL_REASONS:
            self._refused.series((reason,))

    @classmethod
    def from_config(cls, config: TokenConfig | None, metrics: Registry) -> AdminAuth:
        return cls(config.secret("service.admin.auth") if config is not None else None, metrics)

    def attempt(self, client: str, presented: str | None) -> bool:
        """Whether `presented` is the admin token; TooManyAttempts while `client` must wait."""
        assert self.token is not None
        now = self._clock()
        delay = self.throttle.wait(client, now)
        if delay > 0:
            self._refused.series((THROTTLED,)).value += 1
            raise TooManyAttempts(delay)
        if token_matches(presented, self.token):
            self.throttle.succeeded(client)
            return True
        self.throttle.failed(client, now)
        self._refused.series((WRONG_TOKEN,)).value += 1
        return False

    def allows(self, request: web.Request) -> bool:
        """Whether `request` presents the admin token; without a configured token, whether it is local."""
        if self.token is None:
            return is_loopback(request)
        return self.attempt(request.remote or "", bearer_token(request))

    def check(self, request: web.Request) -> None:
        try:
            if self.allows(request):
                return
        except TooManyAttempts as error:
            raise _json_error(web.HTTPTooManyRequests, str(error), {"Retry-After": str(error.retry_after)}) from None
        if self.token is None:
            raise _json_error(
                web.HTTPForbidden,
                "no admin token is configured (service.admin.auth): mutations are accepted from loopback only",
            )
        raise _json_error(
            web.HTTPUnauthorized,
            "this needs the admin token as 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="agentopz-admin"'},
        )


ADMIN_AUTH = web.AppKey("agentopz_admin_auth", AdminAuth)


def _json_error(
    kind: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json", headers=headers)


def require_admin(request: web.Request) -> None:
    """Raise 401 (token missing or wrong), 429 (too many wrong tokens) or 403 (no token configured, not
    from loopback) unless allowed."""
    request.app[ADMIN_AUTH].check(request)
