"""PostgreSQL only: several instances on one database, lost connections, wake-ups."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import asyncpg
import pytest

from mailproxy import intake
from mailproxy.errors import ConfigError, StoreError
from mailproxy.model import Deferred, Failed, InstanceConfig, RateLimits, Sent
from mailproxy.ports import Store
from mailproxy.store.postgres import PostgresStore
from mailproxy.store.queries import migrations
from mailproxy.store.rows import ts_text
from mailproxy.vault import Vault
from tests.store.conftest import PG_URL, PgSchema, StoreFactory
from tests.store.test_contract import (
    LEASE,
    T0,
    account,
    claim_ids,
    listing,
    new,
    tenant,
)
from tests.store.test_contract_content import RULES, _item


@pytest.fixture
def backend() -> str:
    """Every store in this module is a PostgreSQL instance on the test's schema."""
    return "postgres"


async def _kill_connections(schema: PgSchema) -> int:
    """Terminate every server connection of the stores on this schema (a lost network)."""
    con = await asyncpg.connect(schema.base_url)
    try:
        return int(await con.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()",
            f"mailproxy/{schema.name}"))
    finally:
        await con.close()


async def _drain(store: Store, owner: str, max_total: int) -> list[str]:
    """Claim and send until nothing is left open anywhere."""
    got: list[str] = []
    while True:
        batch = await store.claim(owner, T0, LEASE, max_total)
        if batch.messages:
            got.extend(m.id for m in batch.messages)
            await store.record(owner, [(m, Sent()) for m in batch.messages], T0)
        elif await store.count_open("acme") == 0:
            return got
        await asyncio.sleep(0)


async def test_concurrent_instances_claim_each_message_once(make_store: StoreFactory) -> None:
    stores = [await make_store() for _ in range(4)]
    await tenant(stores[0])
    for name in ("a1", "a2"):
        await account(stores[0], account_id=name, batch_size=20)
    items = [new(i, account_id="a1" if i % 3 else "a2") for i in range(500)]
    for start in range(0, 500, 100):
        await stores[0].enqueue(items[start:start + 100], T0)
    results = await asyncio.gather(
        *(_drain(s, f"w{i}", 25) for i, s in enumerate(stores)))
    counts = Counter(mid for got in results for mid in got)
    assert len(counts) == 500
    assert set(counts.values()) == {1}
    assert sum(1 for got in results if got) > 1  # the work really was shared


async def test_overlapping_batches_from_two_instances_store_each_id_once(
    make_store: StoreFactory
) -> None:
    one, two = await make_store(), await make_store()
    await tenant(one)
    await account(one)
    for base in (0, 1000, 2000):  # new ids each time: the two inserts race anew
        first = [new(i) for i in range(base, base + 300)]
        second = [new(i, subject=f"Second {i}") for i in range(base + 150, base + 450)]
        results = await asyncio.gather(one.enqueue(first, T0), two.enqueue(second, T0))
        assert results == [[None] * 300, [None] * 300]
        records = await listing(one, T0)
        assert len([i for i in records if base <= int(i[1:]) < base + 450]) == 450
        # the later transaction replaced every shared id, or none: no id is lost or mixed
        shared = [records[f"m{i}"]["message"]["subject"] for i in range(base + 150, base + 300)]
        assert shared in ([f"Hello {i}" for i in range(base + 150, base + 300)],
                          [f"Second {i}" for i in range(base + 150, base + 300)])
    assert await one.count_open("acme") == 1350

    # the same new ids in opposite orders: the two inserts may deadlock; the loser is retried
    ahead = [new(i) for i in range(5000, 5200)]
    results = await asyncio.gather(one.enqueue(ahead, T0), two.enqueue(ahead[::-1], T0))
    assert results == [[None] * 200, [None] * 200]
    assert await one.count_open("acme") == 1550


async def test_concurrent_small_enqueues_are_stored_in_arrival_order(
    make_store: StoreFactory
) -> None:
    store = await make_store()
    await tenant(store)
    await account(store)
    calls = [[new(i)] for i in range(20)]
    calls += [[new(3, subject="Again")], [new(30, error="missing to")], [new(31), new(32)]]
    results = await asyncio.gather(*(store.enqueue(c, T0 + n) for n, c in enumerate(calls)))
    assert results == [[None]] * 21 + [["missing to"], [None, None]]
    records = await listing(store, T0 + 30, include_history=True)
    # each message keeps the time of the call that brought it
    assert (records["m3"]["created_at"], records["m3"]["updated_at"]) == (
        ts_text(T0 + 3), ts_text(T0 + 20))
    assert records["m3"]["message"]["subject"] == "Again"
    assert records["m32"]["created_at"] == ts_text(T0 + 22)
    assert [(h["event_type"], h["event_ts"]) for h in records["m30"]["history"]] == [
        ("error", int(T0) + 21)]
    assert await claim_ids(store, T0 + 30) == [f"m{i}" for i in range(20)] + ["m31", "m32"]


