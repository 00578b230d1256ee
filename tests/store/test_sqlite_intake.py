"""SQLite intake: calls gathered into one write keep the order of the store's one writer."""

from __future__ import annotations

import asyncio

from mailproxy.store.sqlite import SqliteStore
from mailproxy.vault import Vault
from tests.store.test_contract import T0, account, listing, new, tenant


async def test_a_write_between_calls_keeps_its_place(cipher: Vault) -> None:
    """A delete queued between two calls is done between them: the call after it stores
    the id again (gathered with the first call, it would have been deleted)."""
    store = SqliteStore(":memory:", cipher)
    await store.open()
    try:
        await tenant(store)
        await account(store)
        first, deleted, again = await asyncio.gather(
            store.enqueue([new(1)], T0), store.delete_messages("acme", ["m1"]),
            store.enqueue([new(1, subject="again")], T0))
        assert (first, deleted, again) == ([None], (1, []), [None])
        assert (await listing(store, T0))["m1"]["message"]["subject"] == "again"
    finally:
        await store.close()
