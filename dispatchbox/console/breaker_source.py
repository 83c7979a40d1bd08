"""The console's BreakerSource over the delivery controls' breakers (dispatchbox.delivery.admin):
the same reads and audited operator actions as `dispatchbox breakers` and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from dispatchbox.delivery import admin


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """One breaker as the overview shows it."""

    name: str
    state: str  # closed | open | half_open
    since: datetime


class DeliveryBreakers:
    """Lists, opens and closes breakers on the console's pool, audited with the operator's name.
    Asking for the state a breaker is already in changes nothing and is not an error."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool

    def list_breakers(self) -> list[BreakerRow]:
        with self.pool.connection() as conn:
            rows = admin.list_breakers(conn)
        return [BreakerRow(b.destination, b.state, b.changed_at) for b in rows]

    def open_breaker(self, name: str, *, actor: str) -> bool:
        return self._switch(admin.open_breaker, name, actor)

    def close_breaker(self, name: str, *, actor: str) -> bool:
        return self._switch(admin.close_breaker, name, actor)

    def _switch(self, action: Any, name: str, actor: str) -> bool:
        try:
            with self.pool.connection() as conn:
                action(conn, name, actor=actor)
        except admin.BreakerNotFound:
            return False
        except admin.BreakerStateError:
            return True  # already as asked
        return True
