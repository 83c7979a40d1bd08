"""The console's pages (GET): overview, dead events (listed or grouped), one event, audit trail,
and the confirmation pages that show a dry-run count before a retry or purge by filter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from dispatchbox.console.render import bars
from dispatchbox.console.session import Session
from dispatchbox.console.store import CHART_HOURS, GROUP_DESTINATION_SAMPLE, payload_checksum
from dispatchbox.console.web import Console, PageError
from dispatchbox.errors import InvalidFilter
from dispatchbox.filters import DeadEventFilter
from dispatchbox.redaction import configured, redact

FILTER_FIELDS = (
    "event_type",
    "aggregate_type",
    "since",
    "until",
    "error_contains",
    "error_fingerprint",
    "destination",
)
PAGE_SIZE = 50
# The list page counts matching events up to this many.
COUNT_CAP = 10_000
MAX_GROUPS = 100
# Defaults of the retry-by-filter form: paced so a recovering downstream is not flooded.
DEFAULT_RATE = 500
MAX_RATE = 10_000
MAX_LIMIT = 100_000
DEFAULT_PURGE_DAYS = 30


def filter_values(source: Any) -> dict[str, str]:
    """The filter fields given (non-blank) in a query string or a form."""
    out = {}
    for name in FILTER_FIELDS:
        value = source.get(name)
        if isinstance(value, str) and value.strip():
            out[name] = value.strip()
    return out


def parse_filter(values: dict[str, str]) -> DeadEventFilter:
    try:
        return DeadEventFilter.from_strings(**values)
    except (InvalidFilter, ValueError, OverflowError) as exc:
        raise PageError(400, "error.filter", reason=str(exc)) from None


def number(source: Any, name: str, default: int, low: int, high: int, label: str) -> int:
    raw = source.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise PageError(400, "error.number", field=label, low=low, high=high)
    return value


def add_pages(app: FastAPI, console: Console) -> None:
    store = console.store

    def overview_context() -> dict[str, Any]:
        data = store.overview()
        return {
            "data": data,
            "bars": bars(data.deaths, CHART_HOURS, datetime.now(UTC)),
            "breakers": store.breaker_states(),
        }

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> Response:
        session = console.require(request)
        return console.render(request, "overview.html", session, **overview_context())

    @app.get("/partials/overview", response_class=HTMLResponse)
    def overview_partial(request: Request) -> Response:
        session = console.require(request)
        return console.render(request, "overview_body.html", session, **overview_context())

    @app.get("/dead", response_class=HTMLResponse)
    def dead_events(request: Request) -> Response:
        session = console.require(request)
        values = filter_values(request.query_params)
        flt = parse_filter(values)
        view = "groups" if request.query_params.get("view") == "groups" else "events"
        context: dict[str, Any] = {"values": values, "view": view, "query": urlencode(values)}
        if view == "groups":
            found = store.error_groups(flt, top=MAX_GROUPS, destinations=True)
            context["groups"] = found.groups
            context["sample"] = f"{GROUP_DESTINATION_SAMPLE:,}"
            context["total"] = f"{found.total:,}"
        else:
            # Capped: an exact count of a million rows is the dry run's job, not every page's.
            n = store.count_capped(flt, COUNT_CAP)
            context["total"] = f"{COUNT_CAP:,}+" if n > COUNT_CAP else f"{n:,}"
            after = number(request.query_params, "after", 0, 0, 2**63 - 1, "after")
            events = store.repo.fetch_dead_events(limit=PAGE_SIZE, after_id=after, filter=flt)
            context["events"] = events
            context["next_after"] = events[-1].id if len(events) == PAGE_SIZE else None
            context["paged"] = after > 0
        return console.render(request, "dead.html", session, **context)

    @app.get("/events/{event_id:int}", response_class=HTMLResponse)
    def event_page(request: Request, event_id: int) -> Response:
        session = console.require(request)
        event = store.repo.get_event(event_id)
        if event is None:
            raise PageError(404, "error.not_found", id=event_id)
        return console.render(
            request,
            "event.html",
            session,
            event=event,
            payload=shown(event.payload, session),
            headers=shown(event.headers, session, "headers"),
            checksum=payload_checksum(event.payload),
            # A token that sees the payload masked gets no editor: it would show what is masked.
            can_edit=not configured().applies_to(session.name),
            audit=store.event_audit(event_id),
            notice=request.query_params.get("done"),
        )

    @app.get("/audit", response_class=HTMLResponse)
    def audit(request: Request) -> Response:
        session = console.require(request)
        return console.render(request, "audit.html", session, entries=store.repo.history(100))

    @app.get("/retry", response_class=HTMLResponse)
    def confirm_retry(request: Request) -> Response:
        session = console.require(request)
        values = filter_values(request.query_params)
        flt = parse_filter(values)
        # Exact, from the fingerprint mirror the redrive's own filter agrees with.
        count = store.error_groups(flt, top=0).total
        # What the redrive would run into (dispatchbox.redrive.plan), as the CLI's dry run says.
        conflicts = store.repo.redrive().plan(flt).to_json()["conflicts"] if count else {}
        return console.render(
            request,
            "confirm.html",
            session,
            kind="retry",
            values=values,
            count=count,
            conflicts={k: v for k, v in conflicts.items() if v["count"]},
            rate=DEFAULT_RATE,
            limit=min(max(count, 1), MAX_LIMIT),
            query=urlencode(values),
        )

    @app.get("/purge", response_class=HTMLResponse)
    def confirm_purge(request: Request) -> Response:
        session = console.require(request)
        values = filter_values(request.query_params)
        flt = parse_filter(values)
        days = number(
            request.query_params, "older_than_days", DEFAULT_PURGE_DAYS, 0, 36500, "older_than_days"
        )
        count = store.repo.count_archivable(days, filter=flt)
        return console.render(
            request,
            "confirm.html",
            session,
            kind="purge",
            values=values,
            count=count,
            days=days,
            query=urlencode(values),
        )


def shown(value: Any, session: Session, root: str = "payload") -> Any:
    """What of a payload (or, with ``root="headers"``, headers) the signed-in token may see:
    the paths of DISPATCHBOX_REDACT masked unless it is named in DISPATCHBOX_PAYLOAD_ROLES."""
    return redact({root: value}, session.name)[root]
