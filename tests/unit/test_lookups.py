"""Intake's short-lived copy of tenants and accounts (mailproxy/lookups.py), over a real
SQLite store whose reads are counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mailproxy.lookups import RECHECK_SECONDS, DirectoryCache
from mailproxy.model import Account, Tenant
from mailproxy.store.sqlite import SqliteStore
from tests.conftest import FakeClock
from tests.unit.test_worker import Plain


class Counted(SqliteStore):
    """The real store, counting the directory reads that reach it."""

    reads = 0
    gate: asyncio.Event | None = None

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        self.reads += 1
        found = await super().get_tenant(tenant_id)
        if self.gate is not None:
            await self.gate.wait()
        return found

    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]:
        self.reads += 1
        return await super().list_accounts(tenant_id)


@pytest.fixture
async def store() -> AsyncIterator[Counted]:
    s = Counted(":memory:", Plain())
    await s.open()
    await s.put_tenant(Tenant(id="acme"))
    await s.put_account(Account(tenant_id="acme", id="main", host="127.0.0.1", port=25))
    yield s
    await s.close()


def _cache(store: Counted, clock: FakeClock) -> DirectoryCache:
    return DirectoryCache(store, clock)


async def test_known_tenants_and_accounts_are_read_once_until_a_change(store: Counted) -> None:
    clock = FakeClock()
    cache = _cache(store, clock)
    for _ in range(5):
        assert (await cache.tenant("acme")) is not None
        assert (await cache.account("acme", "main")) is not None
    assert store.reads == 2

    await store.put_tenant(Tenant(id="acme", active=False))
    stale = await cache.tenant("acme")
    assert stale is not None and stale.active  # not told of the change yet
    cache.changed()
    fresh = await cache.tenant("acme")
    assert fresh is not None and not fresh.active
    assert store.reads == 3


async def test_entries_expire(store: Counted) -> None:
    clock = FakeClock()
    cache = _cache(store, clock)
    await cache.tenant("acme")
    clock.advance(RECHECK_SECONDS + 0.1)
    await cache.tenant("acme")
    assert store.reads == 2


async def test_what_is_missing_is_read_every_time(store: Counted) -> None:
    cache = _cache(store, FakeClock())
    assert await cache.tenant("nobody") is None
    assert await cache.account("acme", "new") is None
    # Created (say, on another instance whose notification has not arrived): found at once.
    await store.put_tenant(Tenant(id="nobody"))
    await store.put_account(Account(tenant_id="acme", id="new", host="127.0.0.1", port=25))
    assert await cache.tenant("nobody") is not None
    assert await cache.account("acme", "new") is not None


async def test_a_read_that_a_change_overtook_is_not_kept(store: Counted) -> None:
    cache = _cache(store, FakeClock())
    store.gate = asyncio.Event()
    reading = asyncio.create_task(cache.tenant("acme"))
    await asyncio.sleep(0.05)  # the read has its (old) row and waits
    cache.changed()
    store.gate.set()
    await reading
    store.gate = None
    before = store.reads
    await cache.tenant("acme")
    assert store.reads == before + 1
