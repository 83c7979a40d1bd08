"""`dispatchbox demo`: the end-to-end tour on a throwaway database."""

from __future__ import annotations

import typer

from dispatchbox import migrations
from dispatchbox.cli.common import info
from dispatchbox.db import connect, describe
from dispatchbox.publish import publish_many
from dispatchbox.tempcluster import TempCluster


def demo_command(ctx: typer.Context) -> None:
    """Migrate a throwaway database, publish events, dispatch them, show the dead letters."""
    from dispatchbox.cli.common import state

    dsn_flag = state(ctx).dsn_flag
    cluster = None
    try:
        import os

        dsn = dsn_flag or os.environ.get("DISPATCHBOX_DSN")
        if not dsn:
            info("starting a throwaway PostgreSQL cluster ...")
            cluster = TempCluster().start()
            dsn = cluster.dsn()
        info(f"database: {describe(dsn)}")
        with connect(dsn, autocommit=True) as conn:
            for m in migrations.migrate(conn):
                info(f"applied migration {m.version:04d}_{m.name}")
        events = [
            {
                "aggregate_type": "order",
                "aggregate_id": str(i),
                "event_type": "order.created",
                "payload": {"order_id": i},
            }
            for i in range(300)
        ]
        with connect(dsn) as conn:
            ids = publish_many(conn, events)
            conn.commit()
        info(f"published {len(ids)} events")
    finally:
        if cluster is not None:
            cluster.stop()
            info("throwaway cluster stopped")
