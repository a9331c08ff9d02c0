"""Bearer tokens: one config shape (inline or in a file) and one check, shared by the OTLP receiver,
the admin port's mutations and flag evaluation."""

from __future__ import annotations

import hmac
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator


class TokenConfig(BaseModel):
    """`token`, or `token_file` (its content without surrounding whitespace, read at start-up)."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token or token_file")
        return self

    def secret(self, what: str) -> str:
        """The token; OSError naming `what` (the config key) if its file cannot be used."""
        if self.token is not None:
            return self.token.get_secret_value()
        assert self.token_file is not None
        return read_secret(self.token_file, what, "token_file")


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


def bearer_credentials(header: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header value, else None."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":  # RFC 7235: the scheme is case-insensitive
        return None
    return credentials.strip() or None


def token_matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())
