"""Idle latency: publish commit to handler start, one event at a time, worker idle (LISTEN).

python -m bench.latency [--samples 300] [--gap 0.02]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import BenchDatabase, emit_json, percentile, print_table, worker
from dispatchbox import publish


def run(db: BenchDatabase, *, samples: int, gap: float) -> dict[str, Any]:
    dsn = db.fresh()
    probe = Path(tempfile.mkdtemp(prefix="dispatchbox-latency-")) / "probe.log"
    committed: dict[int, float] = {}
    try:
        with (
            worker(
                dsn,
                "--processes",
                "1",
                "--poll-interval",
                "5",
                env={"DBX_LATENCY_FILE": str(probe)},
            ),
            psycopg.connect(dsn) as conn,
        ):
            for i in range(samples):
                event_id = publish(
                    conn,
                    aggregate_type="probe",
                    aggregate_id=str(i),
                    event_type="bench.latency",
                    payload={},
                )
                conn.commit()
                committed[event_id] = time.time()
                time.sleep(gap)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                seen = probe.read_text().splitlines() if probe.exists() else []
                if len(seen) >= samples:
                    break
                time.sleep(0.05)
        started = {
            int(a): float(b) for a, b in (line.split() for line in probe.read_text().splitlines())
        }
    finally:
        db.drop(dsn)
    lat_ms = [(started[i] - committed[i]) * 1000 for i in committed if i in started]
    return {
        "scenario": "idle latency, commit to handler start",
        "samples": len(lat_ms),
        "p50_ms": percentile(lat_ms, 50),
        "p95_ms": percentile(lat_ms, 95),
        "p99_ms": percentile(lat_ms, 99),
        "max_ms": max(lat_ms) if lat_ms else float("nan"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.02)
    args = parser.parse_args(argv)
    db = BenchDatabase()
    try:
        row = run(db, samples=args.samples, gap=args.gap)
    finally:
        db.close()
    print_table(f"latency ({db.where})", [row])
    result = {"where": db.where, **row}
    emit_json("latency", result)
    return result


if __name__ == "__main__":
    main()
