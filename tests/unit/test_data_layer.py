"""The data layer's rules: cardinality markers on every named query, checked by the loader and
by the execution functions, and only dispatchbox.data imports dispatchbox.data.queries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dispatchbox.data import queries

PACKAGE = Path(queries.__file__).resolve().parent.parent


def test_every_header_carries_a_known_cardinality_marker() -> None:
    found = queries.all_queries()
    assert len(found) > 100
    assert {q.cardinality for q in found.values()} == set(queries.Cardinality)
    assert found["dead_list"].cardinality is queries.Cardinality.MANY
    assert found["dead_count"].cardinality is queries.Cardinality.ONE
    assert found["publish_copy"].cardinality is queries.Cardinality.COPY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: a\nSELECT 1\n", "needs a name and a cardinality marker"),
        ("-- name: a :\nSELECT 1\n", "needs a name and a cardinality marker"),
        ("-- name: a :some\nSELECT 1\n", "unknown marker :some"),
        ("-- name: a :one\n", "is empty"),
    ],
)
def test_the_loader_refuses_a_query_without_a_marker(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        queries.parse(text)


def test_includes_are_spliced_with_their_indent_and_unknown_ones_refused() -> None:
    parsed = queries.parse(
        "-- name: a :one\nSELECT 1\n  WHERE true\n  -- include: dead_event_filter\n"
    )
    lines = parsed["a"].splitlines()
    assert lines[2] == "  " + queries.fragment("dead_event_filter").splitlines()[0]
    with pytest.raises(ValueError, match="no SQL fragment named 'nope'"):
        queries.parse("-- name: a :one\nSELECT 1\n-- include: nope\n")


def _imports_queries(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "dispatchbox.data"
            and any(alias.name == "queries" for alias in node.names)
        ):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "dispatchbox.data.queries":
            return True
        if isinstance(node, ast.Import) and any(
            alias.name == "dispatchbox.data.queries" for alias in node.names
        ):
            return True
    return False


def test_only_the_data_layer_imports_the_named_queries() -> None:
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if _imports_queries(path)
    }
    outside = {p for p in importers if not p.startswith("data/")}
    assert not outside, f"import dispatchbox.data.* functions instead: {sorted(outside)}"
