"""An app with three destinations for the breaker and rate-limit tests, run by real workers.

- ``ledger.post`` -> destination ``ledger``: fails with ConnectionRefusedError while the file
  ``$DBX_CONTROL_DIR/ledger.down`` exists (the outage, made and ended by the test); a breaker
  with a short cool-down; a health check reading the same file when DBX_HEALTH_CHECK=1;
  replay of the outage's transient deaths; ``ledger.bad`` raises PermanentError (never replayed).
- ``mail.send`` -> ``mail`` and ``audit.log`` -> ``audit``: always deliver.
- ``metered.send`` -> ``metered``: rate-limited to $DBX_RATE events per second.

Every call appends "<kind> <id> <attempts> <pid> <unix time>" to a per-process file in
$DBX_RECORD_DIR, as tests/worker_app.py does.
"""

from __future__ import annotations

import os
from pathlib import Path

from dispatchbox import BreakerPolicy, Dispatcher, OutboxEvent, PermanentError
from tests.worker_app import record

dispatcher = Dispatcher()
CONTROL = Path(os.environ.get("DBX_CONTROL_DIR", "."))
COOLDOWN = float(os.environ.get("DBX_COOLDOWN", "1"))


def ledger_down() -> bool:
    return (CONTROL / "ledger.down").exists()


def ledger_health() -> None:
    if ledger_down():
        raise ConnectionRefusedError("ledger health check: connection refused")


dispatcher.destination(
    "ledger",
    breaker=BreakerPolicy(failures=5, cooldown=COOLDOWN, max_cooldown=COOLDOWN * 4),
    health_check=ledger_health if os.environ.get("DBX_HEALTH_CHECK") == "1" else None,
    replay_dead_on_recovery=True,
)
dispatcher.destination("mail", breaker=BreakerPolicy(cooldown=COOLDOWN))
dispatcher.destination(
    "metered",
    breaker=None,
    rate_limit=float(os.environ.get("DBX_RATE", "100")),
    burst=float(os.environ.get("DBX_BURST", "10")),
)


@dispatcher.handler("ledger.post", destination="ledger")
def post(event: OutboxEvent) -> None:
    record("call", event)
    if ledger_down():
        raise ConnectionRefusedError(f"ledger refused order {event.aggregate_id}")


@dispatcher.handler("ledger.bad", destination="ledger")
def bad(event: OutboxEvent) -> None:
    record("call", event)
    raise PermanentError("the ledger rejects this entry")


@dispatcher.handler("mail.send", destination="mail")
def mail(event: OutboxEvent) -> None:
    record("call", event)


@dispatcher.handler("audit.log", destination="audit")
async def audit(event: OutboxEvent) -> None:
    record("call", event)


@dispatcher.handler("metered.send", destination="metered")
def metered(event: OutboxEvent) -> None:
    record("call", event)
