"""`last_error` and the ISO-8601 companions of a MessageRecord, on every backend."""

from __future__ import annotations

from mailproxy.model import Deferred, Failed, Sent
from mailproxy.ports import Store
from tests.store.test_contract import LEASE, T0, account, listing, new, tenant


async def test_last_error_follows_the_attempts(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1), new(2)], T0)
    record = (await listing(store, T0))["m1"]
    assert record["last_error"] is None
    batch = await store.claim("w1", T0, LEASE, 100)
    by_id = {m.id: m for m in batch.messages}
    await store.record("w1", [(by_id["m1"], Deferred("421 busy", int(T0) + 60, 1)),
                              (by_id["m2"], Failed("550 no such user", 550))], T0)
    records = await listing(store, T0 + 1)
    assert (records["m1"]["status"], records["m1"]["error"], records["m1"]["last_error"]) == (
        "deferred", None, "421 busy")
    assert records["m2"]["last_error"] == records["m2"]["error"] == "550 no such user"
    # Due again: listed as pending, still saying why it waited.
    assert (await listing(store, T0 + 61))["m1"]["last_error"] == "421 busy"
    again = await store.claim("w1", T0 + 61, LEASE, 100)
    await store.record("w1", [(again.messages[0], Deferred("451 later", int(T0) + 200, 2))],
                       T0 + 61)
    assert (await listing(store, T0 + 62))["m1"]["last_error"] == "451 later"
    final = await store.claim("w1", T0 + 200, LEASE, 100)
    await store.record("w1", [(final.messages[0], Sent())], T0 + 200)
    assert (await listing(store, T0 + 201))["m1"]["last_error"] is None


async def test_a_resubmitted_message_starts_without_last_error(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    await store.record("w1", [(batch.messages[0], Deferred("421 busy", int(T0) + 60, 1))], T0)
    await store.enqueue([new(1)], T0 + 1)
    assert (await listing(store, T0 + 2))["m1"]["last_error"] is None


async def test_time_fields_have_iso_companions(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1, deferred_ts=int(T0) + 3600)], T0)
    record = (await listing(store, T0, include_history=True))["m1"]
    assert record["deferred_ts_iso"] == "2027-01-15T09:00:00Z"  # T0 + 1 h
    assert record["created_at_iso"] == "2027-01-15T08:00:00Z"
    assert record["created_at"] == "2027-01-15 08:00:00"  # the v0.6 type stays
    assert record["sent_ts_iso"] is None and record["error_ts_iso"] is None


async def test_every_tenant_listing_pages_by_keyset(store: Store) -> None:
    acme = await tenant(store)
    beta = await tenant(store, "beta")
    await account(store)
    await account(store, "beta", "main")
    for i in range(1, 4):
        await store.enqueue([new(f"a{i}")], T0 + i)
        await store.enqueue([new(f"b{i}", tenant_id="beta")], T0 + i)
    tenants = {"acme": acme, "beta": beta}
    first, last = await store.list_all_messages(tenants, now=int(T0) + 10, limit=4)
    assert [(r.tenant_id, r.client_id) for r in first] == [
        ("beta", "mb3"), ("acme", "ma3"), ("beta", "mb2"), ("acme", "ma2")]
    rest, end = await store.list_all_messages(tenants, now=int(T0) + 10, limit=4, before=last)
    assert [r.client_id for r in rest] == ["mb1", "ma1"]
    assert end is not None
    none, _ = await store.list_all_messages(tenants, now=int(T0) + 10, before=end)
    assert none == []
    pending, _ = await store.list_all_messages(tenants, now=int(T0) + 10, status="sent")
    assert pending == []
