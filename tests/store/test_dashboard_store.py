"""The dashboard's store (issue 15) on memory, SQLite and PostgreSQL: the trigger-kept
counters always equal a count of the messages table, pages are keyset-paginated, and the
operator actions change only what they should."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mailproxy.dashboard.port import STATUSES, DashboardStore, Filter
from mailproxy.model import Deferred, Failed, Priority, RateLimits, Sent
from mailproxy.ports import Store
from mailproxy.store import open_dashboard_store
from tests.store.conftest import StoreFactory
from tests.store.test_contract import LEASE, T0, account, listing, new, send_all, tenant


async def truth(store: Store, now: float, tenant_ids: tuple[str, ...] = ("acme",)
                ) -> dict[str, dict[str, int]]:
    """Display-status counts from GET /messages' own listing."""
    out: dict[str, dict[str, int]] = {}
    for tenant_id in tenant_ids:
        if await store.get_tenant(tenant_id) is None:
            continue
        records = await listing(store, now, tenant_id)
        counted = Counter(r["status"] for r in records.values())
        out[tenant_id] = {s: counted.get(s, 0) for s in STATUSES}
    return out


def nonzero(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {t: {s: n for s, n in c.items() if n} for t, c in counts.items()
            if any(c.values())}


async def check_counts(dash: DashboardStore, store: Store, now: float,
                       tenants: tuple[str, ...] = ("acme",)) -> None:
    assert nonzero(await dash.status_counts(None, int(now))) == nonzero(
        await truth(store, now, tenants))


async def test_counters_follow_every_transition(store: Store) -> None:
    dash = open_dashboard_store(store)
    await tenant(store)
    await tenant(store, "beta")
    await account(store)
    await account(store, "beta")
    await store.enqueue([new(i) for i in range(6)] + [new("bad", error="invalid to"),
                         new("later", deferred_ts=int(T0) + 600),
                         new("b1", tenant_id="beta")], T0)
    await check_counts(dash, store, T0, ("acme", "beta"))
    # a corrected resubmission replaces the intake error, and a duplicate adds nothing
    assert await store.enqueue([new("bad"), new(0), new("b2", tenant_id="beta")], T0) == [
        None, None, None]
    await check_counts(dash, store, T0, ("acme", "beta"))
    batch = await store.claim("w1", T0, LEASE, 3)
    await check_counts(dash, store, T0, ("acme", "beta"))
    m0, m1, m2 = batch.messages[:3]
    await store.record("w1", [(m0, Sent()), (m1, Deferred("451 later", int(T0) + 60, 1)),
                              (m2, Failed("550 no such user", 550))], T0 + 1)
    await check_counts(dash, store, T0 + 1, ("acme", "beta"))
    # a deferral whose time has come reads as pending, and so does the due scheduled row
    await check_counts(dash, store, T0 + 700, ("acme", "beta"))
    counts = await dash.status_counts("acme", int(T0 + 700))
    assert counts["acme"].get("deferred", 0) == 0 and counts["acme"].get("scheduled", 0) == 0
    await store.claim("w1", T0 + 2, LEASE, 100)
    await store.recover(T0 + 2 + LEASE + 1, 5, all_sending=False)
    await check_counts(dash, store, T0 + 2 + LEASE + 1, ("acme", "beta"))
    removed, _ = await store.delete_messages("acme", ["m3", "mbad"])
    assert removed == 2
    await check_counts(dash, store, T0 + 400, ("acme", "beta"))
    await store.delete_tenant("beta")
    assert "beta" not in nonzero(await dash.status_counts(None, int(T0 + 400)))
    await dash.maintain(int(T0 + 400))
    await check_counts(dash, store, T0 + 400)


async def test_counters_follow_an_id_given_twice_in_one_call(store: Store) -> None:
    dash = open_dashboard_store(store)
    await tenant(store)
    await account(store)
    assert await store.enqueue([new("x", error="invalid to"), new("x")], T0) == [
        "invalid to", None]
    assert await store.enqueue([new("y"), new("y", deferred_ts=int(T0) + 600)], T0) == [
        None, None]
    await check_counts(dash, store, T0)
    assert nonzero(await dash.status_counts("acme", int(T0)))["acme"] == {
        "pending": 1, "scheduled": 1}


async def test_minute_rollups_and_attempt_times(store: Store) -> None:
    dash = open_dashboard_store(store)
    await tenant(store)
    await account(store)
    await store.enqueue([new(i) for i in range(3)], T0)
    batch = await store.claim("w1", T0, LEASE, 10)
    a, b, c = batch.messages
    await store.record("w1", [(a, Sent()), (b, Sent())], T0 + 0.25)
    await store.record("w1", [(c, Deferred("421 busy", int(T0) + 90, 1))], T0 + 61)
    minutes = {(m.minute, m.kind): m.n for m in await dash.minute_counts("acme", int(T0) - 60)}
    first = int(T0) // 60 * 60
    assert minutes[(first, "sent")] == 2
    assert minutes[((int(T0) + 61) // 60 * 60, "deferred")] == 1
    assert await dash.minute_counts("other", int(T0) - 60) == []
    detail = await dash.message(c.pk, int(T0) + 62)
    assert detail is not None
    assert detail.row.status == "deferred" and detail.row.retry_count == 1
    [attempt] = detail.attempts
    assert (attempt.started_ts, attempt.ended_ts, attempt.outcome) == (T0, T0 + 61, "deferred")
    assert [e.description for e in detail.history] == ["421 busy"]


async def test_pages_are_keyset_paginated_newest_first(store: Store) -> None:
    dash = open_dashboard_store(store)
    await tenant(store)
    await account(store)
    for i in range(120):
        await store.enqueue([new(i, batch="even" if i % 2 == 0 else None,
                                 subject=f"Invoice {i}")], T0 + i)
    seen: list[str] = []
    cursor = None
    for expected in (50, 50, 20):
        page = await dash.page(Filter(tenant_id="acme"), int(T0) + 200, cursor, 50, 5000)
        assert len(page.rows) == expected
        seen.extend(r.id for r in page.rows)
        cursor = page.next_cursor
    assert cursor is None
    assert seen == [f"m{i}" for i in reversed(range(120))]
    admin = await dash.page(Filter(), int(T0) + 200, None, 10, 5000)
    assert [r.id for r in admin.rows] == [f"m{i}" for i in range(119, 109, -1)]
    even = await dash.page(Filter(batch_code="even", text="invoice 1"), int(T0) + 200, None,
                           50, 5000)
    assert {r.id for r in even.rows} == {f"m{i}" for i in range(120) if i % 2 == 0
                                         and str(i).startswith("1")}
    # a bounded scan: 30 messages looked at, no match, a cursor to look further
    window = await dash.page(Filter(tenant_id="acme", batch_code="nope"), int(T0), None, 50, 30)
    assert window.rows == () and window.partial and window.next_cursor is not None
    assert window.next_cursor.created_ts == T0 + 90


async def test_status_filters_use_display_status(store: Store) -> None:
    dash = open_dashboard_store(store)
    await tenant(store)
    await account(store)
    await store.enqueue([new("now"), new("soon", deferred_ts=int(T0) + 100),
                         new("bad", error="invalid to")], T0)
    now = int(T0) + 10

    async def ids(status: str, at: int = now) -> set[str]:
        page = await dash.page(Filter(status=status), at, None, 50, 5000)
        return {r.id for r in page.rows}

    assert await ids("pending") == {"mnow"}
    assert await ids("scheduled") == {"msoon"}
    assert await ids("error") == {"mbad"}
    assert await ids("pending", int(T0) + 200) == {"mnow", "msoon"}
    assert await ids("scheduled", int(T0) + 200) == set()


async def test_retry_and_cancel_respect_the_confirmed_count(store: Store) -> None:
    dash = open_dashboard_store(store)
    await tenant(store)
    await account(store)
    await store.enqueue([new(i, batch="promo") for i in range(3)]
                        + [new("x", deferred_ts=int(T0) + 999)], T0)
    flt = Filter(tenant_id="acme", batch_code="promo")
    assert await dash.count_actionable(flt, "cancel", int(T0)) == 3
    stale = await dash.act(flt, "cancel", int(T0), expected=2)
    assert (stale.matched, stale.changed) == (3, 0)
    assert (await listing(store, T0))["m0"]["status"] == "pending"
    done = await dash.act(flt, "cancel", int(T0), expected=3)
    assert (done.matched, done.changed) == (3, 3)
    records = await listing(store, T0, include_history=True)
    assert records["m0"]["status"] == "error" and records["m0"]["error"] == "cancelled"
    assert [h["description"] for h in records["m0"]["history"]] == ["cancelled"]
    assert [e.description for e in await store.pending_events("acme", 10)] == ["cancelled"] * 3
    retried = await dash.act(Filter(tenant_id="acme", pk=records["mx"]["pk"]), "retry",
                             int(T0) + 5, None)
    assert retried.changed == 1
    assert await send_all(store, T0 + 5) == ["mx"]
    await check_counts(dash, store, T0 + 5)


async def test_rate_use_oldest_waiting_and_waiting_count(store: Store) -> None:
    dash = open_dashboard_store(store)
    await tenant(store)
    await account(store, limits=RateLimits(minute=2))
    await store.enqueue([new(i, priority=Priority.LOW) for i in range(4)], T0)
    await store.enqueue([new("urgent", priority=Priority.IMMEDIATE)], T0 + 5)
    assert await dash.oldest_waiting("acme", int(T0) + 10) == T0
    assert await dash.oldest_waiting(None, int(T0) + 10) == T0
    assert len(await send_all(store, T0 + 10)) == 2
    use = await dash.rate_use(["a:acme/main", "t:acme"], int(T0) + 20)
    assert use == {"a:acme/main": (2, 2, 2)}
    assert await dash.waiting_of_account("acme", "main") == 3
    assert await dash.oldest_waiting("other", int(T0) + 10) is None


async def test_counts_survive_many_instances(make_store: StoreFactory, backend: str) -> None:
    """PostgreSQL: counter shards of several instances (and of closed ones) add up."""
    if backend != "postgres":
        return
    first = await make_store()
    second = await make_store()
    await tenant(first)
    await account(first)
    await first.enqueue([new(i) for i in range(4)], T0)
    await second.enqueue([new(i) for i in range(4, 8)], T0)
    await send_all(second, T0 + 1, owner="w2")
    dash = open_dashboard_store(first)
    await first.close()  # its backends are gone: their shards fold into shard 0
    other = open_dashboard_store(second)
    await other.maintain(int(T0) + 2)
    counts: dict[str, Any] = await other.status_counts("acme", int(T0) + 2)
    assert counts == {"acme": {"sent": 8}}
    assert dash is not None
