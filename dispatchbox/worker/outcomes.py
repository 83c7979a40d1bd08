"""Outcomes: how a handler run ended, and the book of outcomes waiting to be written.

Owns the one outcome type (``Outcome``; a bare ``Delivered`` tuple for the common delivered
case), the one place that turns a handler's exception into an outcome (``OutcomeBook.outcome_of``
and, for a batch handler, ``OutcomeBook.batch_outcomes``), and the lists of outcomes recorded on
the loop until the flusher (worker/flusher.py) takes them. Handler runners (worker/handlers.py)
hand results here; nothing here runs a statement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from traceback import format_exception

from dispatchbox.data.worker import Claimed, Failure
from dispatchbox.delivery.board import DestinationPaused
from dispatchbox.dispatcher import BackoffPolicy, HandlerSpec
from dispatchbox.errors import BatchFailure, EventExpired, PermanentError, RetryLater

logger = logging.getLogger("dispatchbox.worker")

MAX_MESSAGE = 2000  # characters of an error message kept
MAX_TRACEBACK = 8000  # characters of a traceback kept (its end, where the error is)


@dataclass(slots=True)
class Outcome:
    """How one handler call ended."""

    item: Claimed
    label: str  # done | failed | timeout | permanent | expired | released
    seconds: float
    failure: Failure | None = None


# A handler that returned: (event, seconds). A tuple rather than an Outcome: one is made per
# delivered event, and a tuple costs a sixth of a dataclass instance.
Delivered = tuple[Claimed, float]


@dataclass(slots=True)
class Batch:
    """Events of one type from one claim, for one call of their batch handler."""

    event_type: str
    items: list[Claimed]


# What a handler thread or task runs, and what a thread hands back (a batch: one per event).
Run = Claimed | Batch
Result = Outcome | Delivered | list[Outcome | Delivered]


class HandlerTimeout(Exception):
    """The handler ran past its timeout."""


class LeaseUnsure(Exception):
    """The run's lease might not hold for its timeout: given back unstarted (worker/leases.py)."""


def events(run: Run) -> list[Claimed]:
    return run.items if isinstance(run, Batch) else [run]


