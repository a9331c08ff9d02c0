#!/usr/bin/env python
"""Instructions per span of the in-process pipeline, counted by valgrind: a figure that other work on
the machine does not move, for before/after comparisons that CPU seconds on a shared machine can't settle.

    .venv/bin/python bench/instructions.py                          # this checkout
    .venv/bin/python bench/instructions.py /path/to/before .         # two checkouts, side by side
    .venv/bin/python bench/instructions.py . --pure-python           # every module from its source

Runs bench/pipeline_stages.py (bench.py's traffic through the service's own pipeline, runs finished as
the ticker would) under `valgrind --tool=callgrind` for N and for 3N requests; the difference, divided
by the spans of the 2N requests between them, is the pipeline's instructions per span without the
start-up. valgrind runs each at about 1/50 of native speed: N = 20 takes about a minute on one core.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agentopz_otel.compiled import PURE_PYTHON_ENV

COLLECTED = re.compile(r"Collected : (\d+)")
STAGES = "bench/pipeline_stages.py"


def instructions(source: Path, requests: int, spans_per_request: int, extra: list[str], env: dict) -> int:
    """Instructions of one whole run of pipeline_stages.py from `source` (start-up included)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(source / STAGES),
        "--requests",
        str(requests),
        "--repeat",
        "1",
        "--spans-per-request",
        str(spans_per_request),
        *extra,
    ]
    result = subprocess.run(
        command, cwd=source, env={**env, "PYTHONPATH": str(source)}, capture_output=True, text=True, check=False
    )
    found = COLLECTED.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"{source}: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", default=["."], help="checkouts to count (default: this one)")
    parser.add_argument("--requests", type=int, default=20, help="N: the runs replay N and 3N requests")
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--no-runs", action="store_true", help="without the runs processor")
    parser.add_argument("--pure-python", action="store_true", help=f"set {PURE_PYTHON_ENV}: no compiled module")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    env = dict(os.environ)
    if args.pure_python:
        env[PURE_PYTHON_ENV] = "1"
    extra = ["--no-runs"] if args.no_runs else []
    sources = [Path(source).resolve() for source in args.sources]
    jobs = [(source, count) for source in sources for count in (args.requests, 3 * args.requests)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counted = list(pool.map(lambda job: instructions(job[0], job[1], args.spans_per_request, extra, env), jobs))
    spans = 2 * args.requests * args.spans_per_request
    between = f"{spans:,} spans between {args.requests} and {3 * args.requests} requests"
    print(f"instructions per span, pipeline only ({between}); ratio to the first")
    first = None
    for index, source in enumerate(sources):
        per_span = (counted[2 * index + 1] - counted[2 * index]) / spans
        first = first or per_span
        print(f"{per_span:>12,.0f}  {per_span / first:>6.3f}  {source}")


if __name__ == "__main__":
    main()
