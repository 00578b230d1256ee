"""The offloaded-files index (§11) on the two SQL backends, beside their stores.

Kept out of sqlite.py and postgres.py: it runs its named queries (sql/<backend>/offload.sql)
through the store's own plumbing (the SQLite group-commit writer, the PostgreSQL pool with
its retries), so it shares their durability and their connections.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from mailproxy.model import OffloadedFile
from mailproxy.store.queries import load_queries

_SQLITE = load_queries("sqlite", "offload.sql")
_PG = load_queries("postgres", "offload.sql")


def _file(row: Sequence[Any] | None) -> OffloadedFile | None:
    if row is None:
        return None
    return OffloadedFile(*(row[i] for i in range(12)))


def _values(f: OffloadedFile) -> tuple[Any, ...]:
    return (f.file_id, f.tenant_id, f.storage_url, f.object_key, f.filename, f.mime_type,
            f.size, f.created_ts, f.expires_ts, f.lifespan_days, f.delete_ts)


class SqliteOffloadIndex:
    def __init__(self, store: Any) -> None:
        self._store = store  # a SqliteStore: its _read/_write run on its threads

    async def put(self, f: OffloadedFile) -> None:
        await self._store.run_write(lambda c: c.execute(_SQLITE["put_file"], _values(f)))

    async def get(self, file_id: str) -> OffloadedFile | None:
        row = await self._store.run_read(
            lambda c: c.execute(_SQLITE["get_file"], (file_id,)).fetchone())
        return _file(row)

    async def mark_downloaded(self, file_id: str, now: int) -> None:
        await self._store.run_write(
            lambda c: c.execute(_SQLITE["mark_downloaded"], (now, now, file_id)))

    async def due(self, now: int, limit: int) -> list[OffloadedFile]:
        def op(c: sqlite3.Connection) -> list[Any]:
            return c.execute(_SQLITE["due_files"], (now, limit)).fetchall()

        return [f for f in map(_file, await self._store.run_read(op)) if f is not None]

    async def delete(self, file_id: str) -> None:
        await self._store.run_write(lambda c: c.execute(_SQLITE["delete_file"], (file_id,)))


class PostgresOffloadIndex:
    def __init__(self, store: Any) -> None:
        self._store = store  # a PostgresStore: its _run/_read retry lost connections

    async def put(self, f: OffloadedFile) -> None:
        await self._store.run_write(lambda c: c.execute(_PG["put_file"], *_values(f)))

    async def get(self, file_id: str) -> OffloadedFile | None:
        return _file(await self._store.run_read(lambda c: c.fetchrow(_PG["get_file"], file_id)))

    async def mark_downloaded(self, file_id: str, now: int) -> None:
        await self._store.run_write(lambda c: c.execute(_PG["mark_downloaded"], now, now, file_id))

    async def due(self, now: int, limit: int) -> list[OffloadedFile]:
        rows = await self._store.run_read(lambda c: c.fetch(_PG["due_files"], now, limit))
        return [f for f in map(_file, rows) if f is not None]

    async def delete(self, file_id: str) -> None:
        await self._store.run_write(lambda c: c.execute(_PG["delete_file"], file_id))


def offload_index(store: Any) -> SqliteOffloadIndex | PostgresOffloadIndex:
    """The index that lives in the same database as `store`."""
    from mailproxy.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteOffloadIndex(store)
    return PostgresOffloadIndex(store)
