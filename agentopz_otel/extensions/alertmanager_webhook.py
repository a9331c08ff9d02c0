"""The `alertmanager_webhook` extension: Alertmanager notifications in, rollout actions out.

`POST /api/v1/alertmanager` (admin port) takes Alertmanager's webhook JSON (version 4). A firing alert
whose labels name an agent (`agent`) and the candidate (`prompt_version`) of that agent's active
rollout acts on the rollout: the shipped `PromptVersion*Regression` alerts roll it back, and any
alert with the label `agentopz_action: rollback|pause|disable` does that. An alert labelled
`agentopz_action: fallback_model` that names an agent and the model to use (label or annotation
`agentopz_fallback_model`) sets the agent's `<agent>.model` component flag to that model, with or
without a rollout. It never acts on an alert
naming the baseline or another version, on resolved alerts, on agents without an active rollout, or
on an alert that began firing before the rollout started (it is about the previous one). A rollout
the canary analysis watches has one false-rollback budget, spent by the analysis's guards: the
regression alerts (`rollback_alerts`) do not roll it back (`defer_to_analysis`), since each would
spend a false-alarm rate of its own on top; an explicit `agentopz_action` label still acts. Each
firing (fingerprint and start time) acts at most once, however often Alertmanager repeats it; the
fingerprints are remembered up to `max_remembered_alerts`, and the rollouts extension turns a
second rollback into a no-op even past that.

Auth: the bearer token of `auth` (`token` or `token_file`); without one, the admin token
(`service.admin.auth`), which without a configured token means loopback only.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from .. import catalogue
from ..admin_auth import JSON_TYPE, TokenConfig, bearer_token, require_admin, token_matches
from ..components import Context, Factory
from ..httpserver import read_limited
from .rollouts import Rollout, RolloutError, RolloutsExtension
from .rollouts.extension import MAX_ACTOR_LENGTH, MAX_REASON_LENGTH
from .rollouts.model import MODEL

log = logging.getLogger("agentopz_otel.alertmanager_webhook")

ACTOR_KIND = "alert"
ACTION_LABEL = "agentopz_action"
LABEL_ACTIONS = ("rollback", "pause", "disable", "fallback_model")
FALLBACK_MODEL = "fallback_model"
# The label (or annotation) of a fallback_model alert naming the model the agent should use.
FALLBACK_MODEL_KEY = "agentopz_fallback_model"
OUTCOMES = catalogue.enum("webhook_outcome")
MAX_EVIDENCE_VALUE = 1000


class AlertmanagerWebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The rollouts extension the actions go to.
    rollouts: str = "rollouts"
    path: str = Field(default="/api/v1/alertmanager", pattern=r"^/[^\s?#]*$")
    # The token Alertmanager presents (http_config.authorization); none: the admin token.
    auth: TokenConfig | None = None
    # Alerts that roll back the candidate they name, without an agentopz_action label.
    rollback_alerts: list[str] = Field(
        default_factory=lambda: [
            "PromptVersionQualityRegression",
            "PromptVersionCostRegression",
            "PromptVersionLatencyRegression",
        ]
    )
    # Rollouts under canary analysis are left to it by the rollback_alerts (one false-rollback budget).
    defer_to_analysis: bool = True
    max_remembered_alerts: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 20)


class AlertmanagerWebhookExtension:
    def __init__(self, component_id: str, config: AlertmanagerWebhookConfig, context: Context) -> None:
        self.id = component_id
        self.config = config
        self._context = context
        self._rollouts: RolloutsExtension | None = None
        self._token: str | None = None
        # (fingerprint, startsAt) of the firings acted on, oldest first.
        self._acted: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._alerts = context.metrics.metric("agentopz_alertmanager_webhook_alerts_total")
        for outcome in OUTCOMES:
            self._alerts.series((outcome,))
        context.admin_routes.append(("POST", config.path, self._handle))

    async def start(self) -> None:
        self._rollouts = self._context.extension(self.config.rollouts, RolloutsExtension, asked_by=self.id)
        if self.config.auth is not None:
            self._token = self.config.auth.secret(f"extensions.{self.id}.auth")

    async def shutdown(self, timeout: float) -> None:
        """Nothing to flush: every action is committed by the rollouts extension when it is taken."""

    def _authorize(self, request: web.Request) -> None:
        if self._token is None:
            require_admin(request)
        elif not token_matches(bearer_token(request), self._token):
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "this needs the webhook token as 'Authorization: Bearer <token>'"}),
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="agentopz-alertmanager-webhook"'},
            )

    async def _handle(self, request: web.Request) -> web.Response:
        self._authorize(request)
        # Alertmanager sends JSON; anything else (a text/plain "simple" request a web page can send
        # cross-site without a preflight, a form) is refused before it is read.
        if request.content_type != JSON_TYPE:
            return _error(415, "send the notification as JSON (Content-Type: application/json)")
        body = await read_limited(request, self.config.max_body_bytes)
        if body is None:
            return _error(413, f"the notification is larger than {self.config.max_body_bytes} bytes")
        try:
            notification = json.loads(body)
        except (ValueError, RecursionError):
            return _error(400, "the notification is not JSON (Alertmanager webhook version 4 expected)")
        alerts = notification.get("alerts") if isinstance(notification, dict) else None
        if not isinstance(alerts, list) or not all(isinstance(alert, dict) for alert in alerts):
            return _error(400, "the notification has no list of alerts (Alertmanager webhook version 4 expected)")
        results = [self._alert(alert) for alert in alerts]
        for result in results:
            self._alerts.series((result["outcome"],)).value += 1
        return web.json_response({"results": results})

    def _alert(self, alert: dict[str, Any]) -> dict[str, Any]:
        labels = _strings(alert.get("labels"))
        annotations = _strings(alert.get("annotations"))
        alertname = labels.get("alertname", "")
        agent, version = labels.get("agent"), labels.get("prompt_version")
        result: dict[str, Any] = {
            "alertname": alertname,
            "fingerprint": alert.get("fingerprint"),
            "agent": agent,
            "prompt_version": version,
        }

        def outcome(name: str, reason: str, **more: Any) -> dict[str, Any]:
            return {**result, "outcome": name, "reason": reason, **more}

        if alert.get("status") != "firing":
            return outcome("ignored", "not firing")
        fingerprint, starts_at = str(alert.get("fingerprint") or ""), str(alert.get("startsAt") or "")
        if not fingerprint:
            return outcome("ignored", "the alert has no fingerprint")
        key = (fingerprint, starts_at)
        if key in self._acted:
            return outcome("repeated", "acted on this firing before")
        labelled = labels.get(ACTION_LABEL)
        action = labelled or ("rollback" if alertname in self.config.rollback_alerts else None)
        if action is None:
            return outcome("ignored", f"neither a rollback alert nor labelled {ACTION_LABEL}")
        if action not in LABEL_ACTIONS:
            return outcome("ignored", f"{ACTION_LABEL} {action!r} is not one of {', '.join(LABEL_ACTIONS)}")
        assert self._rollouts is not None
        reason = f"alert {alertname}: {annotations.get('summary') or 'firing'}"[:MAX_REASON_LENGTH]
        actor = alertname[:MAX_ACTOR_LENGTH] or "alertmanager"
        evidence = {
            "alert": {
                "fingerprint": fingerprint,
                "startsAt": starts_at,
                "labels": labels,
                "annotations": annotations,
                "generatorURL": str(alert.get("generatorURL") or "")[:MAX_EVIDENCE_VALUE],
            }
        }
        if action == FALLBACK_MODEL:
            model = labels.get(FALLBACK_MODEL_KEY) or annotations.get(FALLBACK_MODEL_KEY)
            if not agent or not model:
                return outcome("ignored", f"a fallback_model alert needs the labels agent and {FALLBACK_MODEL_KEY}")
            try:
                self._rollouts.route(
                    agent, MODEL, "", model, actor=actor, actor_kind=ACTOR_KIND, reason=reason, evidence=evidence
                )
            except RolloutError as error:
                log.warning(
                    "alertmanager webhook: fallback of %s to %s on alert %s refused: %s", agent, model, alertname, error
                )
                return outcome("failed", error.message, action=action)
            self._remember(key)
            log.info("alertmanager webhook: %s falls back to model %s on alert %s", agent, model, alertname)
            return outcome("acted", reason, action=action, model=model)
        if not agent or not version:
            return outcome("ignored", "the alert names no agent and prompt_version")
        rollout = self._rollouts.rollout(agent)
        if rollout is None or not rollout.active:
            return outcome("ignored", f"agent {agent!r} has no active rollout")
        if version != rollout.candidate:
            role = "the baseline" if version == rollout.baseline else "not the candidate"
            return outcome("ignored", f"{version!r} is {role} of the rollout of {agent!r} ({rollout.candidate!r})")
        if _before(starts_at, rollout):
            return outcome("ignored", "the alert began firing before the rollout started")
        if not labelled and self.config.defer_to_analysis and rollout.analysis.get("enabled"):
            return outcome(
                "ignored",
                "the canary analysis decides this rollout within its false-rollback budget (defer_to_analysis)",
            )
        try:
            if action == "disable":
                self._rollouts.disable(agent, actor=actor, actor_kind=ACTOR_KIND, reason=reason)
            else:
                self._rollouts.act(agent, action, actor=actor, actor_kind=ACTOR_KIND, reason=reason, evidence=evidence)
        except RolloutError as error:
            log.warning("alertmanager webhook: %s of %s on alert %s refused: %s", action, agent, alertname, error)
            return outcome("failed", error.message, action=action)
        self._remember(key)
        log.info("alertmanager webhook: %s of %s (%s) on alert %s", action, agent, version, alertname)
        return outcome("acted", reason, action=action)

    def _remember(self, key: tuple[str, str]) -> None:
        self._acted[key] = None
        while len(self._acted) > self.config.max_remembered_alerts:
            self._acted.popitem(last=False)


def _strings(value: Any) -> dict[str, str]:
    """A label or annotation map as strings, each value cut to MAX_EVIDENCE_VALUE characters."""
    if not isinstance(value, dict):
        return {}
    return {str(key)[:MAX_EVIDENCE_VALUE]: str(item)[:MAX_EVIDENCE_VALUE] for key, item in value.items()}


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _before(starts_at: str, rollout: Rollout) -> bool:
    """Whether an alert's startsAt (RFC 3339, nanoseconds) is before the rollout started; False if unreadable."""
    found = _RFC3339.match(starts_at)
    if found is None:
        return False
    seconds, fraction, zone = found.groups()
    started = datetime.fromisoformat(seconds + ("+00:00" if zone == "Z" else zone)).timestamp()
    return started + float("0." + (fraction or "0")) < rollout.started_at


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _create(component_id: str, config: AlertmanagerWebhookConfig, context: Context) -> AlertmanagerWebhookExtension:
    return AlertmanagerWebhookExtension(component_id, config, context)


FACTORY = Factory(type="alertmanager_webhook", kind="extension", config_type=AlertmanagerWebhookConfig, create=_create)
