"""Many rows per SQLite statement, for the writer thread.

Python's sqlite3 lets go of the GIL around every step of a statement and must take it back
after each. While the event loop runs Python (decoding the next request, composing the next
message), each take-back waits for the loop to yield the GIL, up to the switch interval
(5 ms): a thousand one-row INSERTs then cost seconds instead of milliseconds, and the writer
and the loop, meant to overlap, take turns. One statement for many rows is one step: the
rows go in with the GIL released, beside the loop.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

_NAMED = re.compile(r":(\w+)")
_MAX_ROWS = 1024


class MultiRowInsert:
    """A one-row `INSERT ... VALUES (:a, :b, ...)` run for many rows at once.

    The statement must end with its one VALUES group (no ON CONFLICT or RETURNING after
    it, which would be repeated with each row), with no string literal in the group and no
    ':' before it: every ':name' is a parameter."""

    def __init__(self, single_row_sql: str) -> None:
        head, sep, group = single_row_sql.strip().rstrip(";").rpartition("VALUES")
        group = group.strip()
        if (not sep or not head.lstrip().upper().startswith("INSERT")
                or not _one_group(group) or ":" in head or "'" in group):
            raise ValueError("not an INSERT ... VALUES (...) statement ending with its values")
        self._head = head + "VALUES "
        self._names = tuple(_NAMED.findall(group))
        self._group = _NAMED.sub("?", group)
        self._sql: dict[int, str] = {}

    def run(self, c: sqlite3.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert `rows` (each holding every name of the statement) in as few statements as
        the database's limit on parameters allows, and few distinct statement texts."""
        limit = c.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // max(len(self._names), 1)
        for piece in pieces(rows, min(limit, _MAX_ROWS)):
            args = [row[name] for row in piece for name in self._names]
            c.execute(self._text(len(piece)), args)

    def _text(self, n: int) -> str:
        sql = self._sql.get(n)
        if sql is None:
            sql = self._sql[n] = self._head + ", ".join([self._group] * n)
        return sql


class InList:
    """A query ending with `IN`, run with a list of values bound as parameters: in as few
    statements as the database's parameter limit allows, few distinct texts."""

    def __init__(self, sql_ending_with_in: str) -> None:
        head = sql_ending_with_in.strip().rstrip(";")
        if not head.upper().endswith(" IN"):
            raise ValueError("the query must end with IN")
        self._head = head
        self._sql: dict[int, str] = {}

    @staticmethod
    def parts(c: sqlite3.Connection, values: Sequence[Any], *, fixed: int = 0
              ) -> Iterator[Sequence[Any]]:
        """`values` cut to fit beside `fixed` other parameters of the query."""
        most = min(c.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - fixed, _MAX_ROWS)
        return pieces(values, most)

    def run(self, c: sqlite3.Connection, fixed: Sequence[Any], values: Sequence[Any]
            ) -> Iterator[Any]:
        """The rows of the query for all `values`, `fixed` bound before each list."""
        for part in self.parts(c, values, fixed=len(fixed)):
            yield from c.execute(self.text(len(part)), (*fixed, *part))

    def text(self, n: int) -> str:
        sql = self._sql.get(n)
        if sql is None:
            sql = self._sql[n] = f"{self._head} ({', '.join('?' * n)})"
        return sql


def _one_group(text: str) -> bool:
    """Whether text is one parenthesised group and nothing after it."""
    if not text.startswith("("):
        return False
    depth = 0
    for index, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return index == len(text) - 1
    return False


def pieces(values: Sequence[Any], most: int) -> Iterator[Sequence[Any]]:
    """`values` in consecutive slices of chunk_sizes (none for no values)."""
    start = 0
    for n in chunk_sizes(len(values), most):
        yield values[start:start + n]
        start += n


def chunk_sizes(total: int, most: int) -> Iterator[int]:
    """Sizes adding up to `total`, each a power of two no larger than `most` (at least 1):
    a handful of statements, and at most a dozen distinct texts for the statement cache."""
    top = 1
    while top * 2 <= max(most, 1):
        top *= 2
    left = total
    size = top
    while left > 0:
        while size > left:
            size //= 2
        yield size
        left -= size
