"""`dispatchbox demo`: the end-to-end tour on a throwaway database.

It starts its own PostgreSQL cluster (or uses DISPATCHBOX_DSN / --dsn when set), migrates,
publishes a few hundred events of which some fail once and some always fail, runs two worker
processes until nothing is pending, then shows the dead letters with the real CLI commands, and
stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import typer

from dispatchbox import migrations
from dispatchbox.cli.common import info, state
from dispatchbox.db import connect, describe
from dispatchbox.outbox_status import outbox_status
from dispatchbox.publish import publish_many
from dispatchbox.tempcluster import TempCluster

EVENTS = (
    ("order", "order.created", 200),  # all delivered
    ("invoice", "invoice.issued", 60),  # fail once, delivered on the retry
    ("payment", "payment.captured", 30),  # always fail: dead after 3 attempts
    ("customer", "customer.deleted", 10),  # permanent error: dead at once
)


def _events() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for aggregate_type, event_type, n in EVENTS:
        for i in range(n):
            payload: dict[str, object] = {"n": i}
            if event_type == "customer.deleted" and i % 2 == 0:
                payload["customer_id"] = 1000 + i
            out.append(
                {
                    "aggregate_type": aggregate_type,
                    "aggregate_id": f"{aggregate_type[:3]}-{7000 + i}",
                    "event_type": event_type,
                    "payload": payload,
                    "max_attempts": 3,
                }
            )
    return out


def _cli(dsn: str, *args: str) -> None:
    env = {**os.environ, "DISPATCHBOX_DSN": dsn}
    print(f"\n$ dispatchbox {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "dispatchbox", *args], env=env, check=True)


def demo_command(ctx: typer.Context) -> None:
    """Migrate a throwaway database, publish events, dispatch them, show the dead letters."""
    dsn = state(ctx).dsn_flag or os.environ.get("DISPATCHBOX_DSN")
    cluster = None
    worker = None
    try:
        if not dsn:
            info("starting a throwaway PostgreSQL cluster ...")
            cluster = TempCluster().start()
            dsn = cluster.dsn()
        info(f"database: {describe(dsn)}")
        with connect(dsn, autocommit=True) as conn:
            for m in migrations.migrate(conn):
                info(f"applied migration {m.version:04d}_{m.name}")
        with connect(dsn) as conn:
            ids = publish_many(conn, _events())
            conn.commit()
        info(f"published {len(ids)} events: " + ", ".join(f"{n} {t}" for _, t, n in EVENTS))

        info("starting 2 worker processes (fast retries for the demo) ...")
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "dispatchbox", "worker",
                "--app", "dispatchbox.demo_app:dispatcher", "--processes", "2",
                "--backoff-base", "0.2", "--backoff-max", "1", "--poll-interval", "0.2",
                "--log-level", "ERROR",
            ],
            env={**os.environ, "DISPATCHBOX_DSN": dsn},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        with connect(dsn, autocommit=True) as conn:
            while True:
                health = outbox_status(conn).values
                if health.get("pending") == 0 and health.get("running") == 0:
                    break
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"the demo did not drain: {health}")
                time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        worker = None
        info("drained; workers stopped")

        _cli(dsn, "db", "status")
        _cli(dsn, "dead-events", "stats", "--by", "event_type")
        _cli(dsn, "dead-events", "stats", "--by", "error")
        _cli(dsn, "dead-events", "list", "--limit", "8")
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if cluster is not None:
            cluster.stop()
            info("throwaway cluster stopped")
