"""Every CLI flag, environment variable and metric the docs name exists, and every one that
exists is documented, in both languages (the names are read from the code, see names.py)."""

from __future__ import annotations

import pytest

from dispatchbox.observability.database_metrics import DatabaseCollector
from tests.docs import names


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_every_flag_named_in_the_docs_exists(language: str) -> None:
    known = set().union(*names.cli_flags().values()) | names.bench_flags() | names.FOREIGN_FLAGS
    unknown = {
        (page.name, flag)
        for page in names.doc_pages(language)
        for flag in names.FLAG.findall(page.read_text(encoding="utf-8"))
        if flag not in known
    }
    assert not unknown, f"flags in docs/{language} that no command has: {sorted(unknown)}"


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_every_cli_flag_is_documented(language: str) -> None:
    text = names.doc_text(language)
    missing = {
        (path, flag)
        for path, flags in names.cli_flags().items()
        for flag in flags
        if flag not in text
    }
    assert not missing, f"flags missing from docs/{language}: {sorted(missing)}"


def test_the_flag_and_env_scans_see_what_they_should() -> None:
    # Guards the guard: a scan that silently found nothing would pass every check above.
    flags = names.cli_flags()
    assert "--error-fingerprint" in flags["dispatchbox dead-events purge"]
    assert "--lease-seconds" in flags["dispatchbox worker"]
    assert {"DISPATCHBOX_DSN", "DISPATCHBOX_CRON_DSN", "PROMETHEUS_MULTIPROC_DIR"} <= (
        names.code_env_vars()
    )
    assert "dispatchbox_events_dispatched" in names.worker_metric_names()


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_every_env_var_named_in_the_docs_exists(language: str) -> None:
    known = names.code_env_vars() | names.test_env_vars() | names.bench_env_vars()
    unknown = set(names.ENV.findall(names.doc_text(language))) - known
    assert not unknown, f"variables in docs/{language} that nothing reads: {sorted(unknown)}"


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_every_env_var_the_package_reads_is_in_the_configuration_page(language: str) -> None:
    # configuration.md promises "every environment variable": any DISPATCHBOX_* name that
    # appears in dispatchbox/ later (a new alert channel, a new setting) must be added there.
    page = (names.DOCS / language / "configuration.md").read_text(encoding="utf-8")
    listed = set(names.ENV.findall(page))
    missing = names.code_env_vars() - listed
    assert not missing, f"docs/{language}/configuration.md does not list {sorted(missing)}"


def _exposed_metrics(db_dsn: str) -> set[str]:
    collector = DatabaseCollector(db_dsn)
    try:
        families = {family.name for family in collector.collect()}
    finally:
        collector.close()
    assert "dispatchbox_pending_events" in families  # the database answered
    return families | names.worker_metric_names()


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_every_metric_named_in_the_docs_exists_and_every_metric_is_documented(
    language: str, db_dsn: str
) -> None:
    families = _exposed_metrics(db_dsn)
    text = names.doc_text(language)
    named = set(names.METRIC.findall(text)) - names.sql_identifiers()
    unknown = named - names.exposed(families)
    assert not unknown, f"metrics in docs/{language} that nothing exposes: {sorted(unknown)}"
    undocumented = {f for f in families if not names.exposed({f}) & named}
    assert not undocumented, f"metrics missing from docs/{language}: {sorted(undocumented)}"