async def test_a_refused_call_among_concurrent_enqueues_fails_alone(
    make_store: StoreFactory
) -> None:
    store = await make_store()
    await tenant(store)
    await account(store)
    refused = new("\x00")  # PostgreSQL text cannot hold NUL: the statement is refused
    assert isinstance(store, PostgresStore)
    writes: list[int] = []
    write = store._store_pairs

    async def counted(pairs: Any) -> Any:
        writes.append(len(pairs))
        return await write(pairs)

    store._intake._write = counted  # the group writer's write
    results = await asyncio.gather(
        store.enqueue([new(1)], T0), store.enqueue([refused], T0),
        store.enqueue([new(2), new(3)], T0), return_exceptions=True)
    assert results[0] == [None] and results[2] == [None, None]
    assert isinstance(results[1], StoreError)
    assert sorted(await listing(store, T0)) == ["m1", "m2", "m3"]
    assert writes == [4, 1, 1, 2]  # the group of the three calls, then each call alone


@pytest.mark.parametrize("other_commits", [True, False], ids=["commit", "rollback"])
async def test_a_batch_waits_for_ids_another_transaction_is_storing(
    make_store: StoreFactory, pg_schema: PgSchema, other_commits: bool
) -> None:
    store = await make_store()
    await tenant(store)
    await account(store)
    con = await asyncpg.connect(pg_schema.base_url,
                                server_settings={"search_path": pg_schema.name})
    try:
        other = con.transaction()
        await other.start()
        for mid in ("m2", "m4"):  # another instance is storing these two, not committed yet
            await con.execute(
                "INSERT INTO messages (pk, tenant_id, client_id, account_id, status, queued,"
                " priority, payload, created_ts, updated_ts) VALUES ($1, 'acme', $2, 'main',"
                " 'pending', 1, 2, $3, $4, $4)",
                f"pk-{mid}", mid, f'{{"id": "{mid}", "subject": "Theirs"}}', T0)
        items = [new(1), new(2, subject="Mine"), new(3), new(4, error="missing subject"),
                 new(5)]
        task = asyncio.create_task(store.enqueue(items, T0 + 1))
        for _ in range(500):  # until the batch's insert waits for the other transaction
            waiting = await con.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND application_name = $1", f"mailproxy/{pg_schema.name}")
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting and not task.done()
        await (other.commit() if other_commits else other.rollback())
        results = await task
    finally:
        await con.close()

    records = await listing(store, T0 + 1, include_history=True)
    ids = await claim_ids(store, T0 + 2)
    if other_commits:  # as if the other instance's rows had been there all along
        assert results == [None, None, None, "missing subject", None]
        assert records["m2"]["message"]["subject"] == "Mine"
        assert (records["m4"]["status"], records["m4"]["message"]["subject"]) == (
            "pending", "Theirs")
        assert records["m4"]["history"] == []
        assert ids == ["m2", "m4", "m1", "m3", "m5"]
    else:
        assert results == [None, None, None, "missing subject", None]
        assert records["m2"]["message"]["subject"] == "Mine"
        assert (records["m4"]["status"], records["m4"]["error"]) == ("error", "missing subject")
        assert [h["event_type"] for h in records["m4"]["history"]] == ["error"]
        assert ids == ["m1", "m2", "m3", "m5"]


async def test_rate_limit_is_never_overshot_across_instances(make_store: StoreFactory) -> None:
    limit = 7
    stores = [await make_store() for _ in range(3)]
    await tenant(stores[0])
    await account(stores[0], limits=RateLimits(minute=limit), batch_size=5)
    await stores[0].enqueue([new(i) for i in range(60)], T0)

    async def run(store: Store, owner: str, send: bool) -> int:
        total = 0
        for _ in range(10):
            batch = await store.claim(owner, T0 + 1, LEASE, 100)
            total += len(batch.messages)
            if send and batch.messages:
                await store.record(owner, [(m, Sent()) for m in batch.messages], T0 + 1)
            await asyncio.sleep(0)
        return total

    # in flight only, then sent: neither may exceed the limit in one window
    held = await asyncio.gather(*(run(s, f"h{i}", False) for i, s in enumerate(stores)))
    assert sum(held) == limit
    await stores[0].recover(T0 + LEASE + 10, 5, all_sending=True)
    sent = await asyncio.gather(*(run(s, f"s{i}", True) for i, s in enumerate(stores)))
    assert sum(sent) == limit


