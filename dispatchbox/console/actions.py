"""The console's actions (POST): retry one, edit and redrive, retry or purge by filter (a group
is a filter on its error fingerprint), open or close a breaker.

Each checks the session's CSRF token and role first (Console.form), then calls the repository's
own operation with the signed-in token's name as the actor, so the audit trail names who did it.
Blocking work runs in the server's thread pool.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dispatchbox import redaction
from dispatchbox.console.pages import (
    DEFAULT_PURGE_DAYS,
    DEFAULT_RATE,
    MAX_LIMIT,
    MAX_RATE,
    filter_values,
    number,
    parse_filter,
)
from dispatchbox.console.web import PREFIX, Console, PageError
from dispatchbox.errors import EventNotDead

logger = logging.getLogger("dispatchbox.console")


def add_actions(app: FastAPI, console: Console) -> None:
    store = console.store

    @app.post("/events/{event_id:int}/retry")
    async def retry_one(request: Request, event_id: int) -> Response:
        session, _ = await console.form(request)
        try:
            found = await run_in_threadpool(
                store.repo.retry_dead_event, event_id, actor=session.name
            )
        except EventNotDead:
            raise PageError(409, "error.not_dead", id=event_id) from None
        if not found:
            raise PageError(404, "error.not_found", id=event_id)
        logger.info("console_retry actor=%s event=%d", session.name, event_id)
        return RedirectResponse(f"{PREFIX}/events/{event_id}?done=retried", status_code=303)

    @app.post("/events/{event_id:int}/edit")
    async def edit_and_redrive(request: Request, event_id: int) -> Response:
        session, fields = await console.form(request)
        if redaction.configured().applies_to(session.name):
            # It was shown a masked payload: saving the form would write the masks back.
            raise PageError(403, "error.redacted")
        try:
            payload = json.loads(fields.get("payload", ""))
        except json.JSONDecodeError as exc:
            raise PageError(
                400, "error.json", reason=f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        try:
            result = await run_in_threadpool(
                store.edit_and_redrive, event_id, payload, actor=session.name
            )
        except EventNotDead:
            raise PageError(409, "error.not_dead", id=event_id) from None
        except ValueError as exc:
            raise PageError(400, "error.json", reason=str(exc)) from None
        if result is None:
            raise PageError(404, "error.not_found", id=event_id)
        logger.info(
            "console_edit_redrive actor=%s event=%d audit=%d",
            session.name,
            event_id,
            result.audit_id,
        )
        return RedirectResponse(f"{PREFIX}/events/{event_id}?done=edited", status_code=303)

    @app.post("/retry", response_class=HTMLResponse)
    async def retry_filter(request: Request) -> Response:
        session, fields = await console.form(request)
        flt = parse_filter(filter_values(fields))
        rate = number(fields, "rate", DEFAULT_RATE, 1, MAX_RATE, "rate")
        limit = number(fields, "limit", MAX_LIMIT, 1, MAX_LIMIT, "limit")
        done = await run_in_threadpool(
            store.repo.retry_dead_events, flt, limit, actor=session.name, rate=float(rate)
        )
        logger.info("console_retry_filter actor=%s retried=%d", session.name, done)
        return console.render(
            request, "result.html", session, key="done.retried", values={"n": done}
        )

    @app.post("/purge", response_class=HTMLResponse)
    async def purge(request: Request) -> Response:
        session, fields = await console.form(request)
        flt = parse_filter(filter_values(fields))
        days = number(fields, "older_than_days", DEFAULT_PURGE_DAYS, 0, 36500, "older_than_days")
        moved = await run_in_threadpool(
            store.repo.cleanup_old_dead_events, days, filter=flt, actor=session.name
        )
        logger.info("console_purge actor=%s moved=%d", session.name, moved)
        return console.render(
            request, "result.html", session, key="done.purged", values={"n": moved}
        )

    @app.post("/breakers/{name}/{operation}", response_class=HTMLResponse)
    async def breaker(request: Request, name: str, operation: str) -> Response:
        session, _ = await console.form(request)
        source = store.breakers
        if source is None or operation not in ("open", "close"):
            raise PageError(404, "error.no_breakers")
        switch = source.open_breaker if operation == "open" else source.close_breaker
        if not await run_in_threadpool(switch, name, actor=session.name):
            raise PageError(404, "error.unknown_breaker", name=name)
        logger.info(
            "console_breaker actor=%s breaker=%s operation=%s", session.name, name, operation
        )
        return console.render(
            request,
            "result.html",
            session,
            key="done.breaker",
            values={"name": name, "state": operation},
        )
