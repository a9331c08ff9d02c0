"""Rollout test helpers: a service config with storage and rollouts, and a small admin API client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Admin:
    url: str
    token: str | None = None
    actor: str | None = None

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        sent = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        if self.actor is not None:
            sent["X-Agentopz-Actor"] = self.actor
        request = urllib.request.Request(self.url + path, data=data, headers=sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Reply(response.status, _decode(response.read()), dict(response.headers))
        except urllib.error.HTTPError as error:
            return Reply(error.code, _decode(error.read()), dict(error.headers))

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = self.call(method, path, body)
        assert reply.status in (200, 201), (reply.status, reply.body)
        return reply.body

    def define(self, agent: str, versions: dict[str, Any], baseline: str) -> Any:
        return self.ok("PUT", f"/api/v1/agents/{agent}", {"versions": versions, "baseline": baseline})

    def start(self, agent: str, candidate: str, steps: list[int], **extra: Any) -> Any:
        return self.ok("POST", "/api/v1/rollouts", {"agent": agent, "candidate": candidate, "steps": steps, **extra})

    def act(self, agent: str, action: str, reason: str = "") -> Any:
        return self.ok("POST", f"/api/v1/rollouts/{agent}/{action}", {"reason": reason})

    def evaluate(self, flag: str, targeting_key: str | None = None) -> Reply:
        context = {} if targeting_key is None else {"targetingKey": targeting_key}
        return self.call("POST", f"/ofrep/v1/evaluate/flags/{flag}", {"context": context})


def _decode(payload: bytes) -> Any:
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")
