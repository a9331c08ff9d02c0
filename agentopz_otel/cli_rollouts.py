"""`agentopz-otel agent ...`, `rollout ...`, `route ...` and `flags export`: commands that talk to the admin API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9464"
TOKEN_ENV = "AGENTOPZ_ADMIN_TOKEN"


class CommandError(Exception):
    """A failed command; the message is printed as is."""


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            return open(args.token_file, encoding="utf-8").read().strip() or None
        except OSError as error:
            raise CommandError(f"cannot read --token-file {args.token_file}: {error.strerror}") from None
    return os.environ.get(TOKEN_ENV) or None


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"Accept": "application/json"}
    token = _token(args)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
        headers["X-Agentopz-Actor"] = args.actor
    url = args.url.rstrip("/") + path
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        raise CommandError(_http_error(error)) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CommandError(f"cannot reach the service at {args.url}: {reason} (is it running? see --url)") from None
    return json.loads(payload) if payload else None


def _http_error(error: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(error.read()).get("error")
    except (ValueError, AttributeError):
        message = None
    if error.code == 401:
        return f"{message or 'unauthorized'} (give --token-file or set {TOKEN_ENV})"
    return message or f"HTTP {error.code} {error.reason}"


def _parse_version(text: str) -> tuple[str, Any]:
    name, separator, value = text.partition("=")
    if not separator:
        return name, None
    try:
        return name, json.loads(value)
    except ValueError as error:
        raise CommandError(f"--version {name}: the value after '=' is not JSON ({error}); quote strings") from None


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(step) for step in text.split(",") if step.strip()]
    except ValueError:
        raise CommandError(f"--steps {text!r}: give whole percentages separated by commas, e.g. 5,25,50,100") from None


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


def _describe(agent: dict[str, Any]) -> str:
    line = f"{agent['agent']}: {agent['state']}"
    rollout = agent.get("rollout")
    if agent["disabled"]:
        fallback = agent["fallback"]
        line += f", serving {fallback!r}" if fallback else ", clients use their code default"
    elif rollout is not None and rollout["state"] in ("progressing", "paused"):
        steps = ",".join(str(step) for step in rollout["steps"])
        line += (
            f", {rollout['baseline']} {100 - rollout['weight']}% / {rollout['candidate']} {rollout['weight']}%"
            f" (step {rollout['step_index'] + 1} of {steps}, since {_when(rollout['step_started_at'])})"
        )
    else:
        line += f", serving {agent['baseline']!r} to all"
    if rollout is not None and rollout["state"] in ("rolled_back", "promoted"):
        line += f"; last rollout {rollout['baseline']} -> {rollout['candidate']} {rollout['state']}"
    return line + f"; versions: {', '.join(agent['versions'])}"


def _describe_analysis(status: dict[str, Any]) -> str:
    """The canary analysis of the agent's rollout: each guard's verdict and statistic/threshold, runs
    per version, the last decision."""
    guards = ", ".join(
        f"{name} {guard['verdict']} ({guard['statistic']:g}/{guard['threshold']:g})"
        for name, guard in status["guards"].items()
    )
    runs = ", ".join(f"{version} {count}" for version, count in status["runs"].items())
    line = f"  analysis ({status['source']}): {guards}; runs {runs}"
    if status.get("source_error"):
        line += f"; data source error: {status['source_error']}"
    if status.get("decision"):
        line += f"; {status['decision']} at {_when(status['decided_at'])}: {status['decision_reason']}"
    return line


def _print_history(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        change = f"{_summary(entry['before'])} -> {_summary(entry['after'])}"
        reason = f' "{entry["reason"]}"' if entry["reason"] else ""
        evidence = f" evidence={json.dumps(entry['evidence'])}" if entry["evidence"] else ""
        print(
            f"{_when(entry['at'])}  {entry['agent']}  {entry['action']}  by {entry['actor']} ({entry['actor_kind']})"
            f"  {change}{reason}{evidence}"
        )


def _summary(state: dict[str, Any] | None) -> str:
    if state is None:
        return "-"
    if "key" in state:
        return f"{state['key']}={json.dumps(state['value'])}"
    if "weight" in state:
        return f"{state['state']} {state['weight']}%"
    disabled = " disabled" if state.get("disabled") else ""
    return f"baseline {state['baseline']}{disabled}"


def _agent_define(args: argparse.Namespace) -> None:
    versions = dict(_parse_version(text) for text in args.version)
    body = {"versions": versions, "baseline": args.baseline, "reason": args.reason}
    print(_describe(_call(args, "PUT", f"/api/v1/agents/{_quote(args.agent)}", body)))


def _agent_disable(args: argparse.Namespace) -> None:
    body = {"reason": args.reason, "fallback": args.fallback}
    print(_describe(_call(args, "POST", f"/api/v1/agents/{_quote(args.agent)}/disable", body)))


def _agent_enable(args: argparse.Namespace) -> None:
    print(_describe(_call(args, "POST", f"/api/v1/agents/{_quote(args.agent)}/enable", {"reason": args.reason})))


def _rollout_start(args: argparse.Namespace) -> None:
    body = {"agent": args.agent, "candidate": args.candidate, "steps": _parse_steps(args.steps), "reason": args.reason}
    _call(args, "POST", "/api/v1/rollouts", body)
    _print_status(args, args.agent)


def _rollout_action(args: argparse.Namespace) -> None:
    _call(args, "POST", f"/api/v1/rollouts/{_quote(args.agent)}/{args.action}", {"reason": args.reason})
    _print_status(args, args.agent)


def _print_status(args: argparse.Namespace, agent: str | None) -> None:
    agents = _call(args, "GET", "/api/v1/agents")["agents"]
    if agent is not None:
        agents = [entry for entry in agents if entry["agent"] == agent]
        if not agents:
            raise CommandError(f"unknown agent {agent!r}")
    if not agents:
        print("no agents defined (agentopz-otel agent define AGENT --version NAME --baseline NAME)")
    for entry in agents:
        print(_describe(entry))
        analysis = (entry.get("rollout") or {}).get("analysis_status")
        if analysis:
            print(_describe_analysis(analysis))


def _rollout_status(args: argparse.Namespace) -> None:
    _print_status(args, args.agent)


def _rollout_history(args: argparse.Namespace) -> None:
    query = {"limit": str(args.limit)}
    if args.agent:
        query["agent"] = args.agent
    _print_history(_call(args, "GET", "/api/v1/history?" + urllib.parse.urlencode(query))["entries"])


def _describe_route(route: dict[str, Any]) -> str:
    if route["kind"] == "model":
        return f"{route['key']}: fall back to model {route['value']!r}"
    return f"{route['key']}: {route['variant']} ({'use' if route['value'] else 'skip'} the tool)"


def _route_path(args: argparse.Namespace) -> str:
    tool = getattr(args, "tool", None)
    base = f"/api/v1/routes/{_quote(args.agent)}"
    return f"{base}/tools/{_quote(tool)}" if tool else f"{base}/model"


def _route_tool(args: argparse.Namespace) -> None:
    body = {"enabled": args.enabled, "reason": args.reason}
    print(_describe_route(_call(args, "PUT", _route_path(args), body)))


def _route_fallback(args: argparse.Namespace) -> None:
    body = {"fallback": args.model, "reason": args.reason}
    print(_describe_route(_call(args, "PUT", _route_path(args), body)))


def _route_clear(args: argparse.Namespace) -> None:
    removed = _call(args, "DELETE", _route_path(args), {"reason": args.reason})["removed"]
    if removed is None:
        print("nothing to clear: no such component flag is set")
    else:
        print(f"{removed['key']}: cleared, clients use the default in their code")


def _route_list(args: argparse.Namespace) -> None:
    query = "?" + urllib.parse.urlencode({"agent": args.agent}) if args.agent else ""
    routes = _call(args, "GET", "/api/v1/routes" + query)["routes"]
    for route in routes:
        print(_describe_route(route))
    if not routes:
        print("no component flags set")


def _stored_flag_set(path: str) -> dict[str, Any]:
    """The flag set read straight from the service's database (read-only), for when the service is down."""
    import sqlite3

    from .extensions.rollouts.flagd import flagd_document
    from .extensions.rollouts.store import RolloutStore

    if not os.path.isfile(path):
        raise CommandError(f"--from-storage {path}: no such file")
    try:
        connection = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
        try:
            store = RolloutStore(connection, 1, 1)
            agents, rollouts = store.load()
            components = store.load_components()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise CommandError(f"--from-storage {path}: cannot read rollout state: {error}") from None
    return flagd_document(agents.values(), rollouts, components.values())


