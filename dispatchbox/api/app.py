"""The HTTP API (FastAPI): dead events over HTTP, health, readiness and metrics.

Routes under /api need ``Authorization: Bearer <token>`` (see auth.py); /healthz, /readyz and
/metrics are open, as probes and Prometheus expect. Every handler is a thin client of
OutboxRepository and runs in the server's thread pool on connections from one psycopg pool.

Errors are JSON ``{"message": ...}`` with the status that says whose move it is: 400 a bad
filter or query parameter, 401 no or wrong token, 404 no such event, 409 the event is not dead,
422 a malformed body, 503 the database is unreachable or its schema is not current. A message
never carries a secret: database errors are redacted and a token is never echoed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Path, Query
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from dispatchbox import __version__, db, migrations
from dispatchbox import retry_batch as retry_batch_path
from dispatchbox.api.auth import ApiTokens
from dispatchbox.api.breakers import breaker_router
from dispatchbox.api.error_replies import (
    ApiError,
    error_response,
    install_error_handlers,
    redacted,
    reject,
    responses,
)
from dispatchbox.api.models import (
    FINGERPRINT_SCHEMA,
    ISO_SCHEMA,
    MAX_BIGINT,
    TEXT_SCHEMA,
    DeadEventOut,
    DeadEventPage,
    ErrorBody,
    EventDetailOut,
    FilterIn,
    RetryBatchIn,
    RetryBatchOut,
    RetryOut,
    StatsOut,
)
from dispatchbox.api.redrive_routes import add_redrive_routes
from dispatchbox.errors import (
    DatabaseUnreachable,
    InvalidEventIds,
    InvalidFilter,
    SchemaNotCurrent,
)
from dispatchbox.events import EventStatus
from dispatchbox.filters import DeadEventFilter
from dispatchbox.maintenance.alerts import AlertGroup
from dispatchbox.observability.alerting import start_evaluators
from dispatchbox.observability.database_metrics import DatabaseCollector
from dispatchbox.observability.metrics import (
    build_registry,
    multiprocess_dir,
)
from dispatchbox.redaction import redact_record
from dispatchbox.repository import GROUPINGS, MAX_PAGE, OutboxRepository

logger = logging.getLogger("dispatchbox.api")

INSECURE_ACTOR = "api"

Grouping = Literal["event_type", "aggregate_type", "destination", "error"]

# The filters, as the CLI's flags. The forms below only document what DeadEventFilter checks:
# its message is the one a client reads (400), so they are not enforced here. A function per
# parameter: FastAPI binds a Query object to the parameter it is used for, never share one.


def _text() -> Any:
    return Query(None, json_schema_extra=TEXT_SCHEMA)


def _contains() -> Any:
    return Query(
        None, description="last_error contains this, ignoring case.", json_schema_extra=TEXT_SCHEMA
    )


def _fingerprint() -> Any:
    return Query(
        None,
        description="An error group, as stats?by=error names it.",
        json_schema_extra=FINGERPRINT_SCHEMA,
    )


def _destination() -> Any:
    return Query(
        None,
        description="Only events whose delivery to this destination failed.",
        json_schema_extra=TEXT_SCHEMA,
    )


def _since() -> Any:
    return Query(None, description="Died at or after (ISO 8601).", json_schema_extra=ISO_SCHEMA)


def _until() -> Any:
    return Query(None, description="Died before (ISO 8601).", json_schema_extra=ISO_SCHEMA)


@dataclass(frozen=True)
class ApiSettings:
    dsn: str
    # None only with --insecure-no-auth: every /api route is open.
    tokens: ApiTokens | None
    # Connections the API holds at most; requests beyond wait up to pool_timeout for one.
    pool_size: int = 10
    # Seconds a request waits for a connection before it is answered 503.
    pool_timeout: float = 5.0
    # Run the Slack alert evaluator in this process when Slack is configured.
    alerts: bool = True


def _filter(**fields: str | None) -> DeadEventFilter:
    try:
        return DeadEventFilter.from_strings(**fields)
    except (ValueError, OverflowError) as exc:
        # InvalidFilter is a ValueError; a date at the edge of the calendar can overflow.
        raise InvalidFilter(str(exc) or "invalid filter") from None


def create_app(
    settings: ApiSettings,
    *,
    mount: Callable[[FastAPI, ConnectionPool[Any]], None] | None = None,
) -> FastAPI:
    """The ASGI application. The pool opens (without waiting for the database) at startup.
    ``mount`` adds what the assembler serves beside the API on the same app and pool (`dispatchbox
    serve` mounts the console at /ui): the API itself imports nothing above it."""
    pool: ConnectionPool[Any] = ConnectionPool(
        settings.dsn,
        min_size=1,
        max_size=settings.pool_size,
        timeout=settings.pool_timeout,
        open=False,
        name="dispatchbox-api",
        kwargs={"connect_timeout": 5, "application_name": "dispatchbox-api"},
        check=ConnectionPool.check_connection,
    )
    repo = OutboxRepository(pool)
    collector = DatabaseCollector(settings.dsn)
    registry = build_registry(None, multiprocess_path=multiprocess_dir(), database=collector)
    evaluator: list[AlertGroup] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        if settings.alerts:
            found = start_evaluators(settings.dsn)  # logs and returns None on failure
            if found is not None:
                evaluator.append(found)
        try:
            yield
        finally:
            for item in evaluator:
                item.stop()
            collector.close()
            pool.close()

    app = FastAPI(
        title="dispatchbox",
        version=__version__,
        summary="Dead events of a dispatchbox outbox: list, count, inspect and retry.",
        lifespan=lifespan,
    )
    install_error_handlers(app, settings.dsn)

    bearer = HTTPBearer(auto_error=False, description="DISPATCHBOX_API_TOKEN's secret")

    def actor(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> str:
        if settings.tokens is None:
            return INSECURE_ACTOR
        name = settings.tokens.verify(credentials.credentials if credentials else None)
        if name is None:
            raise ApiError(401, "missing or invalid bearer token (Authorization: Bearer <token>)")
        return name

    api = APIRouter(prefix="/api", dependencies=[Depends(actor)])

    @api.get(
        "/dead-events",
        response_model=DeadEventPage,
        responses=responses(),
        summary="List dead events (filters and pagination as the CLI's `dead-events list`)",
    )
    def list_dead_events(
        limit: int = Query(100, ge=1, le=MAX_PAGE),
        offset: int = Query(0, ge=0, le=MAX_BIGINT),
        after_id: int | None = Query(
            None, ge=0, le=MAX_BIGINT, description="Keyset page: ids greater than this."
        ),
        event_type: str | None = _text(),
        aggregate_type: str | None = _text(),
        since: str | None = _since(),
        until: str | None = _until(),
        error_contains: str | None = _contains(),
        error_fingerprint: str | None = _fingerprint(),
        destination: str | None = _destination(),
        who: str = Depends(actor),
    ) -> BaseModel:
        flt = _filter(
            event_type=event_type,
            aggregate_type=aggregate_type,
            since=since,
            until=until,
            error_contains=error_contains,
            error_fingerprint=error_fingerprint,
            destination=destination,
        )
        events = repo.fetch_dead_events(limit=limit, offset=offset, after_id=after_id, filter=flt)
        total = repo.count_dead_events(filter=flt)
        return DeadEventPage(
            items=[DeadEventOut.model_validate(redact_record(e, who)) for e in events],
            total=total,
            limit=limit,
            offset=offset,
            next_after_id=events[-1].id if len(events) == limit else None,
        )

    @api.get(
        "/dead-events/stats",
        response_model=StatsOut,
        responses=responses(),
        summary="Count dead events by event type, aggregate type, destination and normalised error",
    )
    def dead_event_stats(
        by: list[Grouping] | None = Query(
            None, description="Groupings to compute (repeat the parameter); default all four."
        ),
        event_type: str | None = _text(),
        aggregate_type: str | None = _text(),
        since: str | None = _since(),
        until: str | None = _until(),
        error_contains: str | None = _contains(),
        error_fingerprint: str | None = _fingerprint(),
        destination: str | None = _destination(),
    ) -> BaseModel:
        flt = _filter(
            event_type=event_type,
            aggregate_type=aggregate_type,
            since=since,
            until=until,
            error_contains=error_contains,
            error_fingerprint=error_fingerprint,
            destination=destination,
        )
        result = repo.dead_event_stats(filter=flt, by=list(by or GROUPINGS))
        return StatsOut.model_validate(result)

    @api.get(
        "/dead-events/{event_id:int}",
        response_model=EventDetailOut,
        responses=responses(404),
        summary="One event (any status) with its whole error history",
    )
    def get_dead_event(event_id: int = Path(ge=1), who: str = Depends(actor)) -> BaseModel:
        event = repo.get_event(event_id)
        if event is None:
            raise ApiError(404, f"no event with id {event_id}")
        return EventDetailOut.model_validate(redact_record(event, who))

    @api.post(
        "/dead-events/{event_id:int}/retry",
        response_model=RetryOut,
        responses=responses(404, 409),
        summary="Send one dead event back to pending",
    )
    def retry_dead_event(event_id: int = Path(ge=1), who: str = Depends(actor)) -> RetryOut:
        if not repo.retry_dead_event(event_id, actor=who):
            raise ApiError(404, f"no event with id {event_id}; nothing retried")
        return RetryOut(id=event_id, status=EventStatus.PENDING)

    @api.post(
        "/dead-events/retry-batch",
        response_model=RetryBatchOut,
        responses=responses(404, 409, 422),
        summary='Redrive {"ids": [...]} (all or nothing) or {"filter": {...}} (in batches)',
    )
    def retry_batch(body: RetryBatchIn, who: str = Depends(actor)) -> RetryBatchOut:
        if body.ids is not None:
            return _retry_ids(repo, body, who)
        assert body.filter is not None
        flt = _filter(**_filter_fields(body.filter))
        if body.dry_run:
            # The redrive plan's conflicts too (dispatchbox.redrive.plan), as the CLI's dry run.
            plan = repo.redrive().plan(flt, limit=body.limit)
            return RetryBatchOut(
                retried=0,
                dry_run=True,
                would_retry=plan.total,
                conflicts=plan.to_json()["conflicts"],
            )
        done = repo.retry_dead_events(flt, body.limit, actor=who)
        return RetryBatchOut(retried=done, dry_run=False)

    api.include_router(breaker_router(pool, actor))

    def not_found(message: str) -> None:
        raise ApiError(404, message)

    add_redrive_routes(api, repo, actor, not_found)
    app.include_router(api)
    if mount is not None:
        mount(app, pool)

    @app.get("/healthz", tags=["probes"], summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["probes"],
        summary="The database is reachable and its schema current",
        responses={503: {"model": ErrorBody, "description": "Not ready"}},
    )
    def readyz() -> Any:
        try:
            with db.connect(settings.dsn, autocommit=True, connect_timeout=3) as conn:
                migrations.check(conn)
        except (DatabaseUnreachable, SchemaNotCurrent) as exc:
            return error_response(503, str(exc))
        except psycopg.Error as exc:
            return error_response(503, "database error: " + redacted(exc, settings.dsn))
        return {"status": "ready"}

    @app.get(
        "/metrics",
        tags=["probes"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Exposition format"}},
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.pool = pool
    app.state.settings = settings
    return app


def _filter_fields(flt: FilterIn) -> dict[str, str | None]:
    return {
        "event_type": flt.event_type,
        "aggregate_type": flt.aggregate_type,
        "since": flt.since,
        "until": flt.until,
        "error_contains": flt.error_contains,
        "error_fingerprint": flt.error_fingerprint,
        "destination": flt.destination,
    }


def _retry_ids(repo: OutboxRepository, body: RetryBatchIn, who: str) -> RetryBatchOut:
    assert body.ids is not None
    try:
        result = retry_batch_path.retry_ids(
            repo, body.ids, actor=who, dry_run=body.dry_run, skip_invalid=body.skip_invalid
        )
    except InvalidEventIds as exc:
        reject(exc.missing, exc.not_dead)
    if result.dry_run and result.invalid and not body.skip_invalid:
        reject(result.missing, result.not_dead)
    return RetryBatchOut(
        retried=result.retried,
        dry_run=result.dry_run,
        would_retry=result.would_retry,
        missing=result.missing,
        not_dead=result.not_dead,
    )
