#!/usr/bin/env python
"""Memory under hostile senders, one attack after another, and after they end.

    .venv/bin/python bench/memory_attacks.py                  # the attacks at full size
    .venv/bin/python bench/memory_attacks.py --scale 0.1      # a tenth of each

Attacks, in order: 10,000 agent x model combinations; 300,000 distinct model names; 100,000 runs
whose agent span never arrives (the open-run cap), with 4 LLM calls each; 10,000 distinct 16 KiB
system prompts. Prints the service's RSS after each attack, then while it settles: runs are
abandoned after --abandon-after seconds and forgotten --late-window seconds later (defaults here are
short; the service's own defaults are 300 s each, so there the return takes ten minutes).
"""

from __future__ import annotations

import argparse
import time

from hostile import (
    ServiceProcess,
    combination_requests,
    model_name_requests,
    open_run_requests,
    send_all,
    service_config,
    system_prompt_requests,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each attack's size")
    parser.add_argument("--abandon-after", type=float, default=15.0, help="processors.runs.abandon_after_seconds")
    parser.add_argument("--late-window", type=float, default=15.0, help="processors.runs.late_window_seconds")
    args = parser.parse_args()

    def scaled(count: int) -> int:
        return max(1, int(count * args.scale))

    attacks = (
        ("{:,} agent x model combinations", scaled(10_000), lambda n: combination_requests(n, 64)),
        ("{:,} distinct model names", scaled(300_000), lambda n: model_name_requests(n, 40)),
        ("{:,} open runs of 4 calls", scaled(100_000), lambda n: open_run_requests(n)),
        ("{:,} distinct 16 KiB system prompts", scaled(10_000), lambda n: system_prompt_requests(n, 16_384)),
    )
    runs = {"abandon_after_seconds": args.abandon_after, "late_window_seconds": args.late_window}
    service = ServiceProcess(service_config(runs=runs))
    try:
        print(f"started: RSS {service.rss_mib():.0f} MiB")
        for name, count, requests in attacks:
            began = time.perf_counter()
            refused = send_all(service.grpc_target, requests(count))
            elapsed = time.perf_counter() - began
            print(
                f"after {name.format(count)}: {elapsed:.1f} s ({count / elapsed:.0f}/s, {refused} requests refused), "
                f"RSS {service.rss_mib():.0f} MiB, peak {service.peak_rss_mib():.0f} MiB"
            )
        settle = args.abandon_after + args.late_window + 10
        began = time.perf_counter()
        while time.perf_counter() - began < settle:
            time.sleep(settle / 4)
            open_runs = service.value("agentopz_open_runs")
            print(
                f"quiet for {time.perf_counter() - began:3.0f} s: RSS {service.rss_mib():.0f} MiB, "
                f"open runs {open_runs:.0f}"
            )
        print(f"peak RSS {service.peak_rss_mib():.0f} MiB, final RSS {service.rss_mib():.0f} MiB")
    finally:
        service.stop()


if __name__ == "__main__":
    main()
