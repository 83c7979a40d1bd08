"""sql/schema.sql and the migrations must describe the same database."""

from __future__ import annotations

import re

import psycopg

from dispatchbox import migrations
from dispatchbox.data import queries
from tests.pg import catalog_snapshot


def test_migrations_produce_exactly_schema_sql(empty_db_dsn: str, db_dsn: str) -> None:
    # db_dsn was built by running every migration; empty_db_dsn gets schema.sql as a script.
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute((queries.sql_dir() / "schema.sql").read_bytes())
    from_schema = catalog_snapshot(empty_db_dsn)
    from_migrations = catalog_snapshot(db_dsn)
    assert from_schema["columns"], "the catalog snapshot saw no tables"
    for kind in from_schema:
        assert from_migrations[kind] == from_schema[kind], f"{kind} differ"


def test_migration_files_are_numbered_without_gaps_and_lowercase() -> None:
    found = migrations.available()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    for m in found:
        assert re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", m.path.name)


def test_python_status_enum_matches_check_constraint(db_dsn: str) -> None:
    from dispatchbox.events import EventStatus

    with psycopg.connect(db_dsn) as conn:
        (definition,) = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'outbox_event'::regclass AND conname = 'outbox_event_status_check'"
        ).fetchone() or ("",)
    in_db = set(re.findall(r"'(\w+)'::text", definition))
    assert in_db == {s.value for s in EventStatus}
