"""host:port endpoints as written in config."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, separator, port_text = endpoint.rpartition(":")
    if not separator or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"endpoint {endpoint!r} must be host:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def check_endpoint(endpoint: str) -> str:
    parse_endpoint(endpoint)
    return endpoint


Endpoint = Annotated[str, AfterValidator(check_endpoint)]