async def test_one_rate_limit_deferral_whatever_the_number_of_instances(
    make_store: StoreFactory
) -> None:
    one, two = await make_store(), await make_store()
    await tenant(one)
    await account(one, limits=RateLimits(minute=2))
    await one.enqueue([new(i) for i in range(1, 6)], T0)
    batch = await one.claim("w1", T0, LEASE, 100)
    await one.record("w1", [(m, Sent()) for m in batch.messages], T0)
    first = await one.claim("w1", T0 + 1, LEASE, 100)
    assert first.blocked == {("acme", "main"): int(T0) + 60}
    second = await two.claim("w2", T0 + 2, LEASE, 100)
    assert (second.messages, second.blocked, second.rate_limited) == (
        (), {("acme", "main"): int(T0) + 60}, ())
    found = await one.get_tenant("acme")
    assert found is not None
    records = await one.list_messages(found, now=int(T0) + 2, include_history=True)
    deferred = [h for r in records for h in r.history or () if h.event_type == "deferred"]
    assert len(deferred) == 1
    got = await two.claim("w2", T0 + 61, LEASE, 100)
    assert [m.id for m in got.messages] == ["m3", "m4"]


async def test_concurrent_records_share_a_transaction_and_keep_their_flags(
    make_store: StoreFactory, pg_schema: PgSchema
) -> None:
    store = await make_store()
    await tenant(store)
    await account(store, batch_size=100, limits=RateLimits(day=1000))
    await store.enqueue([new(i) for i in range(40)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    by_id = {m.id: m for m in batch.messages}
    lost = by_id.pop("m39")  # recovered by another instance: its lease is gone
    await pg_schema.fetch("UPDATE messages SET lease_owner = 'w2' WHERE client_id = 'm39'")
    retry = Deferred(reason="451 later", next_ts=int(T0) + 60, retry_count=1)
    calls = [store.record("w1", [(m, Sent())], T0 + 1) for m in list(by_id.values())[:30]]
    calls.append(store.record("w1", [(by_id["m30"], retry), (by_id["m31"], Failed("550 no"))],
                              T0 + 2))
    calls.append(store.record("w1", [(by_id["m32"], Sent()), (by_id["m32"], Sent()),
                                     (lost, Sent())], T0 + 3))
    flags = await asyncio.gather(*calls)
    assert flags[:30] == [[True]] * 30
    assert flags[30:] == [[True, True], [True, False, False]]
    records = await listing(store, T0 + 3)
    assert Counter(r["status"] for r in records.values()) == Counter(
        sent=31, deferred=1, error=1, sending=7)
    assert (records["m0"]["sent_ts"], records["m32"]["sent_ts"]) == (int(T0) + 1, int(T0) + 3)
    events = await store.pending_events("acme", 100)
    assert len(events) == 33  # one per finished message
    assert Counter(e.event_type for e in events) == Counter(sent=31, deferred=1, error=1)
    sends = await pg_schema.fetch("SELECT ts, n FROM rate_sends ORDER BY ts")
    assert [(r["ts"], r["n"]) for r in sends] == [(int(T0) + 1, 30), (int(T0) + 3, 1)]


async def test_a_refused_statement_fails_only_its_own_record_call(
    make_store: StoreFactory
) -> None:
    store = await make_store()
    await tenant(store)
    await account(store, batch_size=10)
    await store.enqueue([new(i) for i in range(3)], T0)
    m0, m1, m2 = (await store.claim("w1", T0, LEASE, 10)).messages
    results = await asyncio.gather(
        store.record("w1", [(m0, Sent())], T0 + 1),
        store.record("w1", [(m1, Failed("bad \x00 byte"))], T0 + 1),  # text refuses NUL
        store.record("w1", [(m2, Sent())], T0 + 1),
        return_exceptions=True,
    )
    assert results[0] == [True] and results[2] == [True]
    assert isinstance(results[1], StoreError)
    records = await listing(store, T0 + 1)
    assert [records[f"m{i}"]["status"] for i in range(3)] == ["sent", "sending", "sent"]


async def test_migrations_applied_once_when_instances_start_together(
    make_store: StoreFactory, pg_schema: PgSchema
) -> None:
    await asyncio.gather(*(make_store() for _ in range(5)))
    found = await pg_schema.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in found] == [n for n, _script in migrations("postgres")]


async def test_a_database_at_version_1_is_upgraded(
    make_store: StoreFactory, pg_schema: PgSchema
) -> None:
    """A schema an older build created (001 only) gains the report tables at the next start."""
    con = await asyncpg.connect(pg_schema.base_url)
    try:
        await con.execute(f'CREATE SCHEMA "{pg_schema.name}"')
        await con.execute(f'SET search_path = "{pg_schema.name}"')
        await con.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        await con.execute(dict(migrations("postgres"))[1])
        await con.execute("INSERT INTO schema_migrations (version) VALUES (1)")
    finally:
        await con.close()
    store = await make_store()
    found = await pg_schema.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in found] == [n for n, _script in migrations("postgres")]
    await tenant(store)
    assert await store.acquire_report_lease("acme", "A", T0, T0 + 30) is True
    assert await store.get_instance() == InstanceConfig()


