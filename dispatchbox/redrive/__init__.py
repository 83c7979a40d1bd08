"""Redrive beyond retry-batch: the dry-run plan, canary and health-paced redrives, the order in
which redriven events come back, and what changed since a deploy (issue 22).

Owns: sql/queries/redrive.sql (run through dispatchbox.data.redrive) and the table
outbox_redrive_operation. Layer: services (docs/en/architecture.md). Imports downward only:
dispatchbox.data, db, filters, records, fingerprint; never the repository
(``OutboxRepository.redrive()`` builds this service), observability, the API or the CLI, which
are its clients (cli/redrive.py, api/redrive_routes.py).
Seams for other packages: ``pacer.BreakerGate`` (a destination's circuit breaker).
"""

from dispatchbox.redrive.operation import CanaryVerdict, RedriveOperation, parse_canary
from dispatchbox.redrive.pacer import AdaptivePacer, BreakerGate, Health, NoBreakers, PaceConfig
from dispatchbox.redrive.plan import RedrivePlan, plan_redrive
from dispatchbox.redrive.service import RedriveService

__all__ = [
    "AdaptivePacer",
    "BreakerGate",
    "CanaryVerdict",
    "Health",
    "NoBreakers",
    "PaceConfig",
    "RedriveOperation",
    "RedrivePlan",
    "RedriveService",
    "parse_canary",
    "plan_redrive",
]
