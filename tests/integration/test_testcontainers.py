"""The testcontainers fallback of the test session (tests/pg.py): a PostgreSQL in Docker for a
machine with a Docker engine and no local PostgreSQL binaries.

Where an engine answers, the test starts the container, migrates it and publishes through it.
Where none does, it checks that the fallback fails fast with one clear error (no hang, no
half-started container) - unless the environment claims Docker (DISPATCHBOX_TEST_DOCKER=1, as a
CI job with a Docker service sets it), where a missing engine is a failure. Never a skip: each
branch asserts what it can observe on this machine.
"""

from __future__ import annotations

import psycopg
import pytest

from dispatchbox import migrations, publish
from dispatchbox.tempcluster import free_port
from tests.pg import docker_claimed, docker_reachable, start_container


def test_the_testcontainers_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    if docker_reachable():
        server = start_container()
        try:
            assert server.kind == "container" and not server.pg_cron
            with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
                migrations.migrate(conn)
                event_id = publish(
                    conn,
                    aggregate_type="order",
                    aggregate_id="1",
                    event_type="order.created",
                    payload={"via": "testcontainers"},
                )
                row = conn.execute(
                    "SELECT status FROM outbox_event WHERE id = %s", [event_id]
                ).fetchone()
            assert row == ("pending",)
        finally:
            server.stop()
        return
    if docker_claimed():
        pytest.fail(
            "DISPATCHBOX_TEST_DOCKER=1 says a Docker engine is here, but none answers a ping",
            pytrace=False,
        )
    # No engine: point Docker at a closed local port, so nothing on this machine is touched.
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    assert docker_reachable(timeout=2) is False
    with pytest.raises(RuntimeError, match=r"testcontainers could not start postgres:15: "):
        start_container()
