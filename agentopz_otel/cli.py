"""Command line: `agentopz-otel run [--config FILE]`, `validate FILE`, `schema`, `catalogue ...`, `slo ...`,
`rules ...`, `triage rules`, `demo`, and the rollout commands `agent ...`, `rollout ...`, `route ...`,
`flags export` (which talk to a running service's admin API)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .cli_rollouts import add_commands as add_rollout_commands
from .config import ConfigError, load_config
from .demo import add_arguments as add_demo_arguments
from .slo import SLOError


def _run(args: argparse.Namespace) -> int:
    from .service import Service

    config = load_config(args.config)
    logging.basicConfig(
        level=config.service.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    async def serve() -> None:
        # Built inside the event loop: asyncio and grpc.aio objects bind to the running loop.
        try:
            service = Service(config)
        except ValueError as error:  # a component refused its configuration (e.g. a missing extension)
            raise ConfigError(str(error)) from None
        await service.run()

    try:
        asyncio.run(serve())
    except OSError as error:
        print(f"agentopz-otel: {error}", file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    pipelines = ", ".join(config.service.pipelines)
    print(f"{args.config or 'built-in default config'}: valid (pipelines: {pipelines})")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from .config import config_schema_json

    sys.stdout.write(config_schema_json())
    return 0


def _catalogue_check(args: argparse.Namespace) -> int:
    from .catalogue import problems

    found = problems()
    for problem in found:
        print(f"agentopz_otel/telemetry.yaml: {problem}", file=sys.stderr)
    return 1 if found else 0


def _catalogue_readme(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .catalogue import with_metrics_table

    path = Path(args.readme)
    try:
        text = path.read_text(encoding="utf-8")
        updated = with_metrics_table(text)
    except (OSError, ValueError) as error:
        print(f"agentopz-otel catalogue readme: {path}: {error}", file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(f"{path}: the metrics table is not the catalogue's; run without --check to rewrite it")
            return 1
        return 0
    if updated != text:
        path.write_text(updated, encoding="utf-8")
        print(f"rewrote the metrics table in {path}")
    return 0


def _slo_generate(args: argparse.Namespace) -> int:
    from .slo import load_spec, render_rules

    return _write(render_rules(load_spec(args.slo_file), args.slo_file), args.output)


def _write(text: str, output: str | None) -> int:
    """Write a generated file to `output`, or to stdout without one."""
    if output:
        with open(output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _rules(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .runbooks import write_rebased

    try:
        written = write_rebased([Path(name) for name in args.rule_files], args.runbook_base_url, Path(args.output_dir))
    except (OSError, ValueError) as error:
        print(f"agentopz-otel rules: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def _triage_rules(args: argparse.Namespace) -> int:
    from .triage import render_rules

    return _write(render_rules(), args.output)


def _slo_validate(args: argparse.Namespace) -> int:
    from .slo import cost_thresholds, latency_thresholds, load_spec

    spec = load_spec(args.slo_file)
    print(f"{args.slo_file}: valid ({len(spec.slos)} SLOs: {', '.join(slo.name for slo in spec.slos)})")
    for label, thresholds in (("latency", latency_thresholds(spec)), ("cost", cost_thresholds(spec))):
        if thresholds:
            print(f"{label} thresholds (bucket boundaries): {', '.join(f'{t:g}' for t in thresholds)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentopz-otel", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the service")
    run.add_argument("--config", metavar="FILE", help="YAML config (default: the built-in config)")
    run.set_defaults(handler=_run)
    validate = commands.add_parser("validate", help="check a config file without starting anything")
    validate.add_argument("config", metavar="FILE", nargs="?")
    validate.set_defaults(handler=_validate)
    schema = commands.add_parser("schema", help="print the config file's JSON Schema (for editors)")
    schema.set_defaults(handler=_schema)
    catalogue = commands.add_parser("catalogue", help="the catalogue of metrics, span attributes and alerts")
    catalogue_commands = catalogue.add_subparsers(dest="catalogue_command", required=True)
    catalogue_check = catalogue_commands.add_parser("check", help="check the catalogue against its JSON Schema")
    catalogue_check.set_defaults(handler=_catalogue_check)
    readme = catalogue_commands.add_parser(
        "readme", help="rewrite the metrics table block of a README from the catalogue"
    )
    readme.add_argument("readme", metavar="FILE")
    readme.add_argument("--check", action="store_true", help="exit 1 if the block is not current; write nothing")
    readme.set_defaults(handler=_catalogue_readme)
    demo = commands.add_parser("demo", help="send demo AI agent traffic (GenAI spans over OTLP) until stopped")
    add_demo_arguments(demo)
    demo.set_defaults(handler=_demo)
    slo = commands.add_parser("slo", help="SLO files: generate Prometheus rules, validate")
    slo_commands = slo.add_subparsers(dest="slo_command", required=True)
    generate = slo_commands.add_parser("generate", help="print (or write) the recording and alerting rules")
    generate.add_argument("slo_file", metavar="SLO_FILE")
    generate.add_argument("-o", "--output", metavar="OUT", help="write the rule file here instead of stdout")
    generate.set_defaults(handler=_slo_generate)
    slo_validate = slo_commands.add_parser("validate", help="check an SLO file")
    slo_validate.add_argument("slo_file", metavar="SLO_FILE")
    slo_validate.set_defaults(handler=_slo_validate)
    rules = commands.add_parser(
        "rules", help="write copies of alert rule files whose runbook_url links live under one base URL"
    )
    rules.add_argument("rule_files", metavar="RULE_FILE", nargs="+")
    rules.add_argument(
        "--runbook-base-url", required=True, metavar="URL", help="e.g. https://agentopz.example.com/runbooks"
    )
    rules.add_argument("-o", "--output-dir", required=True, metavar="DIR")
    rules.set_defaults(handler=_rules)
    triage = commands.add_parser("triage", help="triage rules: which part of an agent moved")
    triage_commands = triage.add_subparsers(dest="triage_command", required=True)
    triage_rules = triage_commands.add_parser("rules", help="print (or write) the suspect recording rules")
    triage_rules.add_argument("-o", "--output", metavar="OUT", help="write the rule file here instead of stdout")
    triage_rules.set_defaults(handler=_triage_rules)
    add_rollout_commands(commands)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"agentopz-otel: invalid config:\n{error}", file=sys.stderr)
        return 2
    except SLOError as error:
        print(f"agentopz-otel: invalid SLO file:\n{error}", file=sys.stderr)
        return 2
