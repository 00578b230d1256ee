"""The code and README cite sections of docs/contract.md: every cited section exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITE = re.compile(r"§ ?(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.MULTILINE)


def _sections() -> set[str]:
    return set(HEADING.findall((ROOT / "docs" / "contract.md").read_text(encoding="utf-8")))


def test_contract_document_is_shipped_and_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert (ROOT / "docs" / "contract.md").is_file()
    assert "docs/contract.md" in readme


def test_every_cited_section_exists() -> None:
    sections = _sections()
    assert {"1", "5.2", "13", "15.2"} <= sections
    code = ROOT / "mailproxy"
    sources = [*code.rglob("*.py"), *code.rglob("*.sql"), ROOT / "README.md"]
    missing = {
        f"{path.relative_to(ROOT)}: §{number}"
        for path in sources
        for number in CITE.findall(path.read_text(encoding="utf-8"))
        if number not in sections
    }
    assert not missing, sorted(missing)


def test_every_setting_is_in_the_contracts_table() -> None:
    """§15.2 names every GMP_* setting the code accepts (a row may name several)."""
    from mailproxy.config import SETTINGS

    doc = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    table = doc[doc.index("### 15.2"):doc.index("### 15.3")]
    named = set(re.findall(r"`(GMP_[A-Z0-9_]+)`", table))
    missing = [f"GMP_{s.name.upper()}" for s in SETTINGS if f"GMP_{s.name.upper()}" not in named]
    assert not missing, f"add to docs/contract.md §15.2: {missing}"
