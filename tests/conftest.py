"""Fixtures: one PostgreSQL server per session, a fresh migrated database per test."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from dispatchbox import migrations
from tests import secret_scan
from tests.pg import PgServer, skip_outside_ci, start_server

TEMPLATE = "dispatchbox_template"


def _require_pg_cron() -> bool:
    return os.environ.get("DISPATCHBOX_REQUIRE_PG_CRON") == "1"


@pytest.fixture(scope="session", autouse=True)
def secrets_scan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session: no secret in any output the suite captured (tests/secret_scan.py
    says what is and is not covered)."""
    handler = secret_scan.CaptureHandler()
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
    secret_scan.files_under(tmp_path_factory.getbasetemp())
    found = secret_scan.leaks()
    assert not found, "secrets leaked into outputs: " + "; ".join(found[:20])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_server()
    if server.cluster is not None:
        # Every DSN of the session carries a distinctive password (trust authentication ignores
        # it): the secrets scan looks for it in every output.
        server.admin_dsn = conninfo.make_conninfo(
            server.admin_dsn, password=secret_scan.DSN_PASSWORD
        )
    try:
        if _require_pg_cron() and not server.pg_cron:
            pytest.fail(
                "DISPATCHBOX_REQUIRE_PG_CRON=1 but pg_cron is not available to the test server "
                "(install postgresql-15-cron)",
                pytrace=False,
            )
        with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
            )
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        with psycopg.connect(server.dsn(TEMPLATE), autocommit=True) as conn:
            migrations.migrate(conn)
        yield server
    finally:
        server.stop()


def _create_db(server: PgServer, *, template: str) -> str:
    name = f"dbx_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return name


def _drop_db(server: PgServer, name: str) -> None:
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def db_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with every migration applied."""
    name = _create_db(pg_server, template=TEMPLATE)
    try:
        yield pg_server.dsn(name)
    finally:
        _drop_db(pg_server, name)


@pytest.fixture
def empty_db_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with nothing in it."""
    name = _create_db(pg_server, template="template0")
    try:
        yield pg_server.dsn(name)
    finally:
        _drop_db(pg_server, name)


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_dsn) as connection:
        yield connection


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    """Where the worker test app's handlers write what they saw (tests/worker_app.py)."""
    d = tmp_path / "records"
    d.mkdir()
    return d


@pytest.fixture
def pg_cron(pg_server: PgServer) -> PgServer:
    """The server, when it preloads pg_cron; a skip (or, in CI, a failure) when not."""
    if not pg_server.pg_cron:
        skip_outside_ci("pg_cron is not installed or not preloaded on the test server")
    return pg_server


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(
    *args: str,
    dsn: str | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> CliResult:
    """The real `dispatchbox` command in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("DISPATCHBOX_DSN", "DATABASE_URL")}
    if dsn is not None:
        full_env["DISPATCHBOX_DSN"] = dsn
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "dispatchbox", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
    )
    secret_scan.capture(f"dispatchbox {' '.join(args)[:80]}", proc.stdout + proc.stderr)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
