"""Copy the console's screenshots from the last browser test run into the docs.

    .venv/bin/pytest -q tests/console/test_browser.py
    .venv/bin/python scripts/console_screenshots.py

The tests save every page to test-artifacts/console/ (gitignored); the docs keep four a
language, under the same names in docs/en/images and docs/pl/images (Polish pages in Polish).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("DISPATCHBOX_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
PICKED = {
    "en": {
        "overview": "overview",
        "groups": "groups",
        "event": "event-redriven",
        "retry": "retry-confirm",
    },
    "pl": {
        "overview": "pl-overview",
        "groups": "pl-groups",
        "event": "pl-event",
        "retry": "pl-retry-confirm",
    },
}


def main() -> None:
    for language, picks in PICKED.items():
        for name, shot in picks.items():
            source = SHOTS / f"{shot}.png"
            if not source.exists():
                sys.exit(f"{source} is missing: run tests/console/test_browser.py first")
            target = ROOT / "docs" / language / "images" / f"console-{name}.png"
            shutil.copyfile(source, target)
            print(f"{source.relative_to(ROOT)} -> {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
