"""The committed API reference is what scripts/api_reference.py makes of today's docstrings."""

from __future__ import annotations

import runpy

from tests.docs import names

GENERATOR = names.ROOT / "scripts" / "api_reference.py"


def test_the_api_reference_is_up_to_date() -> None:
    pages = runpy.run_path(str(GENERATOR))["pages"]()
    stale = [
        str(path.relative_to(names.ROOT))
        for path, text in pages.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"{stale} differ from the docstrings: run `make api-docs` and commit"


def test_the_reference_covers_the_public_names() -> None:
    import dispatchbox

    text = (names.DOCS / "en" / "api.md").read_text(encoding="utf-8")
    for name in dispatchbox.__all__:
        assert f"### `{name}`" in text, f"{name} is public but not in the API reference"
    assert "#### `OutboxRepository.cleanup_old_dead_events`" in text
    assert "### `run_handlers`" in text
