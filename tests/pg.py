"""The PostgreSQL server the test session talks to, and catalog snapshots for schema checks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NoReturn

import psycopg
import pytest
from psycopg import conninfo

from dispatchbox.tempcluster import TempCluster, find_bindir


def in_ci() -> bool:
    """CI (and anyone who sets DISPATCHBOX_REQUIRE_PG_CRON=1) runs every test: no skips."""
    return bool(os.environ.get("CI")) or os.environ.get("DISPATCHBOX_REQUIRE_PG_CRON") == "1"


def skip_outside_ci(reason: str) -> NoReturn:
    """Skip on a developer's machine that lacks something; in CI the same lack is a failure."""
    if in_ci():
        pytest.fail(f"{reason} (a skip counts as a failure in CI)", pytrace=False)
    pytest.skip(reason)


@dataclass
class PgServer:
    """Where tests create their databases; ``cluster`` is set when we own the server."""

    admin_dsn: str
    cluster: TempCluster | None = None
    kind: str = "external"
    pg_cron: bool = False
    _container: Any = field(default=None, repr=False)

    def dsn(self, dbname: str) -> str:
        return conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def tcp_dsn(self, dbname: str) -> str:
        if self.cluster is not None:
            return self.cluster.tcp_dsn(dbname)
        return self.dsn(dbname)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self._container is not None:
            self._container.stop()


def docker_claimed() -> bool:
    """CI says a Docker engine is there (DISPATCHBOX_TEST_DOCKER=1): then not finding one fails."""
    return os.environ.get("DISPATCHBOX_TEST_DOCKER") == "1"


def docker_reachable(timeout: float = 3.0) -> bool:
    """A Docker engine answers a ping (DOCKER_HOST, else the local socket)."""
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    import docker  # comes with testcontainers

    try:
        client = docker.from_env(timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no engine, no permission, a dead socket: all "not reachable"
        return False


def start_container(image: str = "postgres:15") -> PgServer:
    """A throwaway PostgreSQL in Docker (testcontainers): the fallback without local binaries."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the community namespace
        from testcontainers.postgres import PostgresContainer
    try:
        container = PostgresContainer(image, driver=None)
        container.start()
    except Exception as exc:
        raise RuntimeError(
            f"testcontainers could not start {image}: {type(exc).__name__}: {exc}"
        ) from exc
    dsn: str = container.get_connection_url()
    return PgServer(admin_dsn=dsn, kind="container", pg_cron=False, _container=container)


def _has_pg_cron(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'"
        ).fetchone()
    return available is not None and preload is not None and "pg_cron" in str(preload[0])


def start_server() -> PgServer:
    """DISPATCHBOX_TEST_DSN, else a throwaway local cluster, else testcontainers."""
    external = os.environ.get("DISPATCHBOX_TEST_DSN")
    if external:
        return PgServer(admin_dsn=external, kind="external", pg_cron=_has_pg_cron(external))
    if find_bindir() is not None:
        # Every address, so that tests/reliability/test_many_hosts.py can reach it from network
        # namespaces it creates later; pg_hba.conf admits loopback only until that test adds
        # its own subnets for its own run.
        cluster = TempCluster(listen_addresses="*").start()
        return PgServer(
            admin_dsn=cluster.dsn("postgres"),
            cluster=cluster,
            kind="local",
            pg_cron=cluster.pg_cron,
        )
    if docker_reachable():
        return start_container()
    raise RuntimeError(
        "no PostgreSQL for the tests: set DISPATCHBOX_TEST_DSN, install the PostgreSQL server "
        "binaries (initdb, pg_ctl), or make a Docker engine reachable"
    )


_CATALOG_QUERIES = {
    "columns": """
        SELECT table_name, column_name, ordinal_position, data_type, is_nullable,
               column_default, is_identity, identity_generation
          FROM information_schema.columns WHERE table_schema = 'public'
         ORDER BY table_name, ordinal_position""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace
         ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
         WHERE schemaname = 'public' ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
         WHERE NOT tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid), pg_get_functiondef(oid)
          FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1""",
    "relations": """
        SELECT relname, relkind, reloptions, obj_description(oid, 'pg_class')
          FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1""",
    "sequences": """
        SELECT sequencename, data_type, start_value, increment_by, cycle
          FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1""",
    "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
          FROM pg_policies WHERE schemaname = 'public' ORDER BY 1, 2""",
}


def catalog_snapshot(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every object of the public schema as the catalog describes it."""
    with psycopg.connect(dsn) as conn:
        return {
            name: [tuple(row) for row in conn.execute(sql).fetchall()]
            for name, sql in _CATALOG_QUERIES.items()
        }
