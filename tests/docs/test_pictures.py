"""The rendered pictures sit beside their Mermaid sources, in both languages, and the state
diagram in concepts.md is the source the picture was rendered from."""

from __future__ import annotations

import re

import pytest

from tests.docs import names


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_every_mermaid_source_has_its_rendered_svg(language: str) -> None:
    images = names.DOCS / language / "images"
    sources = sorted(images.glob("*.mmd"))
    assert {p.stem for p in sources} >= {
        "state-machine",
        "processes",
        "delivery-sequence",
        "lease-timeline",
    }
    for source in sources:
        svg = source.with_suffix(".svg")
        assert svg.exists(), (
            f"{svg.name} is missing: render {source.name} (see docs/en/images/README.md)"
        )
        assert svg.read_text(encoding="utf-8").lstrip().startswith("<svg")


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_the_state_diagram_in_concepts_is_the_rendered_source(language: str) -> None:
    page = (names.DOCS / language / "concepts.md").read_text(encoding="utf-8")
    block = re.search(r"```mermaid\n(.*?)```", page, re.S)
    assert block is not None
    source = (names.DOCS / language / "images" / "state-machine.mmd").read_text(encoding="utf-8")
    assert block.group(1) == source, "concepts.md's diagram changed: update and re-render the .mmd"
