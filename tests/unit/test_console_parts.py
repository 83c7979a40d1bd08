"""The console's parts that need no server: language choice, texts, session cookies, chart."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dispatchbox.api.auth import ApiTokens
from dispatchbox.console import i18n, pages
from dispatchbox.console.render import bars
from dispatchbox.console.session import Signer, parse_readers, same_token
from dispatchbox.console.store import payload_checksum, payload_diff

TEMPLATES = Path(i18n.__file__).resolve().parent / "templates"


@pytest.mark.parametrize(
    ("cookie", "header", "expected"),
    [
        (None, None, "en"),
        (None, "pl-PL,pl;q=0.9,en;q=0.8", "pl"),
        (None, "de-DE,de;q=0.9,pl;q=0.5", "pl"),
        (None, "en-GB,pl;q=0.9", "en"),
        (None, "pl;q=0.4,en;q=0.6", "en"),
        (None, "pl;q=0", "en"),
        ("en", "pl", "en"),
        ("pl", "en", "pl"),
        ("fr", "pl", "pl"),
        (None, "garbage;;;q=x", "en"),
    ],
)
def test_language_from_the_switch_then_the_browser(
    cookie: str | None, header: str | None, expected: str
) -> None:
    assert i18n.pick(cookie, header) == expected


def test_every_text_the_templates_use_exists_in_both_languages() -> None:
    used: set[str] = set()
    for path in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z_.]+)["']""", path.read_text()))
    python = (
        (TEMPLATES.parent / "pages.py").read_text()
        + (TEMPLATES.parent / "actions.py").read_text()
        + (TEMPLATES.parent / "web.py").read_text()
    )
    used |= set(re.findall(r"""["']((?:error|done|login)\.[a-z_]+)["']""", python))
    used = {k for k in used if not k.endswith((".", ".html"))}
    # Keys the templates build: "confirm." + kind + "_title", "role." + role, "filter." + name.
    used |= {"confirm.retry_title", "confirm.purge_title", "role.operator", "role.reader"}
    used |= {f"filter.{name}" for name in pages.FILTER_FIELDS}
    missing = sorted(k for k in used if k not in i18n.MESSAGES)
    assert missing == []
    for key, (en, pl) in i18n.MESSAGES.items():
        assert en.strip() and pl.strip(), key
        assert re.findall(r"{(\w+)}", en) == re.findall(r"{(\w+)}", pl), key


def test_a_session_cookie_round_trips_and_resists_tampering() -> None:
    tokens = ApiTokens.parse("alice:" + "a" * 32 + ",bob:" + "b" * 32)
    signer = Signer(tokens, parse_readers(" bob , "))
    assert signer.login("wrong") is None
    alice = signer.login("a" * 32)
    bob = signer.login("bob:" + "b" * 32)
    assert alice is not None and bob is not None
    assert (alice.name, alice.role, alice.can_act) == ("alice", "operator", True)
    assert (bob.name, bob.role, bob.can_act) == ("bob", "reader", False)
    cookie = signer.dump(alice)
    assert "a" * 32 not in cookie
    assert signer.load(cookie) == alice
    body, _, mac = cookie.partition(".")
    forged = signer.dump(bob).split(".")[0] + "." + mac
    assert signer.load(forged) is None
    assert signer.load(body + "." + mac[:-2] + "xx") is None
    assert signer.load(None) is None and signer.load("x") is None
    # Other tokens sign differently: rotating the tokens signs everybody out.
    other = Signer(ApiTokens.parse("alice:" + "c" * 32), frozenset())
    assert other.load(cookie) is None
    # A reader's demotion applies to a cookie made before it.
    demoted = Signer(tokens, frozenset({"alice"}))
    loaded = demoted.load(cookie)
    assert loaded is not None and loaded.role == "reader"


def test_an_expired_session_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = Signer(ApiTokens.parse("ops:" + "s" * 32), frozenset())
    session = signer.login("s" * 32)
    assert session is not None
    cookie = signer.dump(session)
    monkeypatch.setattr(time, "time", lambda: session.expires + 1)
    assert signer.load(cookie) is None


def test_csrf_tokens_compare_in_full() -> None:
    assert same_token("abc", "abc")
    assert not same_token("abc", "abd") and not same_token("abc", None)
    assert not same_token(None, None) and not same_token("", "")


def test_the_chart_has_one_bar_an_hour_the_newest_last() -> None:
    now = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    hour = now.replace(minute=0)
    out = bars([(hour, 10), (hour - timedelta(hours=2), 5)], 24, now)
    assert len(out) == 24
    assert [b.count for b in out[-3:]] == [5, 0, 10]
    assert out[-1].label == "12:00" and out[0].label == "13:00"
    assert out[-1].height > out[-3].height > 0 == out[-2].height


def test_checksum_ignores_key_order_and_the_diff_shows_the_change() -> None:
    assert payload_checksum({"a": 1, "b": [1, 2]}) == payload_checksum({"b": [1, 2], "a": 1})
    diff = payload_diff({"a": 1}, {"a": 1, "c": "ż"})
    assert '+  "c": "ż"' in diff and diff[0] == "--- before"