async def test_report_lease_is_exclusive_across_instances(make_store: StoreFactory) -> None:
    """Instances asking at the same moment: exactly one owner, on a new row and an old one."""
    stores = [await make_store() for _ in range(3)]
    tenants = [f"t{i}" for i in range(15)]

    async def race(tenant_id: str, now: float) -> list[bool]:
        return list(await asyncio.gather(*(
            s.acquire_report_lease(tenant_id, f"owner{i}", now, now + 30)
            for i, s in enumerate(stores))))

    for tenant_id in tenants:  # no tenant_sync row yet: concurrent inserts
        assert sum(await race(tenant_id, T0)) == 1
    for tenant_id in tenants:  # held: nobody else gets it, the owner renews
        won = await race(tenant_id, T0 + 10)
        assert sum(won) == 1
    winners = {}
    for tenant_id in tenants:  # expired: exactly one of the three takes it over
        won = await race(tenant_id, T0 + 100)
        assert sum(won) == 1
        winners[tenant_id] = won.index(True)
    for tenant_id, i in winners.items():  # released: free again, and again one winner
        await stores[i].release_report_lease(tenant_id, f"owner{i}")
        assert sum(await race(tenant_id, T0 + 101)) == 1


async def test_concurrent_acks_mark_each_event_once(make_store: StoreFactory) -> None:
    stores = [await make_store() for _ in range(3)]
    await tenant(stores[0])
    await account(stores[0], batch_size=500)
    await stores[0].enqueue([new(i) for i in range(300)], T0)
    batch = await stores[0].claim("w1", T0, LEASE, 500)
    await stores[0].record("w1", [(m, Sent()) for m in batch.messages], T0)
    ids = [e.event_id for e in await stores[0].pending_events("acme", 1000)]
    assert len(ids) == 300
    counts = await asyncio.gather(
        stores[0].ack_events("acme", ids[::2], int(T0) + 1),
        stores[1].ack_events("acme", ids[::-3], int(T0) + 1),
        stores[2].ack_all_events("acme", int(T0) + 1),
        stores[1].ack_all_events("acme", int(T0) + 1),
    )
    # an ack_all_events that finds the tenant busy leaves the rest to the next pass (0)
    rest = await stores[0].ack_all_events("acme", int(T0) + 2)
    assert sum(counts) + rest == 300
    assert await stores[2].pending_event_counts() == {}


async def test_instances_purging_together_delete_each_message_once(
    make_store: StoreFactory
) -> None:
    stores = [await make_store() for _ in range(3)]
    await tenant(stores[0])
    await account(stores[0], batch_size=500)
    await stores[0].enqueue([new(i) for i in range(400)], T0)
    batch = await stores[0].claim("w1", T0, LEASE, 500)
    await stores[0].record("w1", [(m, Sent()) for m in batch.messages], T0)
    await stores[0].ack_all_events("acme", int(T0))
    removed = await asyncio.gather(*(s.purge_reported(int(T0) + 1) for s in stores))
    assert sum(removed) == 400
    assert await stores[0].count_open() == 0
    assert await listing(stores[1], T0) == {}


