"""Bearer tokens for the HTTP API (DISPATCHBOX_API_TOKEN).

The variable holds one token or several, comma-separated. Each is ``name:secret`` or just
``secret`` (named "api"); the name is what the audit trail records as the actor of a retry. A
client sends ``Authorization: Bearer <secret>`` (the whole ``name:secret`` is accepted too).
Every configured token is compared, in constant time, whatever matched first, so the time a
check takes says nothing about which token or how much of it was right.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

from dispatchbox.errors import ConfigurationError

TOKEN_ENV = "DISPATCHBOX_API_TOKEN"  # noqa: S105 - the variable's name, not a secret
DEFAULT_NAME = "api"
# Shorter secrets are accepted with a warning: they can be guessed.
WEAK_BELOW = 16

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes = field(repr=False)
    full: bytes = field(repr=False)  # "name:secret" as configured, also accepted


@dataclass(frozen=True)
class ApiTokens:
    tokens: tuple[Token, ...]

    @classmethod
    def parse(cls, value: str) -> ApiTokens:
        """Read the variable's value; ConfigurationError (never echoing a secret) if malformed."""
        tokens: list[Token] = []
        for position, raw in enumerate(value.split(","), start=1):
            entry = raw.strip()
            if not entry:
                raise ConfigurationError(f"{TOKEN_ENV}: token {position} is empty")
            name, sep, secret = entry.partition(":")
            if not sep or not _NAME.match(name):
                name, secret = DEFAULT_NAME, entry
            if not secret:
                raise ConfigurationError(f"{TOKEN_ENV}: token {position} ({name}) has no secret")
            tokens.append(Token(name, secret.encode(), entry.encode()))
        names = [t.name for t in tokens]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"{TOKEN_ENV}: two tokens share a name")
        return cls(tuple(tokens))

    def weak(self) -> list[str]:
        """Names of tokens whose secret is short enough to guess."""
        return [t.name for t in self.tokens if len(t.secret) < WEAK_BELOW]

    def verify(self, presented: str | None) -> str | None:
        """The matching token's name, or None."""
        if presented is None:
            return None
        given = presented.encode("utf-8", "surrogateescape")
        matched: str | None = None
        for token in self.tokens:
            # No short-circuit: every comparison runs, and each is constant-time.
            hit = hmac.compare_digest(given, token.secret) | hmac.compare_digest(given, token.full)
            if hit and matched is None:
                matched = token.name
        return matched
