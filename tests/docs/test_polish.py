"""The Polish pages keep to docs/pl/glossary.md: one word per idea, no death metaphors carried
over from English, the informal "ty" register."""

from __future__ import annotations

import re

from tests.docs import names

# Words the glossary replaced, each with the one to use instead.
BANNED = {
    r"\bkomend\w*": "polecenie",
    r"\bpaczk\w*|\bpaczek\b|\bpaczce\b": "partia (pakiet for the wheel)",
    r"\bzgon\w*|\bśmier\w*|\bumier\w*|\bumar\w*|\bzmarł\w*|\bgin[ąię]\b|\bzgin\w*": (
        "trafić do `dead`"
    ),
    r"\bwymagaln\w*": "gotowe do dostarczenia",
    r"\b(?:Pan|Pani|Państw\w*)\b|\bmożecie\b|\bprzez was\b|\bna was\b": "the ty register",
}


def test_polish_pages_use_the_glossary_terms() -> None:
    found = []
    for page in names.doc_pages("pl"):
        if page.name == "glossary.md":  # it names the words it bans
            continue
        text = page.read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.lstrip().startswith(("$", "dispatchbox ")):
                continue
            for pattern, instead in BANNED.items():
                for match in re.finditer(pattern, line, flags=re.IGNORECASE):
                    found.append(f"{page.name}: {match.group(0)!r} (use {instead}): {line.strip()}")
    assert not found, "\n".join(found)


def test_the_check_would_catch_a_banned_word() -> None:
    assert re.search(list(BANNED)[2], "40 000 śmierci", flags=re.IGNORECASE)
