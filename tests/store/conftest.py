"""Store fixtures: one contract, three backends (memory, SQLite file, PostgreSQL).

PostgreSQL is the server at TEST_DATABASE_URL (default: the local test server); each test
gets a fresh schema, dropped at teardown. When the server is unreachable the PostgreSQL
cases are skipped, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mailproxy.service import Store
from mailproxy.store.postgres import PostgresStore
from mailproxy.store.sqlite import SqliteStore
from mailproxy.vault import Vault

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["memory", "sqlite", "postgres"]


async def _probe(url: str) -> str | None:
    try:
        con = await asyncio.wait_for(asyncpg.connect(url), 5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await con.close()
    return None


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The server URL, or skip (fail under CI=true) when it does not answer."""
    problem = asyncio.run(_probe(PG_URL))
    if problem is not None:
        message = f"PostgreSQL not reachable at {PG_URL}: {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return PG_URL


class PgSchema:
    """A private schema on the test server, and raw SQL access to it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.name = "t_" + uuid.uuid4().hex[:16]

    @property
    def url(self) -> str:
        return f"{self.base_url}?schema={self.name}"

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        con = await asyncpg.connect(self.base_url,
                                    server_settings={"search_path": self.name})
        try:
            return list(await con.fetch(sql, *args))
        finally:
            await con.close()

    async def drop(self) -> None:
        con = await asyncpg.connect(self.base_url)
        try:
            await con.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        finally:
            await con.close()


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
