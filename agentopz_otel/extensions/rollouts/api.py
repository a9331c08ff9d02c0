"""Admin HTTP API of the rollouts extension, OFREP evaluation and the flagd sync endpoint (admin port),
and the extension's factory, which serves them.

Reads are open like /metrics; every mutation needs the admin token (`admin_auth.require_admin`) and a
JSON body, which also keeps a cross-site form post from a browser from reaching it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from ...admin_auth import require_admin
from ...components import Context, Factory
from ...httpserver import read_limited
from .extension import MAX_ACTOR_LENGTH, RolloutsConfig, RolloutsExtension
from .model import ACTIONS, MAX_STEPS, MODEL, TOOL, RolloutError
from .ofrep import bulk_response, dumps, etag_matches, single_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACTOR_HEADER = "X-Agentopz-Actor"
MAX_EVALUATION_BODY = 65_536


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class DefineAgentBody(_Body):
    versions: dict[str, Any]
    baseline: str


class DisableBody(_Body):
    reason: str = Field(min_length=1, max_length=2000)
    fallback: str | None = None


class ToolBody(_Body):
    enabled: StrictBool


class ModelBody(_Body):
    fallback: StrictStr


class StartRolloutBody(_Body):
    agent: str
    candidate: str
    steps: list[int] = Field(min_length=1, max_length=MAX_STEPS)
    analysis: dict[str, Any] | None = None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(body), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _actor(request: web.Request) -> str:
    actor = "".join(ch for ch in request.headers.get(ACTOR_HEADER, "") if ch.isprintable()).strip()
    return actor[:MAX_ACTOR_LENGTH] or "user"


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    if request.content_type != "application/json":
        raise RolloutError("send the body as JSON (Content-Type: application/json)", 415)
    try:
        document = json.loads(await request.read() or b"{}")
    except (ValueError, RecursionError) as error:
        raise RolloutError(f"the body is not valid JSON: {error}") from None
    try:
        return model.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'body'}: "
            f"{'unknown field' if item['type'] == 'extra_forbidden' else item['msg']}"
            for item in error.errors()
        )
        raise RolloutError(problems) from None


def _guarded(handler: Handler, mutation: bool) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        if mutation:
            require_admin(request)
        try:
            return await handler(request)
        except RolloutError as error:
            return _error(error.status, error.message)

    return run


def admin_routes(rollouts: RolloutsExtension) -> list[tuple[str, str, Handler]]:
    def agent_view(agent: str) -> dict[str, Any]:
        rollout = rollouts.rollout(agent)
        return {
            **rollouts.agent(agent).to_dict(),
            "state": rollouts.state(agent),
            "rollout": None if rollout is None else rollouts.view(rollout),
        }

    async def list_agents(request: web.Request) -> web.Response:
        return _json({"agents": [agent_view(flag.agent) for flag in rollouts.agents()]})

    async def define_agent(request: web.Request) -> web.Response:
        body = await _body(request, DefineAgentBody)
        agent = request.match_info["agent"]
        rollouts.define_agent(agent, body.versions, body.baseline, actor=_actor(request), reason=body.reason)
        return _json(agent_view(agent))

    async def disable(request: web.Request) -> web.Response:
        body = await _body(request, DisableBody)
        agent = request.match_info["agent"]
        rollouts.disable(agent, actor=_actor(request), reason=body.reason, fallback=body.fallback)
        return _json(agent_view(agent))

    async def enable(request: web.Request) -> web.Response:
        body = await _body(request, _Body)
        agent = request.match_info["agent"]
        rollouts.enable(agent, actor=_actor(request), reason=body.reason)
        return _json(agent_view(agent))

    async def list_routes(request: web.Request) -> web.Response:
        agent = request.query.get("agent") or None
        return _json({"routes": [component.to_dict() for component in rollouts.components(agent)]})

    async def set_tool(request: web.Request) -> web.Response:
        body = await _body(request, ToolBody)
        agent, tool = request.match_info["agent"], request.match_info["tool"]
        component = rollouts.route(agent, TOOL, tool, body.enabled, actor=_actor(request), reason=body.reason)
        return _json(component.to_dict())

    async def set_model(request: web.Request) -> web.Response:
        body = await _body(request, ModelBody)
        agent = request.match_info["agent"]
        component = rollouts.route(agent, MODEL, "", body.fallback, actor=_actor(request), reason=body.reason)
        return _json(component.to_dict())

    async def clear(request: web.Request) -> web.Response:
        body = await _body(request, _Body)
        agent, tool = request.match_info["agent"], request.match_info.get("tool", "")
        kind = TOOL if tool else MODEL
        removed = rollouts.clear_route(agent, kind, tool, actor=_actor(request), reason=body.reason)
        return _json({"removed": None if removed is None else removed.to_dict()})

    async def start_rollout(request: web.Request) -> web.Response:
        body = await _body(request, StartRolloutBody)
        rollout = rollouts.start_rollout(
            body.agent, body.candidate, body.steps, actor=_actor(request), reason=body.reason, analysis=body.analysis
        )
        return _json(rollout.to_dict(), 201)

    async def list_rollouts(request: web.Request) -> web.Response:
        found = [rollout for flag in rollouts.agents() if (rollout := rollouts.rollout(flag.agent)) is not None]
        return _json({"rollouts": [rollouts.view(rollout) for rollout in found]})

    async def get_rollout(request: web.Request) -> web.Response:
        agent = request.match_info["agent"]
        rollouts.agent(agent)
        rollout = rollouts.rollout(agent)
        if rollout is None:
            return _error(404, f"agent {agent!r} has no rollout")
        return _json(rollouts.view(rollout))

    async def act(request: web.Request) -> web.Response:
        body = await _body(request, _Body)
        action = request.match_info["action"]
        rollout = rollouts.act(
            request.match_info["agent"], action, actor=_actor(request), actor_kind="user", reason=body.reason
        )
        return _json(rollout.to_dict())

    async def history(request: web.Request) -> web.Response:
        agent = request.query.get("agent") or None
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _error(400, "limit must be a whole number")
        if agent is not None and not rollouts.components(agent):
            rollouts.agent(agent)  # 404 for a name with neither a flag nor component flags
        return _json({"entries": [entry.to_dict() for entry in rollouts.history(agent, limit)]})

    async def flagd_flags(request: web.Request) -> web.Response:
        refused = rollouts.evaluation_allowed(request)
        if refused is not None:
            return web.Response(status=refused)
        headers = {"ETag": rollouts.flagd_etag, "Cache-Control": "no-cache"}
        if etag_matches(request.headers.get("If-None-Match"), rollouts.flagd_etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=rollouts.flagd_body, content_type="application/json", headers=headers)

    async def evaluation_body(request: web.Request) -> bytes | web.Response:
        refused = rollouts.evaluation_allowed(request)
        if refused is not None:
            return web.Response(status=refused)
        body = await read_limited(request, MAX_EVALUATION_BODY)
        if body is None:
            return _json({"errorCode": "PARSE_ERROR", "errorDetails": "request body too large"}, 400)
        return body

    async def evaluate_flag(request: web.Request) -> web.Response:
        body = await evaluation_body(request)
        if isinstance(body, web.Response):
            return body
        return single_response(rollouts.snapshot, request.match_info["key"], body)

    async def evaluate_flags(request: web.Request) -> web.Response:
        body = await evaluation_body(request)
        if isinstance(body, web.Response):
            return body
        return bulk_response(rollouts.snapshot, body, request.headers.get("If-None-Match"))

    action_pattern = "{action:" + "|".join(ACTIONS) + "}"
    routes: list[tuple[str, str, Handler, bool]] = [
        ("GET", "/api/v1/agents", list_agents, False),
        ("PUT", "/api/v1/agents/{agent}", define_agent, True),
        ("POST", "/api/v1/agents/{agent}/disable", disable, True),
        ("POST", "/api/v1/agents/{agent}/enable", enable, True),
        ("POST", "/api/v1/rollouts", start_rollout, True),
        ("GET", "/api/v1/rollouts", list_rollouts, False),
        ("GET", "/api/v1/rollouts/{agent}", get_rollout, False),
        ("POST", f"/api/v1/rollouts/{{agent}}/{action_pattern}", act, True),
        ("GET", "/api/v1/routes", list_routes, False),
        ("PUT", "/api/v1/routes/{agent}/tools/{tool}", set_tool, True),
        ("DELETE", "/api/v1/routes/{agent}/tools/{tool}", clear, True),
        ("PUT", "/api/v1/routes/{agent}/model", set_model, True),
        ("DELETE", "/api/v1/routes/{agent}/model", clear, True),
        ("GET", "/api/v1/history", history, False),
        ("GET", "/api/v1/flagd/flags.json", flagd_flags, False),
    ]
    guarded = [(method, path, _guarded(handler, mutation)) for method, path, handler, mutation in routes]
    return [
        *guarded,
        ("POST", "/ofrep/v1/evaluate/flags/{key}", evaluate_flag),
        ("POST", "/ofrep/v1/evaluate/flags", evaluate_flags),
    ]


def _create(component_id: str, config: RolloutsConfig, context: Context) -> RolloutsExtension:
    rollouts = RolloutsExtension(component_id, config, context)
    context.admin_routes.extend(admin_routes(rollouts))
    return rollouts


FACTORY = Factory(type="rollouts", kind="extension", config_type=RolloutsConfig, create=_create)
