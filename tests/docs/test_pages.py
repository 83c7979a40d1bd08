"""docs/en and docs/pl carry the same pages; every relative link points at a file that exists."""

from __future__ import annotations

import re

import pytest

from tests.docs import names

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_both_languages_have_the_same_pages() -> None:
    en = {p.relative_to(names.DOCS / "en") for p in (names.DOCS / "en").rglob("*") if p.is_file()}
    pl = {p.relative_to(names.DOCS / "pl") for p in (names.DOCS / "pl").rglob("*") if p.is_file()}
    assert en == pl, (
        f"only in en: {sorted(map(str, en - pl))}; only in pl: {sorted(map(str, pl - en))}"
    )


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_relative_links_point_at_files_that_exist(language: str) -> None:
    broken = []
    for page in names.doc_pages(language):
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.name} -> {target}")
    assert not broken, f"broken links in docs/{language}: {broken}"


@pytest.mark.parametrize("language", names.LANGUAGES)
def test_every_page_links_to_its_other_language(language: str) -> None:
    other = "pl" if language == "en" else "en"
    missing = [
        page.name
        for page in names.doc_pages(language)
        if f"../{other}/{page.name}" not in page.read_text(encoding="utf-8")
    ]
    assert not missing, f"docs/{language} pages without a link to docs/{other}: {missing}"
