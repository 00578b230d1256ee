"""The SQLite store's command log (§3.7), in a database file of its own.

A line of add-messages holds every body of the call a second time (the export replays it).
In the message database those bytes went through the one writer thread and into the commits
that acknowledge intake. Here they have their own file, connection and thread, and are
written with synchronous=NORMAL: a line is written just after its response
(MailService.record_command_after), never part of an acknowledgement, and in WAL mode NORMAL
keeps every committed line across a crash of the process; a power cut may lose the last.

The file is "<database>.commands" (with its own -wal and -shm) beside the database, under the
database's lock; a ":memory:" store keeps a private one. Lines that the message database held
before the log had its own file are moved on open (see adopt).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mailproxy.errors import StoreError
from mailproxy.model import CommandEntry
from mailproxy.store import rows
from mailproxy.store.queries import load_queries

T = TypeVar("T")
C = load_queries("sqlite", "commands.sql")
_SCHEMA = ("create_table", "create_ts_index", "create_tenant_index")
_MOVE_CHUNK = 500  # lines of the message database moved per step
_LINE = ("id", "command_ts", "endpoint", "tenant_id", "payload", "response_status")


def log_path(database: str) -> str:
    """Where the command log of the SQLite database at `database` lives."""
    return database if database == ":memory:" else database + ".commands"


class CommandLogFile:
    """log / matching / export / prune of the command log, on a thread and connection of their
    own."""

    def __init__(self, database: str) -> None:
        self._path = log_path(database)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-command-log")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._conn = await self._run(self._connect)

    def _connect(self) -> sqlite3.Connection:
        # No statement cache: a cached INSERT would keep its last bound line (an
        # add-messages payload, megabytes) until the next line is written.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                               cached_statements=0)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -500")  # written, rarely read: little to keep
        for name in _SCHEMA:
            conn.execute(C[name])
        return conn

    def adopt(self, database: sqlite3.Connection) -> int:
        """Move the lines the message database's own command_log holds into this file, with
        their ids, and return how many. Run on the database's writer thread, at open, before
        anything else writes. Each step copies a chunk durably (synchronous=FULL for the
        move), then deletes it from the database; a step cut short by a crash is repeated on
        the next open without copying a line twice (copy_line). New ids go on after every id
        the database's table ever gave."""
        conn = self._conn
        assert conn is not None
        moved = 0
        conn.execute("PRAGMA synchronous = FULL")
        try:
            # ids go on after every id the database's table gave, even to lines pruned since
            (high_water,) = database.execute(C["legacy_high_water"]).fetchone()
            _in_transaction(conn, lambda: (conn.execute(C["keep_high_water"]),
                                           conn.execute(C["raise_high_water"], (high_water,))))
            while lines := database.execute(C["legacy_lines"], (_MOVE_CHUNK,)).fetchall():
                named = [dict(zip(_LINE, line, strict=True)) for line in lines]
                _in_transaction(conn, functools.partial(conn.executemany, C["copy_line"],
                                                        named))
                database.execute(C["forget_legacy_lines"], (lines[-1][0],))
                moved += len(lines)
        finally:
            conn.execute("PRAGMA synchronous = NORMAL")
        return moved

    async def close(self) -> None:
        # the thread runs its work in order: lines handed to it before are written first
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._thread.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("store is closed")
        try:
            return await self._run(lambda: fn(conn))
        except sqlite3.Error as exc:
            raise StoreError(f"command log: {exc}") from exc

    # -- the store's command-log calls --------------------------------------------------------

    async def log(self, entries: Sequence[CommandEntry]) -> None:
        """One transaction for the lines of a call (the service's queue, auditlog.LaterLines,
        gathers them); calls are written in the order they came, by the one thread.
        Encoded here, not on the log's thread: encoded there (in that thread's malloc
        arena), the lines left RSS 4-6 MB higher after a burst, measured with 100,000
        queued. Encoding a 1000-message line costs the loop 0.3 ms."""
        values = rows.command_lines(entries)
        await self._query(
            lambda c: _in_transaction(c, lambda: c.executemany(C["insert_command"], values)))

    async def matching(self, args: dict[str, Any]) -> tuple[int, list[CommandEntry]]:
        """Matching lines newest first, and the number of all matches."""
        def op(c: sqlite3.Connection) -> tuple[int, list[Any]]:
            total = c.execute(C["count_commands"], args).fetchone()[0]
            return int(total), c.execute(C["list_commands"], args).fetchall()

        total, found = await self._query(op)
        return total, [rows.command_from_row(r) for r in found]

    async def export(self, args: dict[str, Any]) -> list[CommandEntry]:
        """Successful (2xx) lines, oldest first."""
        found: Sequence[Any] = await self._query(
            lambda c: c.execute(C["export_commands"], args).fetchall())
        return [rows.command_from_row(r) for r in found]

    async def prune(self, before_ts: int) -> int:
        return int(await self._query(
            lambda c: c.execute(C["prune_commands"], (before_ts,)).rowcount))


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[], object]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        fn()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise

