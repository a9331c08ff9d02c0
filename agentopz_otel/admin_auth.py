"""Bearer-token auth for the admin port's mutating routes (rollout commands, console actions, webhooks).

`service.admin.auth` holds the admin token (`token`, or `token_file` read at start-up), separate from
any OTLP token. With a token configured every mutation must present it; with none, mutations are
accepted from loopback only, so a service bound to a network address is never silently open.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator


class TokenConfig(BaseModel):
    """A bearer token given inline or in a file (the file's content, stripped of surrounding whitespace)."""

    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(default=None, min_length=1)
    token_file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give either token or token_file, not both")
        return self

    def load(self, what: str) -> str | None:
        """The token, reading `token_file` now; OSError with a clear message if it cannot be used."""
        if self.token_file is None:
            return self.token
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as error:
            raise OSError(f"{what}: cannot read token_file {self.token_file}: {error.strerror}") from None
        if not token:
            raise OSError(f"{what}: token_file {self.token_file} is empty")
        return token


def bearer_token(request: web.Request) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header (scheme case-insensitive), else None."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def token_matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


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
        return cls(config.load("service.admin.auth") if config is not None else None)

    def allows(self, request: web.Request) -> bool:
        """Whether `request` presents the admin token; without a configured token, whether it is local."""
        if self.token is None:
            return is_loopback(request)
        return token_matches(bearer_token(request), self.token)

    def check(self, request: web.Request) -> None:
        if self.token is None:
            if not is_loopback(request):
                raise _json_error(
                    web.HTTPForbidden,
                    "no admin token is configured (service.admin.auth): mutations are accepted from loopback only",
                )
            return
        if not token_matches(bearer_token(request), self.token):
            error = _json_error(web.HTTPUnauthorized, "this needs the admin token as 'Authorization: Bearer <token>'")
            error.headers["WWW-Authenticate"] = 'Bearer realm="agentopz-admin"'
            raise error


ADMIN_AUTH = web.AppKey("agentopz_admin_auth", AdminAuth)


def _json_error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json")


def require_admin(request: web.Request) -> None:
    """Raise 401 (token missing or wrong) or 403 (no token configured, not from loopback) unless allowed."""
    request.app[ADMIN_AUTH].check(request)
