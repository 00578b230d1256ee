"""Named SQL for asyncpg: the query files' :name parameters as PostgreSQL's $n, and the
row count of a command tag. Shared by the PostgreSQL store and its companions (bounces,
dashboard)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class Sql:
    """A named query with :name parameters rewritten to asyncpg's $n."""

    text: str
    names: tuple[str, ...]

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] for name in self.names]


def compile_sql(sql: str) -> Sql:
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return Sql(_PARAM.sub(number, sql), tuple(names))


def affected(status: str) -> int:
    """Row count from a command tag such as 'UPDATE 3'."""
    return int(status.rsplit(" ", 1)[-1])