def _flags_export(args: argparse.Namespace) -> None:
    if args.from_storage:
        document = _stored_flag_set(args.from_storage)
    else:
        document = _call(args, "GET", "/api/v1/flagd/flags.json")
    text = json.dumps(document, indent=2) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _connection_arguments(parser: argparse.ArgumentParser, mutation: bool) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the service's admin address (default {DEFAULT_URL})")
    parser.add_argument("--token-file", metavar="FILE", help=f"file with the admin token (default: ${TOKEN_ENV})")
    parser.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    if mutation:
        parser.add_argument(
            "--actor", default=os.environ.get("USER") or "user", help="who acts, for the audit log (default $USER)"
        )


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            handler(args)
        except CommandError as error:
            print(f"agentopz-otel: {error}", file=sys.stderr)
            return 1
        return 0

    return run


def add_commands(commands: Any) -> None:
    """Register `agent`, `rollout` and `flags` on the main parser's subcommands."""
    agent = commands.add_parser("agent", help="define agents and their prompt versions; disable or enable an agent")
    agent_commands = agent.add_subparsers(dest="agent_command", required=True)
    define = agent_commands.add_parser("define", help="define (or redefine) an agent's versions and baseline")
    define.add_argument("agent", metavar="AGENT")
    define.add_argument(
        "--version", action="append", required=True, metavar="NAME[=JSON]", help="a prompt version and its value"
    )
    define.add_argument("--baseline", required=True, metavar="NAME", help="the version served when none is rolled out")
    define.add_argument("--reason", default="")
    define.set_defaults(handler=_run(_agent_define))
    disable = agent_commands.add_parser("disable", help="kill switch: clients use their code default (or --fallback)")
    disable.add_argument("agent", metavar="AGENT")
    disable.add_argument("--reason", required=True)
    disable.add_argument("--fallback", metavar="VERSION", help="serve this version instead of the code default")
    disable.set_defaults(handler=_run(_agent_disable))
    enable = agent_commands.add_parser("enable", help="undo disable")
    enable.add_argument("agent", metavar="AGENT")
    enable.add_argument("--reason", default="")
    enable.set_defaults(handler=_run(_agent_enable))
    for parser in (define, disable, enable):
        _connection_arguments(parser, mutation=True)

    rollout = commands.add_parser("rollout", help="roll a prompt version out by steps; promote, roll back, pause")
    rollout_commands = rollout.add_subparsers(dest="rollout_command", required=True)
    start = rollout_commands.add_parser("start", help="start serving a candidate version to a share of traffic")
    start.add_argument("agent", metavar="AGENT")
    start.add_argument("--candidate", required=True, metavar="VERSION")
    start.add_argument("--steps", default="5,25,50,100", help="candidate weights in %% (default 5,25,50,100)")
    start.add_argument("--reason", default="")
    start.set_defaults(handler=_run(_rollout_start))
    _connection_arguments(start, mutation=True)
    for action, text in (
        ("promote", "make the candidate the baseline for all traffic"),
        ("rollback", "serve the baseline to all traffic again, from the next evaluation"),
        ("pause", "hold the current weight"),
        ("resume", "continue a paused rollout"),
        ("advance", "go to the next step (promote at the last)"),
    ):
        command = rollout_commands.add_parser(action, help=text)
        command.add_argument("agent", metavar="AGENT")
        command.add_argument("--reason", default="")
        command.set_defaults(handler=_run(_rollout_action), action=action)
        _connection_arguments(command, mutation=True)
    status = rollout_commands.add_parser("status", help="where every agent (or AGENT) stands")
    status.add_argument("agent", metavar="AGENT", nargs="?")
    status.set_defaults(handler=_run(_rollout_status))
    history = rollout_commands.add_parser("history", help="every change: who, when, what, why (newest first)")
    history.add_argument("agent", metavar="AGENT", nargs="?")
    history.add_argument("--limit", type=int, default=50)
    history.set_defaults(handler=_run(_rollout_history))
    for parser in (status, history):
        _connection_arguments(parser, mutation=False)

    route = commands.add_parser(
        "route", help="route around a broken part: switch a tool off, fall back to another model (component flags)"
    )
    route_commands = route.add_subparsers(dest="route_command", required=True)
    for name, enabled, text in (
        ("tool-off", False, "serve <agent>.tool.<tool> = false: the agent's code skips the tool"),
        ("tool-on", True, "serve <agent>.tool.<tool> = true: the agent uses the tool again"),
    ):
        command = route_commands.add_parser(name, help=text)
        command.add_argument("agent", metavar="AGENT")
        command.add_argument("tool", metavar="TOOL")
        command.add_argument("--reason", required=not enabled, default="")
        command.set_defaults(handler=_run(_route_tool), enabled=enabled)
        _connection_arguments(command, mutation=True)
    fallback = route_commands.add_parser("fallback", help="serve <agent>.model = MODEL: the agent calls MODEL instead")
    fallback.add_argument("agent", metavar="AGENT")
    fallback.add_argument("model", metavar="MODEL", help="the model the agent's code should use, e.g. gpt-4o-mini")
    fallback.add_argument("--reason", required=True)
    fallback.set_defaults(handler=_run(_route_fallback))
    _connection_arguments(fallback, mutation=True)
    clear = route_commands.add_parser("clear", help="remove a component flag: clients use the default in their code")
    clear.add_argument("agent", metavar="AGENT")
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--tool", metavar="TOOL", help="clear <agent>.tool.<TOOL>")
    which.add_argument("--model", action="store_true", help="clear <agent>.model")
    clear.add_argument("--reason", default="")
    clear.set_defaults(handler=_run(_route_clear))
    _connection_arguments(clear, mutation=True)
    routes = route_commands.add_parser("list", help="the component flags set (of AGENT)")
    routes.add_argument("agent", metavar="AGENT", nargs="?")
    routes.set_defaults(handler=_run(_route_list))
    _connection_arguments(routes, mutation=False)

    flags = commands.add_parser("flags", help="the flag set in flagd's format")
    flags_commands = flags.add_subparsers(dest="flags_command", required=True)
    export = flags_commands.add_parser("export", help="write the flag set as flagd JSON, to serve it from flagd")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    export.add_argument(
        "--from-storage", metavar="SQLITE_FILE", help="read the service's database instead (when it is down)"
    )
    export.set_defaults(handler=_run(_flags_export))
    _connection_arguments(export, mutation=False)
