"""Migration runner: order, once each, atomic, safe under concurrency."""

from __future__ import annotations

import multiprocessing

import psycopg

from dispatchbox import migrations


def _migrate(dsn: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with psycopg.connect(dsn, autocommit=True) as conn:
        applied = migrations.migrate(conn)
    results.put([m.version for m in applied])


def test_two_concurrent_migrates_apply_each_version_once(empty_db_dsn: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_migrate, args=(empty_db_dsn, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    outcomes = sorted([results.get(timeout=5), results.get(timeout=5)], key=len)
    shipped = [m.version for m in migrations.available()]
    assert outcomes == [[], shipped]
    with psycopg.connect(empty_db_dsn) as conn:
        rows = conn.execute("SELECT version FROM dispatchbox_schema_version").fetchall()
    assert sorted(r[0] for r in rows) == shipped


def test_dry_run_changes_nothing_and_status_reports(empty_db_dsn: str) -> None:
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        planned = migrations.migrate(conn, dry_run=True)
        assert [m.version for m in planned] == [m.version for m in migrations.available()]
        st = migrations.status(conn)
        assert not st.current and st.applied == []
        exists = conn.execute("SELECT to_regclass('outbox_event')").fetchone()
        assert exists == (None,)
        migrations.migrate(conn)
        assert migrations.status(conn).current
        assert migrations.migrate(conn) == []
