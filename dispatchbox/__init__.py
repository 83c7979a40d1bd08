"""dispatchbox: a transactional outbox for PostgreSQL with a complete dead-letter lifecycle."""

from dispatchbox.delivery.backpressure import set_backlog_limit
from dispatchbox.delivery.config import BreakerPolicy
from dispatchbox.dispatcher import BackoffPolicy, Dispatcher
from dispatchbox.errors import (
    BacklogFullError,
    BatchFailure,
    EventExpired,
    PermanentError,
    RetryLater,
)
from dispatchbox.events import EventStatus, OutboxEvent
from dispatchbox.publish import publish, publish_many
from dispatchbox.repository import OutboxRepository

__all__ = [
    "BacklogFullError",
    "BackoffPolicy",
    "BatchFailure",
    "BreakerPolicy",
    "Dispatcher",
    "EventExpired",
    "EventStatus",
    "OutboxEvent",
    "OutboxRepository",
    "PermanentError",
    "RetryLater",
    "publish",
    "publish_many",
    "set_backlog_limit",
]

__version__ = "0.1.0"
