"""A paced redrive asks the delivery controls' breakers which of its destinations are down: the
gate reads the shared breaker table, as every worker does."""

from __future__ import annotations

import psycopg

from dispatchbox import OutboxRepository
from dispatchbox.delivery import admin
from dispatchbox.redrive.operation import DatabaseBreakers
from tests.acceptance.test_cli_breakers import _breaker


def test_the_gate_names_the_destinations_whose_breaker_is_not_closed(db_dsn: str) -> None:
    _breaker(db_dsn, "ledger")
    _breaker(db_dsn, "mailer")
    gate = DatabaseBreakers(OutboxRepository(db_dsn).connection)
    assert gate.open_destinations(["ledger", "mailer", "nobody"]) == set()
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        admin.open_breaker(conn, "ledger", actor="test")
    assert gate.open_destinations(["ledger", "mailer", "nobody"]) == {"ledger"}
    assert gate.open_destinations(["mailer"]) == set()
    assert gate.open_destinations([]) == set()
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        admin.close_breaker(conn, "ledger", actor="test")
    assert gate.open_destinations(["ledger"]) == set()


def test_a_redrive_service_uses_the_breakers_unless_given_another_gate(db_dsn: str) -> None:
    service = OutboxRepository(db_dsn).redrive()
    assert isinstance(service.gate, DatabaseBreakers)
