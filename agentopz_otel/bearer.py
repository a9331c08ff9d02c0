"""Bearer tokens: one config shape (inline or in a file) and one check, shared by the OTLP receiver,
the admin port's mutations, flag evaluation and the console's session and CSRF tokens."""

from __future__ import annotations

import hmac
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

# Shorter tokens are refused at start-up: 32 characters are out of reach of any online guessing,
# whatever the alphabet, so the sign-in throttle is a second line rather than the only one.
MIN_TOKEN_CHARS = 32


class TokenConfig(BaseModel):
    """`token`, or `token_file` (its content without surrounding whitespace, read at start-up)."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token or token_file")
        if self.token is not None:
            _check_length(self.token.get_secret_value(), "token")
        return self

    def secret(self, what: str) -> str:
        """The token; OSError naming `what` (the config key) if its file cannot be used."""
        if self.token is not None:
            return self.token.get_secret_value()
        assert self.token_file is not None
        token = read_secret(self.token_file, what, "token_file")
        try:
            _check_length(token, f"token_file {self.token_file}")
        except ValueError as error:
            raise OSError(f"{what}: {error}") from None
        return token


def read_secret(path: Path, what: str, key: str) -> str:
    """The content of the secret file `path` without surrounding whitespace; OSError naming the config
    key (`what`, and `key`, the file's setting) when it cannot be read or is empty."""
    try:
        secret = path.read_text().strip()
    except OSError as error:
        raise OSError(f"{what}: cannot read {key} {path}: {error.strerror}") from None
    if not secret:
        raise OSError(f"{what}: {key} {path} is empty")
    return secret


def _check_length(token: str, what: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"{what} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(e.g. the output of `openssl rand -hex 32`)"
        )


def bearer_credentials(header: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header value, else None."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":  # RFC 7235: the scheme is case-insensitive
        return None
    return credentials.strip() or None


def token_matches(presented: str | None, expected: str) -> bool:
    """A constant-time comparison of the UTF-8 bytes. Text that is not valid Unicode (header bytes
    decoded with surrogateescape, a form field with lone surrogates) is a mismatch, never an error."""
    if presented is None:
        return False
    try:
        presented_bytes = presented.encode()
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(presented_bytes, expected.encode())
