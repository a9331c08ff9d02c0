"""Bearer-token auth for the admin port's mutating routes (rollout commands, console actions, webhooks).

`service.admin.auth` holds the admin token (`token`, or `token_file` read at start-up), separate from
any OTLP token. With a token configured every mutation must present it; with none, mutations are
accepted from loopback only, so a service bound to a network address is never silently open.
"""

from __future__ import annotations

import ipaddress
import json

from aiohttp import web

from .bearer import TokenConfig, bearer_credentials, token_matches

__all__ = ["ADMIN_AUTH", "AdminAuth", "TokenConfig", "bearer_token", "is_loopback", "require_admin", "token_matches"]


def bearer_token(request: web.Request) -> str | None:
    """The request's `Authorization: Bearer ...` credentials, else None."""
    return bearer_credentials(request.headers.get("Authorization"))


def is_loopback(request: web.Request) -> bool:
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote.split("%", 1)[0]).is_loopback
    except ValueError:  # a Unix socket or an unparsable peer: not provably local
        return False


class AdminAuth:
    """The admin token in force (None: loopback-only mutations)."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    @classmethod
    def from_config(cls, config: TokenConfig | None) -> AdminAuth:
        return cls(config.secret("service.admin.auth") if config is not None else None)

    def allows(self, request: web.Request) -> bool:
        """Whether `request` presents the admin token; without a configured token, whether it is local."""
        if self.token is None:
            return is_loopback(request)
        return token_matches(bearer_token(request), self.token)

    def check(self, request: web.Request) -> None:
        if self.allows(request):
            return
        if self.token is None:
            raise _json_error(
                web.HTTPForbidden,
                "no admin token is configured (service.admin.auth): mutations are accepted from loopback only",
            )
        error = _json_error(web.HTTPUnauthorized, "this needs the admin token as 'Authorization: Bearer <token>'")
        error.headers["WWW-Authenticate"] = 'Bearer realm="agentopz-admin"'
        raise error


ADMIN_AUTH = web.AppKey("agentopz_admin_auth", AdminAuth)


def _json_error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json")


def require_admin(request: web.Request) -> None:
    """Raise 401 (token missing or wrong) or 403 (no token configured, not from loopback) unless allowed."""
    request.app[ADMIN_AUTH].check(request)
