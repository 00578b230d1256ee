"""The README's shell examples can be followed literally: every variable they use is set
by an earlier example (or is a documented GMP_* setting)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)
USE = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)")
SET = re.compile(r"^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=", re.MULTILINE)


def test_every_variable_of_the_walkthrough_is_set_before_it_is_used() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    known: set[str] = set()
    unset = []
    for block in BLOCK.findall(readme):
        for line in block.splitlines():
            code = line.split(" #", 1)[0]
            unset += [name for name in USE.findall(code)
                      if name not in known and not name.startswith("GMP_")]
            known.update(SET.findall(code))
    assert not unset, unset
    assert "TENANT_TOKEN=$(" in readme and "jq -r .api_key" in readme
