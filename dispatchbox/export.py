"""Writers for dead-event exports: json (one array), jsonl (one object a line) and csv.

The repository streams rows from a server-side cursor in chunks and hands each chunk here, so an
export holds one chunk in memory whatever its size. JSON rows arrive as JSON
documents built by PostgreSQL (payloads stay exactly as stored); CSV rows arrive as text columns.

CSV cells are neutralised against spreadsheet formula injection (OWASP): a cell that starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``, so a spreadsheet shows
it as text instead of evaluating it.
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Mapping, Sequence
from typing import TextIO

from dispatchbox import redaction
from dispatchbox.errors import ExportError


class ExportFormat(enum.StrEnum):
    JSON = "json"
    JSONL = "jsonl"
    CSV = "csv"

    @classmethod
    def parse(cls, value: str) -> ExportFormat:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(f.value for f in cls)
            raise ExportError(f"unknown export format {value!r} (choose {choices})") from None


# The columns of a CSV export, in the order of the dead_export_csv query.
CSV_COLUMNS = (
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "destination",
    "status",
    "attempts",
    "max_attempts",
    "priority",
    "idempotency_key",
    "created_at",
    "dead_at",
    "last_error",
    "last_error_at",
    "error_fingerprint",
    "redrive_count",
    "last_redriven_at",
    "last_redriven_by",
    "headers",
    "payload",
    "payload_sha256",
    "payload_intact",
)

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str | None) -> str:
    """A CSV cell a spreadsheet will not evaluate as a formula; None becomes empty."""
    if cell is None:
        return ""
    if cell.startswith(FORMULA_PREFIXES):
        return "'" + cell
    return cell


class Writer:
    """Writes one export to a text stream: begin(), any number of write_chunk(), end()."""

    def __init__(self, out: TextIO, fmt: ExportFormat, *, role: str | None = None) -> None:
        self.out = out
        self.format = fmt
        # Who reads the export: DISPATCHBOX_REDACT's paths are masked unless it may see payloads.
        self.role = role
        self._redacting = redaction.configured().applies_to(role)
        self.count = 0
        self._csv = csv.writer(out, lineterminator="\n") if fmt is ExportFormat.CSV else None

    def begin(self) -> None:
        if self._csv is not None:
            self._csv.writerow(CSV_COLUMNS)
        elif self.format is ExportFormat.JSON:
            self.out.write("[")

    def write_chunk(self, rows: Sequence[Mapping[str, str | None]]) -> None:
        """Rows of dead_export_csv (columns in CSV_COLUMNS order) or of dead_export_json."""
        if self._csv is not None:
            if self._redacting:
                rows = [
                    {k: redaction.redact_cell(k, v, self.role) for k, v in row.items()}
                    for row in rows
                ]
            self._csv.writerows([neutralise(cell) for cell in row.values()] for row in rows)
            self.count += len(rows)
        else:
            docs = [str(row["doc"]) for row in rows]
            if self._redacting:
                docs = [redaction.redact_json(doc, self.role) for doc in docs]
            self.write_docs(docs)

    def write_docs(self, docs: Sequence[str]) -> None:
        """json / jsonl: JSON documents, one per event."""
        if not docs:
            return
        if self.format is ExportFormat.JSONL:
            self.out.write("\n".join(docs))
            self.out.write("\n")
        else:
            lead = "\n" if self.count == 0 else ",\n"
            self.out.write(lead + ",\n".join(docs))
        self.count += len(docs)

    def end(self) -> None:
        if self.format is ExportFormat.JSON:
            self.out.write("\n]\n" if self.count else "]\n")
        self.out.flush()
