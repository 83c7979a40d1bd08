"""DeadEventFilter validation, CSV neutralisation, and the shared filter block in the SQL."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from dispatchbox.data import queries
from dispatchbox.errors import ExportError, InvalidFilter
from dispatchbox.export import CSV_COLUMNS, ExportFormat, Writer, neutralise
from dispatchbox.filters import DeadEventFilter, parse_timestamp


def test_empty_filter_and_params() -> None:
    flt = DeadEventFilter()
    assert flt.is_empty
    assert flt.params() == {
        "event_type": None,
        "aggregate_type": None,
        "since": None,
        "until": None,
        "error_like": None,
        "error_fingerprint": None,
        "destination": None,
        "error_contains": None,
    }
    assert flt.to_json() == {}


def test_error_contains_is_matched_literally() -> None:
    flt = DeadEventFilter(error_contains=r"100% of a_b\c")
    assert flt.params()["error_like"] == r"%100\% of a\_b\\c%"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event_type": ""}, "event_type must not be empty"),
        ({"aggregate_type": "   "}, "aggregate_type must not be empty"),
        ({"error_contains": "a\x00b"}, "NUL"),
        ({"since": datetime(2024, 1, 1)}, "since must be timezone-aware"),
        ({"until": "2024-01-01"}, "until must be a datetime"),
        (
            {"since": datetime(2024, 2, 1, tzinfo=UTC), "until": datetime(2024, 1, 1, tzinfo=UTC)},
            "since must be earlier than until",
        ),
        ({"error_fingerprint": "XYZ"}, "12 lowercase hex digits"),
        ({"event_type": 5}, "event_type must be a string"),
    ],
)
def test_invalid_filters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidFilter, match=message):
        DeadEventFilter(**kwargs)  # type: ignore[arg-type]


def test_invalid_filter_is_a_usage_error_and_a_value_error() -> None:
    assert InvalidFilter.exit_code == 2
    assert issubclass(InvalidFilter, ValueError)


def test_from_strings_parses_dates_and_fingerprints() -> None:
    flt = DeadEventFilter.from_strings(
        since="2024-05-01T12:00:00Z", until="2024-05-02", error_fingerprint=" ABCDEF012345 "
    )
    assert flt.since == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert flt.until is not None and flt.until.tzinfo is not None
    assert flt.error_fingerprint == "abcdef012345"
    assert flt.to_json()["since"] == "2024-05-01T12:00:00+00:00"


def test_timestamps_without_offset_are_local_time() -> None:
    parsed = parse_timestamp("since", "2024-05-01T12:00:00")
    assert parsed.tzinfo is not None
    assert parsed.replace(tzinfo=None) == datetime(2024, 5, 1, 12)
    with_offset = parse_timestamp("since", "2024-05-01T12:00:00+02:00")
    assert with_offset.utcoffset() == timedelta(hours=2)
    assert with_offset.tzinfo == timezone(timedelta(hours=2))


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "01/05/2024", ""])
def test_bad_timestamps_say_what_was_expected(text: str) -> None:
    with pytest.raises(InvalidFilter, match="ISO 8601"):
        parse_timestamp("since", text)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("plain", "plain"),
        ('{"a": "=1"}', '{"a": "=1"}'),
        (None, ""),
    ],
)
def test_csv_cells_are_neutralised(cell: str | None, expected: str) -> None:
    assert neutralise(cell) == expected


def test_csv_writer_output_parses_back() -> None:
    out = io.StringIO()
    writer = Writer(out, ExportFormat.CSV)
    writer.begin()
    row = dict.fromkeys(CSV_COLUMNS, "x")
    row["last_error"] = '=cmd|"/c calc"!A0\nsecond line'
    writer.write_chunk([row])
    writer.end()
    parsed = list(csv.reader(io.StringIO(out.getvalue())))
    assert parsed[0] == list(CSV_COLUMNS)
    assert parsed[1][CSV_COLUMNS.index("last_error")] == "'" + row["last_error"]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_empty_json_exports_are_valid(fmt: str) -> None:
    out = io.StringIO()
    writer = Writer(out, ExportFormat(fmt))
    writer.begin()
    writer.write_docs([])
    writer.end()
    assert out.getvalue() == ("[]\n" if fmt == "json" else "")


def test_json_writers_join_documents() -> None:
    for fmt, expected in (
        ("jsonl", '{"a":1}\n{"b":"ü"}\n'),
        ("json", '[\n{"a":1},\n{"b":"ü"}\n]\n'),
    ):
        out = io.StringIO()
        writer = Writer(out, ExportFormat(fmt))
        writer.begin()
        writer.write_chunk([{"doc": '{"a":1}'}])
        writer.write_docs(['{"b":"ü"}'])
        writer.end()
        assert out.getvalue() == expected
        assert writer.count == 2


def test_unknown_export_format() -> None:
    with pytest.raises(ExportError, match="unknown export format 'xml'"):
        ExportFormat.parse("xml")


def _raw_queries() -> dict[str, str]:
    """Every query's text as written in its file, before fragments are spliced in."""
    out: dict[str, str] = {}
    for path in (queries.sql_dir() / "queries").glob("*.sql"):
        parts = re.split(r"^-- name: (\w+) :\w+$", path.read_text(), flags=re.MULTILINE)
        out.update(zip(parts[1::2], parts[2::2], strict=True))
    return out


