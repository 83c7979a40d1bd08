"""dispatchbox: a transactional outbox for PostgreSQL with a complete dead-letter lifecycle."""

from dispatchbox.delivery.config import BreakerPolicy
from dispatchbox.dispatcher import BackoffPolicy, Dispatcher
from dispatchbox.errors import BatchFailure, PermanentError, RetryLater
from dispatchbox.events import EventStatus, OutboxEvent
from dispatchbox.publish import publish, publish_many
from dispatchbox.repository import OutboxRepository

__all__ = [
    "BackoffPolicy",
    "BatchFailure",
    "BreakerPolicy",
    "Dispatcher",
    "EventStatus",
    "OutboxEvent",
    "OutboxRepository",
    "PermanentError",
    "RetryLater",
    "publish",
    "publish_many",
]

__version__ = "0.1.0"
