"""Files shipped next to the code: templates/ and static/.

In a source checkout they are the top-level directories; in an installed wheel the build copies
them into mailproxy/_data/ (see setup.py), so both layouts resolve here.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def root(name: str) -> Path:
    """The directory `name` ("templates" or "static")."""
    packaged = _PACKAGE / "_data" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / name


def path(name: str, *parts: str) -> Path:
    return root(name).joinpath(*parts)
