"""The PostgreSQL test server: where it is, whether it answers, and private schemas on it.

The server is TEST_DATABASE_URL (default: the local test server). When it does not answer,
tests that need it are skipped, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def probe(url: str) -> str | None:
    """None when the server answers, else what went wrong."""
    try:
        con = await asyncio.wait_for(asyncpg.connect(url), 5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await con.close()
    return None


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The server URL, or skip (fail under CI=true) when it does not answer."""
    return require_server(PG_URL)


def require_server(url: str = PG_URL) -> str:
    """The URL, or skip the test (fail it under CI=true) when the server does not answer."""
    problem = asyncio.run(probe(url))
    if problem is not None:
        message = f"PostgreSQL not reachable at {url}: {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


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
async def pg_schema(pg_url: str) -> AsyncIterator[PgSchema]:
    """A private schema on the server for one test, dropped after it (tests/store has its
    own `pg_schema`, None on the other backends of its contract suite)."""
    schema = PgSchema(pg_url)
    yield schema
    await schema.drop()