async def test_custom_plans_until_the_queue_table_has_statistics(
    make_store: StoreFactory, pg_schema: PgSchema
) -> None:
    store = await make_store()
    assert isinstance(store, PostgresStore)
    mode = "SHOW plan_cache_mode"
    assert await store._run(lambda c: c.fetchval(mode)) == "force_custom_plan"
    await pg_schema.fetch("ANALYZE messages")
    await store._expire_connections()  # connections opened from now on
    assert await store._run(lambda c: c.fetchval(mode)) == "auto"


async def test_schemas_are_isolated(make_store: StoreFactory, cipher: Vault) -> None:
    store = await make_store()
    await tenant(store, "only-here")
    other = PgSchema(PG_URL)
    elsewhere = PostgresStore(other.url, cipher, pool_size=1)
    await elsewhere.open()
    try:
        assert await elsewhere.get_tenant("only-here") is None
    finally:
        await elsewhere.close()
        await other.drop()


async def test_recover_across_instances_only_takes_expired_leases(
    make_store: StoreFactory
) -> None:
    one, two = await make_store(), await make_store()
    await tenant(one)
    await account(one)
    await one.enqueue([new(1)], T0)
    batch = await one.claim("w1", T0, LEASE, 100)
    assert await two.recover(T0 + LEASE - 1, 5, all_sending=False) == 0
    assert await one.record("w1", [(batch.messages[0], Sent())], T0 + 1) == [True]
    await one.enqueue([new(2)], T0 + 2)
    batch = await one.claim("w1", T0 + 2, LEASE, 100)
    assert await two.recover(T0 + LEASE + 3, 5, all_sending=False) == 1
    assert await one.record("w1", [(batch.messages[0], Sent())], T0 + 400) == [False]
    again = await two.claim("w2", T0 + 401, LEASE, 100)
    assert [(m.id, m.retry_count) for m in again.messages] == [("m2", 1)]


async def test_pool_recovers_after_connections_are_lost(
    make_store: StoreFactory, pg_schema: PgSchema
) -> None:
    store = await make_store()
    await tenant(store)
    await account(store)
    for round_ in range(3):
        assert await _kill_connections(pg_schema) >= 1
        assert await store.enqueue([new(round_)], T0) == [None]
        assert await store.get_tenant("acme") is not None
    assert await store.count_open("acme") == 3


