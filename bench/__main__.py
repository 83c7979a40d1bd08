"""`make bench` / `python -m bench [scenario ...]`: every benchmark, a table each and one JSON
summary (also written to bench/results/latest.json).

Scenarios: drain, publish, latency, failure (default: all four); by name or with `all`: archive,
dead_letters (the 1,000,000-row benchmarks of archival and the dead-letter tools), instructions
(the worker's own instructions per event, under valgrind), peers (the other PostgreSQL queues
side by side), startup (from `dispatchbox worker` launched to the first event done), ceiling (the
per-row raw loop beside a log read by position), destinations (relays to RabbitMQ, NATS, Redis and
a webhook against their plain client libraries), breakers (one destination down among three,
recovery, a long outage), ordering (ordered against unordered drains), held_snapshot (drain
rounds beside a held REPEATABLE READ transaction, and without it), redrive (a canary redrive's
overhead, the adaptive pace against a failing destination, poison detection), big_tables
(claim, drain, db status and the dead-letter reads on 10,000,000 pending + 1,000,000 dead events
against a small outbox), hosts (drain with 1, 2 and 3 network-namespace hosts' worth of workers;
needs root), wal (WAL bytes per event published, drained and archived), console (every page of
/ui on 1,000,000 dead events), partition (the single table archived row by row beside the
partitioned outbox retired by partition: size, drain rate, longest worker lock wait), dying
(deaths/s with the dead-letter summary's triggers on and off), redrive_function (the SQL function
redrive_dead_events with and without failed batches). One scenario takes its own
options after its name: `python -m bench peers --quick`, `python -m bench drain --help`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

CORE = ["drain", "publish", "latency", "failure"]
EXTRA = [
    "archive",
    "dead_letters",
    "instructions",
    "peers",
    "startup",
    "ceiling",
    "destinations",
    "breakers",
    "ordering",
    "held_snapshot",
    "redrive",
    "big_tables",
    "hosts",
    "wal",
    "console",
    "partition",
    "dying",
    "redrive_function",
]


def _machine() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmarks and print their figures; the JSON summary goes to "
        "bench/results/latest.json.",
        epilog=f"scenarios: {', '.join(CORE)} (the default set); {', '.join(EXTRA)} (by name, "
        "or all of them with `all`). One scenario takes its own options after its name: "
        "python -m bench peers --quick; python -m bench drain --help.",
    )
    parser.add_argument("scenario", nargs="*", help="scenarios to run (default: the core four)")
    return parser


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[0] in CORE + EXTRA and argv[1].startswith("-"):
        # One scenario with options of its own: they are its business.
        module = __import__(f"bench.{argv[0]}", fromlist=["main"])
        sys.argv = [f"python -m bench {argv[0]}", *argv[1:]]
        run = module.main
        run(argv[1:]) if inspect.signature(run).parameters else run()
        return
    names = _parser().parse_args(argv).scenario or CORE
    if names == ["all"]:
        names = CORE + EXTRA
    unknown = [n for n in names if n not in CORE + EXTRA]
    if unknown:
        print(
            f"python -m bench: unknown scenario(s): {', '.join(unknown)}; "
            f"choose from {', '.join(CORE + EXTRA)} or all",
            file=sys.stderr,
        )
        sys.exit(2)
    results: dict[str, Any] = {"machine": _machine()}
    for name in names:
        module = __import__(f"bench.{name}", fromlist=["main"])
        run = module.main
        sys.argv = [f"bench.{name}"]  # each scenario's own defaults
        results[name] = run([]) if inspect.signature(run).parameters else run()
    out = Path(__file__).parent / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
