"""The worker's arrows point down: it imports neither observability nor the command line nor any
maintenance service but the reaper it runs, picks no query by name, and loads nothing by
import_module; the reaper imports nothing of the worker."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dispatchbox"


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions and TYPE_CHECKING blocks too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            names.add("importlib.import_module")
    return names


def test_the_worker_package_imports_nothing_above_it() -> None:
    forbidden = ("dispatchbox.observability", "dispatchbox.cli", "dispatchbox.api")
    offences = []
    for path in sorted((PACKAGE / "worker").glob("*.py")):
        for name in imports(path):
            upward = name.startswith(forbidden)
            service = name.startswith("dispatchbox.maintenance") and not name.startswith(
                "dispatchbox.maintenance.reaper"
            )
            sql = name in ("dispatchbox.queries", "dispatchbox.queries.aexecute")
            loader = name == "importlib.import_module" and path.name != "loader.py"
            if upward or service or sql or loader:
                offences.append(f"{path.name}: {name}")
    assert offences == []


def test_the_reaper_service_imports_nothing_of_the_worker() -> None:
    names = imports(PACKAGE / "maintenance" / "reaper.py")
    assert not [n for n in names if n.startswith("dispatchbox.worker")]
    assert "dispatchbox.data.worker" in names  # its statements come from the data layer
