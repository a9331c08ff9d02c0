"""Command line: `agentopz-otel run [--config FILE]` and `agentopz-otel validate FILE`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .config import ConfigError, load_config


def _run(args: argparse.Namespace) -> int:
    from .service import Service

    config = load_config(args.config)
    logging.basicConfig(
        level=config.service.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    async def serve() -> None:
        # Built inside the event loop: asyncio and grpc.aio objects bind to the running loop.
        await Service(config).run()

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
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"agentopz-otel: invalid config:\n{error}", file=sys.stderr)
        return 2
