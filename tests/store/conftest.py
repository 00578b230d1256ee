"""Store fixtures: one contract, three backends (memory, SQLite file, PostgreSQL).

PostgreSQL is the server of tests/pg.py; each test gets a fresh schema, dropped at teardown.
When the server is unreachable the PostgreSQL cases are skipped, or fail when CI=true.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailproxy.ports import Store
from mailproxy.store.postgres import PostgresStore
from mailproxy.store.sqlite import SqliteStore
from mailproxy.vault import Vault
from tests.pg import PG_URL, PgSchema

__all__ = ["PG_URL", "PgSchema"]

BACKENDS = ["memory", "sqlite", "postgres"]


@pytest.fixture
def cipher() -> Vault:
    return Vault(os.urandom(32))


StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pg_schema(backend: str, request: pytest.FixtureRequest) -> PgSchema | None:
    """The test's own schema on PostgreSQL (dropped by make_store), None elsewhere."""
    if backend != "postgres":
        return None
    return PgSchema(request.getfixturevalue("pg_url"))


@pytest.fixture
async def make_store(
    backend: str, pg_schema: PgSchema | None, tmp_path: Path, cipher: Vault
) -> AsyncIterator[StoreFactory]:
    """make_store() -> an opened store; every call on PostgreSQL is another instance on
    the same schema (several instances on SQLite are not supported)."""
    opened: list[Store] = []
    schema = pg_schema

    async def factory() -> Store:
        store: Store
        if backend == "memory":
            store = SqliteStore(":memory:", cipher)
        elif backend == "sqlite":
            store = SqliteStore(str(tmp_path / "store.sqlite"), cipher)
        else:
            assert schema is not None
            store = PostgresStore(schema.url, cipher, pool_size=4)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    if schema is not None:
        await schema.drop()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()


RawQuery = Callable[[str], Awaitable[list[tuple[Any, ...]]]]


@pytest.fixture
def raw(store: Store, pg_schema: PgSchema | None) -> RawQuery:
    """raw(sql) -> rows, read straight from the backend's tables (no store logic)."""
    schema = pg_schema

    async def query(sql: str) -> list[tuple[Any, ...]]:
        if schema is not None:
            return [tuple(r) for r in await schema.fetch(sql)]
        assert isinstance(store, SqliteStore)
        found = await store._read(lambda c: c.execute(sql).fetchall())
        return [tuple(r) for r in found]

    return query
