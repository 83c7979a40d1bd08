"""The shipped Prometheus rules and Grafana dashboard: valid, unit-tested, and only about metrics
dispatchbox exports.

promtool comes from Debian's `prometheus` package (scripts/system-packages.sh installs it for
`make test`). The exported names are read from the real collectors: a WorkerMetrics (what worker
processes write) and a DatabaseCollector scraping a real database.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from dispatchbox.observability.database_metrics import DatabaseCollector
from dispatchbox.observability.metrics import WorkerMetrics
from tests.pg import skip_outside_ci

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "prometheus-rules.yml"
RULES_TEST = Path(__file__).with_name("rules_test.yml")
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\bdispatchbox_[a-z0-9_]+")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        skip_outside_ci("promtool is missing: `make system` installs Debian's prometheus package")
    return str(found)


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    exe = promtool()
    check = subprocess.run([exe, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 11 rules found" in check.stdout
    unit = subprocess.run(
        [exe, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, cwd=ROOT
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_every_rule_has_a_promtool_test() -> None:
    rules = yaml.safe_load(RULES.read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load(RULES_TEST.read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])}
    assert names == tested, f"untested: {names - tested}, unknown: {tested - names}"
    assert {"DispatchboxDeadEventsUnattended", "DispatchboxAlertChannelFailing"} <= tested


def test_the_docs_show_the_shipped_rules_word_for_word() -> None:
    shipped = RULES.read_text().split("groups:", 1)[1]
    for lang in ("en", "pl"):
        text = (ROOT / "docs" / lang / "observability.md").read_text()
        blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "groups:" in b]
        assert len(blocks) == 1, lang
        assert blocks[0].split("groups:", 1)[1] == shipped, f"docs/{lang} differs from the file"


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def exported_names(dsn: str) -> set[str]:
    """Every series name dispatchbox serves on /metrics, from the collectors themselves."""
    families: list[Any] = []
    worker = WorkerMetrics()
    for metric in (
        worker.dispatched,
        worker.duration,
        worker.dead,
        worker.attempts_before_dead,
        worker.lease_expired,
        worker.processes,
    ):
        families.extend(metric.describe())
    collector = DatabaseCollector(dsn)
    try:
        families.extend(collector.collect())
    finally:
        collector.close()
    names = set()
    for family in families:
        for suffix in SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def test_every_dashboard_panel_and_rule_queries_exported_metrics(db_dsn: str) -> None:
    exported = exported_names(db_dsn)
    assert "dispatchbox_dead_events_total" in exported
    assert "dispatchbox_oldest_dead_age_seconds" in exported
    assert "dispatchbox_alert_send_failures_total" in exported
    dashboard = json.loads(DASHBOARD.read_text())
    panels = 0
    for panel in dashboard["panels"]:
        queries = list(_walk(panel.get("targets", [])))
        if panel.get("type") == "row":
            continue
        panels += 1
        assert queries, f"panel {panel.get('title')!r} has no query"
        for query in queries:
            used = set(METRIC.findall(query))
            assert used, f"panel {panel.get('title')!r} queries no dispatchbox metric: {query}"
            assert used <= exported, f"panel {panel.get('title')!r}: {used - exported}"
    assert panels >= 10
    for query in _walk(dashboard.get("templating", {})):
        assert set(METRIC.findall(query)) <= exported, query
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = set(METRIC.findall(rule["expr"]))
            assert used and used <= exported, (rule["alert"], used - exported)
