"""Named SQL queries: a .sql file holds blocks introduced by `-- name: <query>` lines."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load_queries(backend: str, filename: str = "queries.sql") -> dict[str, str]:
    text = resources.files("mailproxy.store").joinpath("sql", backend, filename).read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = body.strip().rstrip(";")
    return queries


def migrations(backend: str) -> list[tuple[int, str]]:
    """Numbered migration scripts (NNN_name.sql), in order."""
    folder = resources.files("mailproxy.store").joinpath("sql", backend)
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{3})_\w+\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text("utf-8")))
    return sorted(found)