def storable_text(value: str) -> str:
    """An error text PostgreSQL can store. Its text holds neither NUL nor lone surrogates (what
    bytes that are not UTF-8 become when a handler decodes them with "surrogateescape"), and
    either would make the whole flush fail."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class OutcomeBook:
    """Outcomes recorded on the loop, not yet written; ``ready`` wakes the flusher."""

    def __init__(
        self,
        *,
        worker: str,
        backoff: BackoffPolicy,
        handled: Callable[[str, str, float], None] | None,
        batch_settled: Callable[[int], None],
    ) -> None:
        self.worker = worker
        self.backoff = backoff
        self.handled = handled  # the hooks' per-event call; None when it does nothing
        self.batch_settled = batch_settled  # a batch of n events is settled (queue accounting)
        self.completed: list[Claimed] = []  # delivered, not yet written
        self.failed: list[tuple[Failure, str]] = []  # (failure, event_type)
        self.released: list[Claimed] = []  # never started (breaker, lease unsure): given back
        self.ready = asyncio.Event()

    def take(self) -> tuple[list[Claimed], list[tuple[Failure, str]], list[Claimed]]:
        """Everything recorded so far, for one flush."""
        done, self.completed = self.completed, []
        failed, self.failed = self.failed, []
        released, self.released = self.released, []
        return done, failed, released

    # -- recording (on the loop) ----------------------------------------------------------------

    def record_results(self, results: Sequence[Result]) -> None:
        """What handler threads or a batch handed back."""
        completed = self.completed
        handled = self.handled
        for result in results:
            if type(result) is tuple:  # delivered: the common case, inline
                item, seconds = result
                completed.append(item)
                if handled is not None:
                    handled(item.event_type, "done", seconds)
            elif type(result) is list:
                self.record_batch(result)
            else:
                assert isinstance(result, Outcome)
                self.record(result)

    def record(self, outcome: Outcome) -> None:
        """One event's outcome."""
        if outcome.label == "released":  # its breaker or its lease stopped it from starting
            self.released.append(outcome.item)
            return
        if outcome.failure is None:
            self.completed.append(outcome.item)
        else:
            self.failed.append((outcome.failure, outcome.item.event_type))
        if self.handled is not None:
            self.handled(outcome.item.event_type, outcome.label, outcome.seconds)

    def record_delivered(self, item: Claimed, seconds: float) -> None:
        """One event delivered (an async handler returned)."""
        self.completed.append(item)
        if self.handled is not None:
            self.handled(item.event_type, "done", seconds)

    def record_batch(self, outcomes: list[Outcome | Delivered]) -> None:
        """A batch's outcomes, one per event of the batch."""
        self.batch_settled(len(outcomes))
        self.record_results(outcomes)

    # -- exceptions into outcomes ---------------------------------------------------------------

    def outcome_of(
        self, item: Claimed, spec: HandlerSpec | None, exc: BaseException, start: float, label: str
    ) -> Outcome:
        """The one place an exception from one event's handler run becomes its outcome. With a
        label (timeout, shutdown, failed for a missing handler) the worker gave up on the run:
        a failed attempt without a traceback."""
        seconds = time.monotonic() - start
        if label:
            return Outcome(item, label, seconds, self.failure(item, spec, exc, start, tb=False))
        if isinstance(exc, (DestinationPaused, LeaseUnsure)):  # never started: given back
            return Outcome(item, "released", 0.0)
        if isinstance(exc, EventExpired):
            failure = self.failure(item, spec, exc, start, permanent=True, tb=False)
            return Outcome(item, "expired", seconds, failure)
        if isinstance(exc, PermanentError):
            failure = self.failure(item, spec, exc, start, permanent=True)
            return Outcome(item, "permanent", seconds, failure)
        return Outcome(item, "failed", seconds, self.failure(item, spec, exc, start))

    def batch_outcomes(
        self, batch: Batch, spec: HandlerSpec, exc: BaseException, start: float, label: str = ""
    ) -> list[Outcome | Delivered]:
        """Each event's outcome when a batch handler raised: a BatchFailure fails the events it
        names, any other exception all of them. A traceback is formatted once per exception."""
        seconds = time.monotonic() - start
        if isinstance(exc, (DestinationPaused, LeaseUnsure)):
            return [Outcome(item, "released", 0.0) for item in batch.items]
        if isinstance(exc, BatchFailure):
            errors: dict[int, BaseException] = exc.failures
            unknown = errors.keys() - {item.id for item in batch.items}
            if unknown:
                logger.warning(
                    "batch_failure_unknown_ids worker=%s event_type=%s ids=%s: not in the batch, "
                    "ignored",
                    self.worker,
                    batch.event_type,
                    sorted(unknown)[:20],
                )
        else:
            errors = {item.id: exc for item in batch.items}
        tracebacks: dict[int, str] = {}  # id(exception) -> its formatted traceback
        out: list[Outcome | Delivered] = []
        for item in batch.items:
            error = errors.get(item.id)
            if error is None:
                out.append((item, seconds))
                continue
            permanent = isinstance(error, PermanentError)
            tb: str | bool = False  # the worker gave up on the call (label): no traceback
            if not label:
                tb = tracebacks.get(id(error)) or ""
                if not tb:
                    tb = tracebacks[id(error)] = "".join(format_exception(error))
            failure = self.failure(item, spec, error, start, permanent=permanent, tb=tb)
            outcome_label = label or ("permanent" if permanent else "failed")
            out.append(Outcome(item, outcome_label, seconds, failure))
        return out

    def failure(
        self,
        item: Claimed,
        spec: HandlerSpec | None,
        exc: BaseException,
        mono_start: float,
        *,
        permanent: bool = False,
        tb: bool | str = True,  # or one already formatted
    ) -> Failure:
        """The failed attempt to record for one event."""
        policy = (spec.backoff if spec else None) or self.backoff
        text = None
        if isinstance(tb, str):
            text = tb[-MAX_TRACEBACK:]
        elif tb:
            text = "".join(format_exception(exc))[-MAX_TRACEBACK:]
        return Failure(
            id=item.id,
            token=item.token,
            error_type=exc.error_type if isinstance(exc, EventExpired) else type(exc).__name__,
            message=storable_text((str(exc) or type(exc).__name__)[:MAX_MESSAGE]),
            traceback=None if text is None else storable_text(text),
            # Monotonic readings; the fail statement turns them into the database's clock.
            started=mono_start,
            finished=time.monotonic(),
            permanent=permanent,
            # A handler that knows when to try again (a Retry-After) overrides the backoff.
            delay=exc.retry_after
            if isinstance(exc, RetryLater) and exc.retry_after is not None
            else policy.delay(item.attempts),
            destination=spec.destination if spec else None,
        )