def _reply_lost_once(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[int]:
    """Make owner.name run for real, then fail once as if the connection dropped before its
    reply arrived: the statement committed, the caller cannot know. (A reply lost at that
    exact moment cannot be produced on demand with a real network, hence the patch.)"""
    real = getattr(owner, name)
    calls: list[int] = []

    async def once(*args: object, **kwargs: object) -> object:
        result = await real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("reply lost")
        return result

    monkeypatch.setattr(owner, name, once)
    return calls


async def test_a_claim_whose_reply_was_lost_is_adopted_by_its_retry(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailproxy.store import postgres

    store = await make_store()
    await tenant(store)
    await account(store)
    await store.enqueue([new(i) for i in range(5)], T0)
    calls = _reply_lost_once(monkeypatch, postgres._Claim, "run")
    batch = await store.claim("w1", T0, LEASE, 3)
    assert len(calls) == 2, "the claim was retried"
    # the rows the lost attempt took are in the batch: none is left waiting for its lease
    assert sorted(m.id for m in batch.messages) == ["m0", "m1", "m2"]
    assert sorted(r["id"] for r in (await listing(store, T0)).values()
                  if r["status"] == "sending") == ["m0", "m1", "m2"]


async def test_an_outcome_group_whose_reply_was_lost_still_reports_its_flags(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await make_store()
    await tenant(store)
    await account(store, limits=RateLimits(minute=3))
    await store.enqueue([new(1), new(2)], T0)
    batch = await store.claim("w1", T0, LEASE, 10)
    calls = _reply_lost_once(monkeypatch, PostgresStore, "_record_group")
    flags = await store.record("w1", [(m, Sent()) for m in batch.messages], T0 + 1)
    assert len(calls) == 2, "the group was retried"
    assert flags == [True, True]
    records = await listing(store, T0 + 2, include_history=True)
    assert {r["status"] for r in records.values()} == {"sent"}
    # written once: one event per message, one count per send in the rate window (3 a
    # minute, 2 spent: one more may go now)
    assert [len(r["history"]) for r in records.values()] == [1, 1]
    await store.enqueue([new(3), new(4)], T0 + 2)
    assert [m.id for m in (await store.claim("w1", T0 + 2, LEASE, 10)).messages] == ["m3"]


async def test_listen_wakes_other_instances_and_survives_reconnect(
    make_store: StoreFactory, pg_schema: PgSchema
) -> None:
    listener, writer = await make_store(), await make_store()
    await tenant(writer)
    await account(writer)
    woken = asyncio.Event()
    assert isinstance(listener, PostgresStore)
    await listener.listen(woken.set)

    await writer.enqueue([new(1)], T0)
    await asyncio.wait_for(woken.wait(), 5)

    woken.clear()
    await _kill_connections(pg_schema)
    await asyncio.wait_for(woken.wait(), 15)  # called once after re-subscribing
    woken.clear()
    await writer.enqueue([new(2)], T0)
    await asyncio.wait_for(woken.wait(), 5)


async def test_activation_and_account_changes_wake_other_instances(
    make_store: StoreFactory
) -> None:
    listener, writer = await make_store(), await make_store()
    await tenant(writer)
    woken = asyncio.Event()
    assert isinstance(listener, PostgresStore)
    await listener.listen(woken.set)
    await account(writer)
    await asyncio.wait_for(woken.wait(), 5)
    woken.clear()
    assert await writer.set_suspended("acme", []) is True
    await asyncio.wait_for(woken.wait(), 5)


async def test_nothing_queued_sends_no_wake_up(make_store: StoreFactory) -> None:
    listener, writer = await make_store(), await make_store()
    await tenant(writer)
    await account(writer)
    woken = asyncio.Event()
    assert isinstance(listener, PostgresStore)
    await listener.listen(woken.set)
    assert await writer.enqueue([new(1, error="missing to")], T0) == ["missing to"]
    await writer.enqueue([new(2)], T0)  # a later wake-up proves the first would have arrived
    await asyncio.wait_for(woken.wait(), 5)
    assert await writer.count_open("acme") == 1


async def test_unreachable_server_is_a_store_error(cipher: Vault) -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", cipher, retry_delays=())
    with pytest.raises(StoreError):
        await store.open()
    with pytest.raises(StoreError):
        await store.ping()
    await store.close()


async def test_driver_errors_leave_as_store_errors(make_store: StoreFactory,
                                                   pg_schema: PgSchema) -> None:
    store = await make_store()
    await tenant(store)
    con = await asyncpg.connect(pg_schema.base_url)
    try:
        await con.execute(f'DROP TABLE "{pg_schema.name}".messages CASCADE')
    finally:
        await con.close()
    with pytest.raises(StoreError):
        await store.count_open()
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()


def test_bad_schema_name_is_a_config_error(cipher: Vault) -> None:
    with pytest.raises(ConfigError):
        PostgresStore("postgresql://h/db?schema=x;drop", cipher)


async def test_an_older_release_rewriting_the_payload_leaves_no_stale_content(
    make_store: StoreFactory, pg_schema: PgSchema
) -> None:
    """A rolling upgrade: an instance of the release before `content` takes the message
    again under its id and rewrites only the payload. The claim must send the new message
    (its recipients), not the content stored for the first submission."""
    store = await make_store()
    await tenant(store)
    await account(store)
    first = intake.build(_item(to=["first@example.org"]), account_exists=True, is_pec=False,
                         rules=RULES, default_priority=None)
    assert await store.enqueue([first], T0) == [None]
    again = dict(first.payload, to=["second@example.org"])
    con = await asyncpg.connect(pg_schema.base_url,
                                server_settings={"search_path": pg_schema.name})
    try:  # that release's upsert: every column it knew, `content` not among them
        await con.execute("UPDATE messages SET payload = $1::jsonb WHERE client_id = 'm1'",
                          json.dumps(again))
    finally:
        await con.close()
    [claimed] = (await store.claim("w", T0 + 1, LEASE, 10)).messages
    assert claimed.content.to == ("second@example.org",)
    # This release's own upsert keeps the content it wrote.
    await store.record("w", [(claimed, Failed("x"))], T0 + 1)
    third = intake.build(_item(id="m2", to=["third@example.org"]), account_exists=True,
                         is_pec=False, rules=RULES, default_priority=None)
    assert await store.enqueue([third], T0 + 2) == [None]
    [claimed] = (await store.claim("w", T0 + 3, LEASE, 10)).messages
    assert claimed.content.to == ("third@example.org",)
