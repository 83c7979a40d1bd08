"""The import contract: dispatchbox's layers, top to bottom, and no arrow that runs back up.

Every module under dispatchbox/ is parsed (not imported): ``import x``, ``from x import y``
(relative ones too), imports inside functions and under TYPE_CHECKING, and string literals
handed to ``import_module`` or naming an app as ``module:attribute`` all count. A module may
import its own package, any package of its own layer, and any package of a layer below; an
import of a package in a layer above fails this test unless ALLOWED lists it with a reason.
docs/en/architecture.md draws the same table.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "dispatchbox"

# Top to bottom. A name is a package or a module directly under dispatchbox/ ("__init__" is the
# root package, which re-exports the public names of the domain layer).
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("assemble", frozenset({"cli", "__main__"})),
    ("entry points", frozenset({"console", "monitor", "demo_app", "testing"})),
    ("http api", frozenset({"api"})),
    ("observability", frozenset({"observability"})),
    ("services", frozenset({"worker", "maintenance", "redrive"})),
    (
        "domain",
        frozenset(
            {
                "__init__",
                "repository",
                "repository_bulk",
                "repository_reads",
                "repository_redrive",
                "dispatcher",
                "publish",
                "delivery",
                "destinations",
                "outbox_status",
                "retry_batch",
            }
        ),
    ),
    ("data", frozenset({"data", "queries", "db", "migrations", "roles", "tempcluster"})),
    (
        "base",
        frozenset(
            {
                "errors",
                "events",
                "records",
                "filters",
                "fingerprint",
                "redaction",
                "export",
                "outbound",
                "logging_setup",  # the 'worker' refactor's home for logging configuration
            }
        ),
    ),
]

# Arrows that run up on purpose: (importing module, imported module) -> why. Each must still
# exist (a row whose import is gone fails the test, so the table stays true).
ALLOWED: dict[tuple[str, str], str] = {
    ("dispatchbox.repository", "dispatchbox.maintenance.archiver"): (
        "OutboxRepository.archive() and purge are the Python entry to the archiver (DESIGN.md); "
        "the archiver never imports the repository"
    ),
    ("dispatchbox.repository", "dispatchbox.redrive"): (
        "OutboxRepository.redrive() is the documented Python entry to redrive operations; "
        "a lazy import, and dispatchbox.redrive never imports the repository"
    ),
}

_APP_SPEC = re.compile(r"^dispatchbox(\.\w+)+:\w+$")


def rank_of(component: str) -> int:
    for rank, (_, names) in enumerate(LAYERS):
        if component in names:
            return rank
    raise AssertionError(f"dispatchbox.{component} is in no layer: add it to LAYERS")


def component(module: str) -> str:
    """dispatchbox.worker.process -> worker; dispatchbox -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    line: int


def arrows(path: Path, text: str | None = None) -> list[Arrow]:
    """Every dispatchbox module that the module at path (or text, as if it were there) imports,
    wherever and however."""
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found: list[Arrow] = []

    def add(target: str, line: int) -> None:
        if target == "dispatchbox" or target.startswith("dispatchbox."):
            found.append(Arrow(source, target, line))

    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from dispatchbox import queries` imports the module dispatchbox.queries.
                sub = f"{target}.{alias.name}"
                add(sub if is_module(sub) else target, node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                add(first.value, node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _APP_SPEC.match(node.value)
        ):
            add(node.value.partition(":")[0], node.lineno)
    return found


def all_arrows() -> list[Arrow]:
    return [arrow for path in sorted(ROOT.rglob("*.py")) for arrow in arrows(path)]


def upward(arrow: Arrow) -> bool:
    src, dst = component(arrow.source), component(arrow.target)
    return src != dst and rank_of(dst) < rank_of(src)


def allowed(arrow: Arrow) -> bool:
    return any(
        arrow.source == s and (arrow.target == t or arrow.target.startswith(t + "."))
        for s, t in ALLOWED
    )


def test_every_module_is_in_a_layer() -> None:
    for path in sorted(ROOT.rglob("*.py")):
        rank_of(component(module_name(path)))


def test_no_arrow_runs_up() -> None:
    bad = [
        f"{a.source} (line {a.line}) imports {a.target}: "
        f"{LAYERS[rank_of(component(a.source))][0]} -> {LAYERS[rank_of(component(a.target))][0]}"
        for a in all_arrows()
        if upward(a) and not allowed(a)
    ]
    assert not bad, "arrows that run back up:\n" + "\n".join(bad)


def test_every_allowed_arrow_still_exists_and_runs_up() -> None:
    seen = all_arrows()
    for (source, target), reason in ALLOWED.items():
        assert reason
        hits = [a for a in seen if allowed(a) and a.source == source and upward(a)]
        assert any(a.target.startswith(target) for a in hits), (
            f"ALLOWED lists {source} -> {target}, which no longer runs up: drop the row"
        )


def test_the_contract_catches_hidden_arrows() -> None:
    """The parser sees imports inside functions, relative imports and import_module strings."""
    text = (
        "def f():\n    from dispatchbox.worker import process\n"
        "from .cli import main\n"
        "importlib.import_module('dispatchbox.api.app')\n"
        "APP = 'dispatchbox.demo_app:dispatcher'\n"
    )
    found = arrows(ROOT / "errors.py", text)
    assert {component(a.target) for a in found} == {"worker", "cli", "api", "demo_app"}
    assert all(upward(a) and not allowed(a) for a in found)