def test_the_filter_block_has_one_definition_every_filtered_query_includes() -> None:
    block = [line.strip() for line in queries.fragment("dead_event_filter").splitlines()]
    raw = _raw_queries()
    users = {name for name, body in raw.items() if "-- include: dead_event_filter" in body}
    assert users == {
        "dead_list",
        "dead_count",
        "dead_stats_totals",
        "dead_export_json",
        "dead_export_csv",
        "dead_count_older_than",
        "dead_archive_batch",
        "console_dead_count_capped",
        "checksum_mismatch_dead",
        "redrive_plain_batch",
        "redrive_plan_totals",
        "redrive_plan_groups",
        "redrive_plan_conflicts",
        "redrive_canary_sample",
        "redrive_baseline",
        "redrive_ordered_batch",
    }
    for name, body in raw.items():
        written = [line.strip() for line in body.splitlines()]
        # No query spells the whole block out again: the filter has one definition.
        assert not all(line in written for line in block), name
        if name in users:
            spliced = [line.strip() for line in queries.query(name).decode().splitlines()]
            assert "-- include: dead_event_filter" not in spliced
            start = spliced.index(block[0])
            assert spliced[start : start + len(block)] == block, name
    text = (queries.sql_dir() / "queries" / "dead_letters.sql").read_text()
    # Stats and redrive by filter call migration 0005's functions, which hold their own copy.
    for name in ("dead_stats_by_event_type", "dead_stats_by_error", "dead_redrive_batch"):
        assert "%(error_contains)s" in queries.parse(text)[name]


def test_no_query_spells_out_a_fragment_again() -> None:
    raw = _raw_queries()
    fragments = sorted(p.stem for p in (queries.sql_dir() / "fragments").glob("*.sql"))
    assert {"dead_event_filter", "redrive_locked_held", "redrive_not_held"} <= set(fragments)
    for fragment in fragments:
        block = [line.strip() for line in queries.fragment(fragment).splitlines()]
        for name, body in raw.items():
            written = [line.strip() for line in body.splitlines()]
            # Half the block written out in a row is a copy (the shortest fragment has 4 lines).
            size = max(2, len(block) // 2)
            windows = {tuple(block[i : i + size]) for i in range(len(block) - size + 1)}
            rows = {tuple(written[i : i + size]) for i in range(len(written) - size + 1)}
            assert not windows & rows, f"{name} spells out part of sql/fragments/{fragment}.sql"
    # Both redrive batches share their row locks and the held-aggregate rule.
    for name in ("redrive_plain_batch", "redrive_ordered_batch"):
        text = queries.query(name).decode()
        for fragment in ("redrive_locked_held", "redrive_not_held"):
            assert f"-- include: {fragment}" in raw[name]
            assert queries.fragment(fragment).splitlines()[0].strip() in text
