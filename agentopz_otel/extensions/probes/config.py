"""Configuration of the `probes` extension: which agents to probe, how, and what counts as an answer."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.ext import parse as parse_json_path
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...bearer import read_secret


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HeaderFromEnv(_Strict):
    env: str = Field(min_length=1, description="the header value is this environment variable's, read at start")


class HeaderFromFile(_Strict):
    file: Path = Field(description="the header value is this file's content without surrounding whitespace")


DEFAULT_TIMEOUT_SECONDS = 10.0
HeaderValue = str | HeaderFromEnv | HeaderFromFile


def header_value(name: str, value: HeaderValue, what: str) -> str:
    """The value to send for header `name`; OSError naming the config key `what` when it cannot be
    read or cannot be sent (a line break would end the header)."""
    key = f"{what}.headers.{name}"
    if isinstance(value, str):
        found = value
    elif isinstance(value, HeaderFromEnv):
        found = os.environ.get(value.env, "")
        if not found:
            raise OSError(f"{key}: environment variable {value.env} is not set or empty")
    else:
        found = read_secret(value.file, key, "file")
    if "\r" in found or "\n" in found:
        raise OSError(f"{key}: the value has a line break, which cannot be sent in a header")
    return found


class Expect(_Strict):
    """What a good answer is. Every check given must hold."""

    status: list[int] = Field(default_factory=lambda: [200], min_length=1, description="accepted HTTP statuses")
    # A JSONPath (jsonpath-ng's extended syntax, e.g. `$.status`) that must find a value in the JSON
    # answer; with `json_value`, one found value must equal it.
    json_path: str | None = None
    json_value: Any = None
    # A regex (Python syntax) that must match somewhere in the answer's text.
    regex: str | None = None

    @field_validator("status")
    @classmethod
    def _statuses(cls, statuses: list[int]) -> list[int]:
        for status in statuses:
            if not 100 <= status <= 599:
                raise ValueError(f"{status} is not an HTTP status (100 to 599)")
        return statuses

    @field_validator("json_path")
    @classmethod
    def _json_path(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_json_path(value)
            except JSONPathError as error:
                raise ValueError(f"{value!r} is not a JSONPath: {error}") from None
        return value

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"{value!r} is not a valid regex: {error}") from None
        return value

    @model_validator(mode="after")
    def _value_needs_path(self) -> Expect:
        if self.json_value is not None and self.json_path is None:
            raise ValueError("json_value needs json_path")
        return self

    def compiled_json_path(self) -> JSONPath | None:
        return None if self.json_path is None else parse_json_path(self.json_path)

    def compiled_regex(self) -> re.Pattern[str] | None:
        return None if self.regex is None else re.compile(self.regex)


class ProbeConfig(_Strict):
    # The agent this probe stands for: the `agent` label of its metrics (one probe per agent).
    agent: str = Field(min_length=1, max_length=128)
    url: str = Field(pattern=r"^https?://[^\s/?#]+[^\s]*$", description="http:// or https:// URL")
    method: Literal["GET", "POST", "PUT", "PATCH", "HEAD", "OPTIONS"] = "GET"
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    body: str | None = Field(default=None, max_length=1 << 20)
    interval_seconds: float = Field(default=60.0, ge=1)
    # Unset: 10 seconds, or interval_seconds when that is shorter.
    timeout_seconds: float | None = Field(default=None, gt=0, le=300)
    expect: Expect = Field(default_factory=Expect)
    # Seconds to wait, after the answer, for the run the probe started (the run whose trace id the
    # probe sent in `traceparent`) to finish; the probe succeeds only if it finishes with outcome
    # success. Unset: the answer alone decides (for an agent whose telemetry does not reach us).
    run_wait_seconds: float | None = Field(default=None, gt=0, le=3600)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, HeaderValue]) -> dict[str, HeaderValue]:
        for name in headers:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() == "traceparent":
                raise ValueError("traceparent is set by the probe (a fresh trace id each time)")
        return headers

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> ProbeConfig:
        if self.timeout_seconds is not None and self.timeout_seconds > self.interval_seconds:
            raise ValueError("timeout_seconds must not exceed interval_seconds")
        return self

    @property
    def timeout(self) -> float:
        """Seconds a probe may take, so one probe of an agent is in flight at a time."""
        return self.timeout_seconds or min(DEFAULT_TIMEOUT_SECONDS, self.interval_seconds)


class ProbesConfig(_Strict):
    probes: list[ProbeConfig] = Field(default_factory=list, max_length=1000)
    # Bytes of an answer read for the checks; a longer answer fails with reason body_too_large when
    # a check needs its body (json_path, regex).
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 << 20)
    # Probes sending at the same time; the others wait for a slot.
    max_concurrency: int = Field(default=10, ge=1, le=1000)
    # Probes waiting for their run at once; past it the oldest is decided as run_missing.
    max_pending_runs: int = Field(default=10_000, ge=1)
    # Seconds a probe's trace id is remembered after its answer (at least run_wait_seconds), so
    # the run it started counts as a probe's, not an organic run, even when it finishes late
    # (the runs processor abandons a run after abandon_after_seconds, 300 by default).
    remember_seconds: float = Field(default=900.0, gt=0, le=86400)
    # Seconds between two checks for probes whose run did not arrive in time.
    tick_seconds: float = Field(default=1.0, gt=0, le=60)

    @field_validator("probes")
    @classmethod
    def _one_per_agent(cls, probes: list[ProbeConfig]) -> list[ProbeConfig]:
        seen: set[str] = set()
        for probe in probes:
            if probe.agent in seen:
                raise ValueError(f"agent {probe.agent!r} has two probes; give each agent one")
            seen.add(probe.agent)
        return probes
