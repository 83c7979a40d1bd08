"""Console sign-in: an API token becomes a signed session cookie; roles and CSRF tokens.

The operator types a token of DISPATCHBOX_API_TOKEN once (``name:secret``, as the API takes
it). The console checks it with the API's own ApiTokens and answers with a session cookie that
holds the token's name, its role, an expiry and a CSRF token, signed with HMAC-SHA256 under a
key derived from the configured tokens: the secret itself is never stored in the cookie, never
rendered, never logged; every `dispatchbox serve` configured with the same tokens accepts the same
cookie (no server-side session table), and changing the tokens signs everybody out.

Roles: ``operator`` may act, ``reader`` may only look. A token is a reader when its name is
listed in DISPATCHBOX_API_READERS (comma-separated names). ``role_of`` is the one place that
decides, so database roles (dispatchbox_reader, dispatchbox_operator) plug in there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from dispatchbox.api.auth import ApiTokens

Role = Literal["operator", "reader"]
READERS_ENV = "DISPATCHBOX_API_READERS"
COOKIE = "dispatchbox_session"
LOGIN_COOKIE = "dispatchbox_login"  # the login form's CSRF token, before there is a session
LANG_COOKIE = "dispatchbox_lang"
# A session lasts a working shift; then the operator types the token again.
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    """Who is signed in: the token's name (the audit trail's actor), role, CSRF token."""

    name: str
    role: Role
    csrf: str
    expires: int

    @property
    def can_act(self) -> bool:
        return can_act(self.role)


def can_act(role: Role) -> bool:
    """Whether a role may retry, edit, purge or switch breakers."""
    return role == "operator"


def parse_readers(value: str | None) -> frozenset[str]:
    return frozenset(n.strip() for n in (value or "").split(",") if n.strip())


def role_of(name: str, readers: frozenset[str]) -> Role:
    """The role of a token's name (the single place roles are decided)."""
    return "reader" if name in readers else "operator"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and checks session cookies with a key derived from the configured tokens."""

    def __init__(self, tokens: ApiTokens, readers: frozenset[str]) -> None:
        material = b"\x00".join(t.full for t in tokens.tokens)
        self._key = hmac.new(b"dispatchbox-console-session-v1", material, hashlib.sha256).digest()
        self._tokens = tokens
        self._readers = readers
        self._names = {t.name for t in tokens.tokens}

    def login(self, presented: str) -> Session | None:
        """A new session for a valid token, else None."""
        name = self._tokens.verify(presented.strip() or None)
        if name is None:
            return None
        return Session(
            name=name,
            role=role_of(name, self._readers),
            csrf=secrets.token_urlsafe(24),
            expires=int(time.time()) + SESSION_SECONDS,
        )

    def dump(self, session: Session) -> str:
        body = _b64(
            json.dumps(
                {"n": session.name, "r": session.role, "c": session.csrf, "e": session.expires},
                separators=(",", ":"),
            ).encode()
        )
        return f"{body}.{self._sign(body)}"

    def load(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None when it is missing, forged, expired or revoked."""
        if not cookie or "." not in cookie or len(cookie) > 1000:
            return None
        body, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            data = json.loads(_unb64(body))
            session = Session(
                name=str(data["n"]), role=data["r"], csrf=str(data["c"]), expires=int(data["e"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < time.time() or session.name not in self._names:
            return None
        # The role is decided now, not when the cookie was made: demoting a token takes effect.
        return Session(
            session.name, role_of(session.name, self._readers), session.csrf, session.expires
        )

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


def same_token(expected: str | None, presented: str | None) -> bool:
    """Constant-time comparison of two CSRF tokens; False when either is missing."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
