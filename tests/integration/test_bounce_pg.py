"""Several instances on one PostgreSQL database: exactly one polls the bounce mailbox."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from mailproxy.bounces.imap import Fetched, Mailbox, Poller, Process
from mailproxy.bounces.model import MailboxCursor, SoftRule
from mailproxy.bounces.service import BounceStore
from mailproxy.ports import SystemClock
from mailproxy.store import open_bounce_store
from mailproxy.store.postgres import PostgresStore
from mailproxy.vault import Vault
from tests.imap import Dovecot
from tests.pg import PgSchema


@pytest.fixture
async def pg_stores(pg_url: str) -> AsyncIterator[list[PostgresStore]]:
    schema = PgSchema(pg_url)
    cipher = Vault(os.urandom(32))
    stores = [PostgresStore(schema.url, cipher, pool_size=2) for _ in range(3)]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()
    await schema.drop()


async def test_three_instances_one_poller_each_mail_processed_once(
    pg_stores: list[PostgresStore], dovecot: Dovecot
) -> None:
    folder = await dovecot.new_folder()
    await dovecot.append(folder, *(f"Subject: n{i}\r\n\r\nbody {i}\r\n".encode()
                                   for i in range(5)))
    box = Mailbox(name="bounce", host=dovecot.host, port=dovecot.port, user=dovecot.user,
                  password=dovecot.password, folder=folder, ssl=False)
    seen: dict[str, list[int]] = {}

    def processor(owner: str, store: BounceStore) -> Process:
        async def process(cursor: MailboxCursor, fetched: Fetched) -> None:
            seen.setdefault(owner, []).extend(uid for uid, _ in fetched)
            await store.record_bounces(cursor, [], SoftRule(), 0)

        return process

    async def source() -> tuple[Mailbox | None, float]:
        return box, 0.2

    pollers = []
    for n, store in enumerate(pg_stores):
        bounces = open_bounce_store(store)
        pollers.append(Poller("bounce", source, processor(f"p{n}", bounces), bounces,
                              SystemClock(), f"p{n}"))
    for poller in pollers:
        poller.start()
    try:
        await asyncio.sleep(2.0)  # about ten poll intervals, all three competing
    finally:  # all cancelled before any lease is released: no late takeover
        await asyncio.gather(*(p.stop() for p in pollers))
    assert [p.polls > 0 for p in pollers].count(True) == 1
    assert len(seen) == 1 and sorted(next(iter(seen.values()))) == [1, 2, 3, 4, 5]
    assert all(p.last_error is None for p in pollers)

