"""Error normalisation (dispatchbox.fingerprint), the Python twin of outbox_error_signature.

The agreement with the SQL function is checked on a real PostgreSQL in
tests/integration/test_repository.py; here the rules themselves.
"""

from __future__ import annotations

import pytest

from dispatchbox.fingerprint import fingerprint, signature


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("KeyError: 'customer_42'", "KeyError: '?'"),
        ('LookupError: no row for "abc"', 'LookupError: no row for "?"'),
        (
            "ValueError: order 12345 has invalid amount 12.50",
            "ValueError: order <n> has invalid amount <n>",
        ),
        (
            "TimeoutError: request 3f2a9c1e-0b7d-4e8a-9f00-1234567890ab timed out",
            "TimeoutError: request <uuid> timed out",
        ),
        ("MemoryError: bad address 0x7ffd3a2b", "MemoryError: bad address <hex>"),
        ("TraceError: span 4bf92f3577b34da6a3ce929d0e0e4736", "TraceError: span <hex>"),
        # the exception type is kept even when it holds digits
        ("Http2Error: stream 7 reset", "Http2Error: stream <n> reset"),
        (
            "psycopg.errors.UniqueViolation: key (id)=(9) exists",
            "psycopg.errors.UniqueViolation: key (id)=(<n>) exists",
        ),
        # first line only, blanks collapsed and trimmed
        (
            "RuntimeError: boom   at\t step 3\nTraceback (most recent call last):\n  ...",
            "RuntimeError: boom at step <n>",
        ),
        ("  no type prefix 42 ", "no type prefix <n>"),
        ("", ""),
    ],
)
def test_signature_masks_variable_parts(error: str, expected: str) -> None:
    assert signature(error) == expected


def test_messages_differing_only_by_ids_share_a_fingerprint() -> None:
    prints = {fingerprint(f"KeyError: order {n} not found (ref 'R-{n}')") for n in range(40_000)}
    assert len(prints) == 1


def test_different_errors_have_different_fingerprints() -> None:
    a = fingerprint("KeyError: order 1 not found")
    b = fingerprint("ValueError: order 1 not found")
    c = fingerprint("KeyError: customer 1 not found")
    assert len({a, b, c}) == 3


def test_fingerprint_shape_and_missing_error() -> None:
    value = fingerprint("KeyError: 'x'")
    assert len(value) == 12 and all(ch in "0123456789abcdef" for ch in value)
    assert fingerprint(None) == "none"


def test_long_errors_are_bounded() -> None:
    long = "ValueError: " + "x" * 10_000
    assert len(signature(long)) == 500
    assert signature(long) == signature(long + "tail that is cut anyway")
