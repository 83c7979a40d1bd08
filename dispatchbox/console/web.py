"""The console's ASGI app: sign-in, sessions, CSRF, language, error pages, static files.

pages.py adds the pages (GET) and actions.py the forms (POST) to the app built here. Every route
but the sign-in page, the language switch and the static files needs a session; every POST needs
the session's CSRF token in its form, or it is refused with a page that says so.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment
from psycopg_pool import PoolTimeout

from dispatchbox import __version__
from dispatchbox.console import i18n
from dispatchbox.console.render import HERE, environment
from dispatchbox.console.session import (
    COOKIE,
    LANG_COOKIE,
    LOGIN_COOKIE,
    SESSION_SECONDS,
    Session,
    Signer,
    same_token,
)
from dispatchbox.console.store import ConsoleStore

logger = logging.getLogger("dispatchbox.console")

PREFIX = "/ui"
# Content-Security-Policy: our own scripts, styles and forms only; no inline script runs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class PageError(Exception):
    """An error page: a status and a translated message key with its values."""

    def __init__(self, status: int, key: str, **values: Any) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.values = values


class NeedLogin(Exception):
    """No valid session: GETs go to the sign-in page, POSTs are refused."""


@dataclass
class Console:
    """What every route needs: the store, the signer (None without tokens), the templates."""

    store: ConsoleStore
    signer: Signer | None
    templates: Environment

    def session(self, request: Request) -> Session | None:
        if self.signer is None:
            return None
        return self.signer.load(request.cookies.get(COOKIE))

    def require(self, request: Request) -> Session:
        session = self.session(request)
        if session is None:
            raise NeedLogin()
        return session

    async def form(self, request: Request, *, act: bool = True) -> tuple[Session, dict[str, str]]:
        """A POST's session and form fields, after the CSRF check (and the role check when
        ``act``: a reader may not post an action)."""
        session = self.require(request)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not same_token(session.csrf, fields.get("csrf")):
            logger.warning("console_csrf_rejected path=%s actor=%s", request.url.path, session.name)
            raise PageError(403, "error.csrf")
        if act and not session.can_act:
            logger.warning(
                "console_reader_refused path=%s actor=%s", request.url.path, session.name
            )
            raise PageError(403, "error.forbidden")
        return session, fields

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        *,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        lang = language(request)
        html = self.templates.get_template(template).render(
            t=i18n.translator(lang),
            lang=lang,
            session=session,
            csrf=session.csrf if session else "",
            can_act=bool(session and session.can_act),
            prefix=PREFIX,
            path=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            version=__version__,
            **context,
        )
        return HTMLResponse(html, status_code=status)


def language(request: Request) -> str:
    return i18n.pick(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _local(target: str | None) -> str:
    """A redirect target inside the console only (no open redirect)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/"


def create_console(store: ConsoleStore, signer: Signer | None) -> FastAPI:
    """The console app, to be mounted at /ui (see dispatchbox.api.app)."""
    from dispatchbox.console import actions, pages

    console = Console(store=store, signer=signer, templates=environment())
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if not request.url.path.startswith(PREFIX + "/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(NeedLogin)
    async def need_login(request: Request, exc: NeedLogin) -> Response:
        if request.method == "GET":
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{PREFIX}/login?next={quote(path)}", status_code=303)
        return console.render(request, "error.html", None, status=401, key="error.login", values={})

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        return console.render(
            request,
            "error.html",
            console.session(request),
            status=exc.status,
            key=exc.key,
            values=exc.values,
        )

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_down(request: Request, exc: Exception) -> Response:
        logger.warning(
            "console_database_unavailable path=%s error=%s", request.url.path, type(exc).__name__
        )
        return console.render(
            request,
            "error.html",
            console.session(request),
            status=503,
            key="error.database",
            values={},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # The type only: a message could carry a value an operator typed or a database detail.
        logger.error(
            "console_unexpected_error path=%s error=%s", request.url.path, type(exc).__name__
        )
        return console.render(
            request, "error.html", None, status=500, key="error.internal", values={}
        )

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        response = console.render(
            request,
            "login.html",
            None,
            next=_local(next),
            problem=None if signer else "login.disabled",
            login_csrf=token,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            path=PREFIX,
        )
        return response

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not same_token(request.cookies.get(LOGIN_COOKIE), fields.get("csrf")):
            raise PageError(403, "error.csrf")
        session = signer.login(fields.get("token", "")) if signer else None
        if session is None:
            # The typed token is never echoed, logged or kept.
            logger.warning(
                "console_login_failed client=%s", request.client.host if request.client else "?"
            )
            token = _login_csrf(request)
            return console.render(
                request,
                "login.html",
                None,
                status=401,
                next=_local(fields.get("next")),
                problem="login.bad" if signer else "login.disabled",
                login_csrf=token,
            )
        assert signer is not None
        logger.info("console_login actor=%s role=%s", session.name, session.role)
        response = RedirectResponse(_local(fields.get("next")), status_code=303)
        response.set_cookie(
            COOKIE,
            signer.dump(session),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            path=PREFIX,
        )
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session, _ = await console.form(request, act=False)
        logger.info("console_logout actor=%s", session.name)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    @app.get("/lang/{code}")
    def switch_language(request: Request, code: str, next: str | None = None) -> Response:
        response = RedirectResponse(_local(next), status_code=303)
        if code in i18n.LANGUAGES:
            response.set_cookie(
                LANG_COOKIE,
                code,
                max_age=365 * 86400,
                httponly=True,
                samesite="strict",
                secure=_secure(request),
                path=PREFIX,
            )
        return response

    pages.add_pages(app, console)
    actions.add_actions(app, console)
    return app


def _login_csrf(request: Request) -> str:
    # Reuse the pending sign-in's token: the cookie set with the form is still the one to match.
    return request.cookies.get(LOGIN_COOKIE) or ""
