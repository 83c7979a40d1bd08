"""Console benchmark: every page of /ui on a million dead events, rendered, each under 300 ms.

    .venv/bin/python -m bench console [--rows 1000000] [--repeat 5] [--quick]

Seeds ``--rows`` dead events exactly as bench/dead_letters.py does (8 event types, 5 error
families whose messages carry ids, deaths spread over 30 days), then VACUUM ANALYZE, and asks the
console app for each page in-process (Starlette's test client: the page's queries and its
template, without the network), signed in as an operator: median and best of ``--repeat`` runs.
``--quick`` is a smoke run: 100,000 rows, 3 repeats. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import warnings
from typing import Any

import psycopg
from fastapi import FastAPI
from psycopg_pool import ConnectionPool

with warnings.catch_warnings():
    # Starlette's test client still runs on httpx and says so on import; it is what we measure
    # the pages through, in-process.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from bench.common import BenchDatabase, emit_json, print_table
from bench.dead_letters import SEED
from dispatchbox import OutboxRepository, migrations
from dispatchbox.api.auth import ApiTokens
from dispatchbox.console import mount
from dispatchbox.console.store import OVERVIEW_CACHE_SECONDS
from dispatchbox.data import queries
from dispatchbox.filters import DeadEventFilter
from dispatchbox.fingerprint import fingerprint

TARGET_MS = 300
#: The migration that builds the dead-letter summary (its backfill is timed).
SUMMARY_MIGRATION = 12
SECRET = "bench:" + "s" * 32


def _pages(first_id: int, rows: int) -> list[tuple[str, str]]:
    fp = fingerprint("KeyError: 'customer_1'")
    return [
        ("overview", "/"),
        ("overview refresh", "/partials/overview"),
        ("dead events, first page", "/dead"),
        ("dead events, keyset page deep", f"/dead?after={first_id + rows * 9 // 10}"),
        ("dead events --event-type", "/dead?event_type=order.paid"),
        ("dead events --error-contains", "/dead?error_contains=timed+out"),
        ("grouped by error", "/dead?view=groups"),
        ("grouped, one type", "/dead?view=groups&event_type=order.paid"),
        ("grouped, one fingerprint", f"/dead?view=groups&error_fingerprint={fp}"),
        ("event detail", f"/events/{first_id + rows // 2}"),
        ("retry group: dry-run count", f"/retry?error_fingerprint={fp}"),
        ("purge: dry-run count", "/purge?older_than_days=7"),
        ("audit trail", "/audit"),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="dead events to seed")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each page")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100,000 rows, 3 runs")
    args = parser.parse_args(argv)
    rows_n, repeat = (100_000, 3) if args.quick else (args.rows, args.repeat)

    bench = BenchDatabase()
    figures: dict[str, Any] = {"rows": rows_n, "server": bench.where, "target_ms": TARGET_MS}
    try:
        # Seeded before migration 0012, then migrated: the run times 0012's backfill of the
        # dead-letter summary on this many dead events.
        dsn = bench.fresh(target=SUMMARY_MIGRATION - 1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            print(f"seeding {rows_n:,} dead events ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            conn.execute(SEED, {"rows": rows_n})
            conn.execute("VACUUM ANALYZE outbox_event")
            conn.execute("VACUUM ANALYZE outbox_dead_fingerprint")
            figures["seed_and_vacuum_s"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            migrations.migrate(conn)
            figures["migration_0012_backfill_s"] = round(time.perf_counter() - started, 1)
            conn.execute("VACUUM ANALYZE outbox_dead_fingerprint")
            row = conn.execute("SELECT min(id) FROM outbox_event").fetchone()
            first_id = int(row[0]) if row else 1
        pool: ConnectionPool[Any] = ConnectionPool(dsn, min_size=2, max_size=4, open=True)
        tokens = ApiTokens.parse(SECRET)
        app = FastAPI()
        mount(app, pool, tokens, readers=frozenset())  # as `dispatchbox serve` mounts it
        results = []
        with TestClient(app) as client:
            login = client.get("/ui/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
            assert csrf is not None
            signed = client.post(
                "/ui/login", data={"csrf": csrf.group(1), "token": SECRET}, follow_redirects=False
            )
            assert signed.status_code == 303, signed.text
            for name, path in _pages(first_id, rows_n):
                times = []
                for _ in range(repeat):
                    time.sleep(OVERVIEW_CACHE_SECONDS)  # measure a reading, not the cache
                    started = time.perf_counter()
                    response = client.get("/ui" + path, follow_redirects=False)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                median = statistics.median(times)
                results.append(
                    {
                        "page": name,
                        "median_ms": round(median, 1),
                        "best_ms": round(min(times), 1),
                        "under_300ms": median < TARGET_MS,
                    }
                )
            # The reference, in the same run: the CLI's `dead-events stats --by error`, read from
            # the dead-letter summary (migration 0012) as the overview and the groups page are.
            repo = OutboxRepository(pool)
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                repo.dead_event_stats(by=["error"])
                times.append((time.perf_counter() - started) * 1000)
            results.append(
                {
                    "page": "(reference) dead-events stats --by error",
                    "median_ms": round(statistics.median(times), 1),
                    "best_ms": round(min(times), 1),
                    "under_300ms": statistics.median(times) < TARGET_MS,
                }
            )
            # The read the groups and stats made before migration 0012, in the same run: the
            # exact grouping over every dead event's mirror row (dead_event_stats('error')).
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                with pool.connection() as conn:
                    queries.fetch_all(conn, "dead_stats_by_error", DeadEventFilter().params())
                times.append((time.perf_counter() - started) * 1000)
            results.append(
                {
                    "page": "(reference, exact) dead_event_stats('error'), the read before 0012",
                    "median_ms": round(statistics.median(times), 1),
                    "best_ms": round(min(times), 1),
                    "under_300ms": statistics.median(times) < TARGET_MS,
                }
            )
        pool.close()
        figures["pages"] = results
        print_table(f"console pages on {rows_n:,} dead events ({repeat} runs)", results)
        emit_json("console", figures)
        return figures
    finally:
        bench.close()


if __name__ == "__main__":
    main(sys.argv[1:])
