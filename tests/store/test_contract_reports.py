"""The store contract for delivery reports, sync state, retention, instance settings and the
command log (§8, §3.6, §3.7): every backend (memory, SQLite, PostgreSQL) must pass."""

from __future__ import annotations

import asyncio

from mailproxy.model import CommandEntry, Deferred, EventType, InstanceConfig, Sent, SyncState
from mailproxy.ports import Store
from tests.store.conftest import RawQuery
from tests.store.test_contract import LEASE, T0, account, listing, new, send_all, tenant

# -- pending events and acknowledgement ------------------------------------------------------


async def _two_tenants_with_events(store: Store) -> None:
    """acme: m3 refused at intake (error), m1 and m2 sent; beta: b1 sent."""
    await tenant(store)
    await tenant(store, "beta")
    await account(store)
    await account(store, "beta")
    await store.enqueue([new(1), new(2), new(3, error="invalid recipient")], T0)
    await store.enqueue([new("b1", tenant_id="beta")], T0)
    assert sorted(await send_all(store, T0 + 1)) == ["m1", "m2", "mb1"]


async def test_pending_events_in_event_order_with_their_message(store: Store) -> None:
    await _two_tenants_with_events(store)
    assert await store.pending_event_counts() == {"acme": 3, "beta": 1}
    events = await store.pending_events("acme", 10)
    assert [(e.client_id, e.event_type) for e in events] == [
        ("m3", EventType.ERROR), ("m1", EventType.SENT), ("m2", EventType.SENT)]
    assert [int(e.event_id) for e in events] == sorted(int(e.event_id) for e in events)
    error, sent = events[0], events[1]
    assert (error.description, error.metadata, error.event_ts) == (
        "invalid recipient", {"error_code": None}, int(T0))
    assert (sent.tenant_id, sent.account_id, sent.event_ts, sent.metadata) == (
        "acme", "main", int(T0) + 1, {})
    records = await listing(store, T0 + 1)
    assert sent.pk == records["m1"]["pk"] and error.pk == records["m3"]["pk"]
    assert [e.client_id for e in await store.pending_events("acme", 2)] == ["m3", "m1"]
    assert await store.pending_events("nobody", 10) == []


async def test_ack_events_marks_only_the_given_events_of_the_tenant(store: Store) -> None:
    await _two_tenants_with_events(store)
    events = await store.pending_events("acme", 10)
    beta_event = (await store.pending_events("beta", 10))[0]
    first_two = [events[0].event_id, events[1].event_id]
    # another tenant's event id is not acknowledged through this tenant
    assert await store.ack_events("acme", [*first_two, beta_event.event_id], int(T0) + 5) == 2
    assert [e.client_id for e in await store.pending_events("acme", 10)] == ["m2"]
    assert await store.pending_event_counts() == {"acme": 1, "beta": 1}
    records = await listing(store, T0 + 5)
    assert (records["m3"]["reported_ts"], records["m1"]["reported_ts"]) == (int(T0) + 5,
                                                                            int(T0) + 5)
    assert records["m2"]["reported_ts"] is None
    assert await store.ack_events("acme", first_two, int(T0) + 9) == 0  # already reported
    assert (await listing(store, T0 + 9))["m1"]["reported_ts"] == int(T0) + 5
    assert await store.ack_events("acme", [], int(T0) + 9) == 0


async def test_ack_all_events_of_one_tenant(store: Store) -> None:
    await _two_tenants_with_events(store)
    assert await store.ack_all_events("acme", int(T0) + 7) == 3
    assert await store.pending_event_counts() == {"beta": 1}
    assert {r["reported_ts"] for r in (await listing(store, T0 + 7)).values()} == {int(T0) + 7}
    assert await store.ack_all_events("acme", int(T0) + 8) == 0


# -- sync state and the report lease ---------------------------------------------------------


async def test_sync_state_round_trip(store: Store) -> None:
    await tenant(store)
    await tenant(store, "beta")
    assert await store.get_sync_state("acme") == SyncState("acme")
    assert await store.list_sync_states() == []
    state = SyncState("beta", last_sync_ts=int(T0), last_call_ts=T0 + 0.25,
                      consecutive_failures=2, retry_at=T0 + 10.5, last_error="HTTP 503",
                      next_sync_after=int(T0) + 3600, resync_at=T0 + 1.5)
    await store.put_sync_state(state)
    await store.put_sync_state(SyncState("acme", last_call_ts=T0))
    assert await store.get_sync_state("beta") == state
    assert [s.tenant_id for s in await store.list_sync_states()] == ["acme", "beta"]
    cleared = SyncState("beta", last_sync_ts=int(T0))
    await store.put_sync_state(cleared)
    assert await store.get_sync_state("beta") == cleared


async def test_report_lease_one_owner_until_it_expires(store: Store) -> None:
    await tenant(store)
    assert await store.acquire_report_lease("acme", "A", T0, T0 + 30) is True
    assert await store.acquire_report_lease("acme", "B", T0 + 1, T0 + 31) is False
    assert await store.acquire_report_lease("acme", "A", T0 + 20, T0 + 50) is True  # renewed
    assert await store.acquire_report_lease("acme", "B", T0 + 40, T0 + 70) is False
    assert await store.acquire_report_lease("acme", "B", T0 + 51, T0 + 81) is True  # expired
    assert await store.acquire_report_lease("acme", "A", T0 + 52, T0 + 82) is False
    await store.release_report_lease("acme", "A")  # not the owner: no effect
    assert await store.acquire_report_lease("acme", "C", T0 + 53, T0 + 83) is False
    await store.release_report_lease("acme", "B")
    assert await store.acquire_report_lease("acme", "C", T0 + 54, T0 + 84) is True
    # the lease lives beside the sync state and neither disturbs the other
    assert await store.get_sync_state("acme") == SyncState("acme")
    await store.put_sync_state(SyncState("acme", consecutive_failures=1))
    assert await store.acquire_report_lease("acme", "A", T0 + 55, T0 + 85) is False
    assert await store.get_sync_state("acme") == SyncState("acme", consecutive_failures=1)
    # leases are per tenant
    assert await store.acquire_report_lease("beta", "A", T0 + 55, T0 + 85) is True


async def test_delete_tenant_deletes_its_sync_state(store: Store) -> None:
    await tenant(store)
    await tenant(store, "beta")
    await store.put_sync_state(SyncState("acme", consecutive_failures=4, last_error="x"))
    await store.put_sync_state(SyncState("beta", consecutive_failures=1))
    assert await store.acquire_report_lease("acme", "A", T0, T0 + 300) is True
    assert await store.delete_tenant("acme") is True
    assert [s.tenant_id for s in await store.list_sync_states()] == ["beta"]
    await tenant(store)
    assert await store.get_sync_state("acme") == SyncState("acme")
    assert await store.acquire_report_lease("acme", "B", T0 + 1, T0 + 300) is True


# -- retention -------------------------------------------------------------------------------


async def test_purge_deletes_only_final_fully_reported_messages(
    store: Store, raw: RawQuery
) -> None:
    await tenant(store)
    await tenant(store, "beta")
    await account(store)
    await account(store, "beta")
    await store.enqueue([new(i) for i in range(1, 6)], T0)
    await store.enqueue([new("b", tenant_id="beta")], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    by_id = {m.id: m for m in batch.messages}
    retry = Deferred(reason="451 busy", next_ts=int(T0) + 600, retry_count=1)
    await store.record("w1", [(by_id["m1"], Sent()), (by_id["m2"], Sent()),
                              (by_id["m3"], retry), (by_id["m4"], Sent()),
                              (by_id["mb"], Sent())], T0)
    # m5 stays in sending. Acknowledged at T0+10: m1 (sent), m3 (deferred, not final), beta.
    events = {e.client_id: e.event_id for e in await store.pending_events("acme", 10)}
    await store.ack_events("acme", [events["m1"], events["m3"]], int(T0) + 10)
    await store.ack_all_events("beta", int(T0) + 10)
    # m4 acknowledged later than the threshold
    await store.ack_events("acme", [events["m4"]], int(T0) + 100)

    assert await store.purge_reported(int(T0) + 50, "acme") == 1
    assert sorted(await listing(store, T0 + 50)) == ["m2", "m3", "m4", "m5"]
    assert list(await listing(store, T0 + 50, tenant_id="beta")) == ["mb"]  # other tenant
    assert await store.purge_reported(int(T0) + 50) == 1  # every tenant: beta's mb
    assert await listing(store, T0 + 50, tenant_id="beta") == {}
    assert await store.purge_reported(int(T0) + 50) == 0
    # m2 (unreported), m3 (not final) and m5 (sending) stay whatever the threshold
    assert await store.purge_reported(int(T0) + 10**6) == 1  # m4
    assert sorted(await listing(store, T0 + 50)) == ["m2", "m3", "m5"]
    # their events went with them; the others' are kept
    left = await raw("SELECT count(*) FROM events")
    assert left[0][0] == 2  # m2 sent, m3 deferred


async def test_purge_keeps_a_message_with_one_event_still_unreported(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1)], T0)
    first = (await store.claim("w1", T0, LEASE, 1)).messages[0]
    retry = Deferred(reason="451 busy", next_ts=int(T0) + 1, retry_count=1)
    await store.record("w1", [(first, retry)], T0)
    deferred_event = (await store.pending_events("acme", 10))[0]
    await store.ack_events("acme", [deferred_event.event_id], int(T0) + 1)
    assert await send_all(store, T0 + 2) == ["m1"]  # final, its sent event not yet reported
    record = (await listing(store, T0 + 2))["m1"]
    assert (record["status"], record["reported_ts"]) == ("sent", int(T0) + 1)
    assert await store.purge_reported(int(T0) + 10**6) == 0
    await store.ack_all_events("acme", int(T0) + 3)
    assert await store.purge_reported(int(T0) + 10**6) == 1


# -- instance settings -----------------------------------------------------------------------


async def test_instance_round_trip_with_encrypted_password(store: Store, raw: RawQuery) -> None:
    empty = await store.get_instance()
    assert empty == InstanceConfig()
    config = InstanceConfig(
        name="prod", bounce_enabled=True, bounce_imap_host="imap.example.com",
        bounce_imap_port=993, bounce_imap_user="bounces@example.com",
        bounce_imap_password="imap-PLAINTEXT-5", bounce_imap_folder="Bounces",
        bounce_imap_ssl=False, bounce_poll_interval=120,
        bounce_return_path="bounces@example.com")
    await store.put_instance(config)
    got = await store.get_instance()
    assert got.created_at is not None and len(got.created_at) == 19
    assert got.updated_at is not None
    assert (got.name, got.bounce_enabled, got.bounce_imap_host, got.bounce_imap_port,
            got.bounce_imap_user, got.bounce_imap_password, got.bounce_imap_folder,
            got.bounce_imap_ssl, got.bounce_poll_interval, got.bounce_return_path) == (
        "prod", True, "imap.example.com", 993, "bounces@example.com", "imap-PLAINTEXT-5",
        "Bounces", False, 120, "bounces@example.com")
    assert "PLAINTEXT" not in repr(await raw("SELECT * FROM instance"))
    await store.put_instance(InstanceConfig(name="second"))  # replaces every field
    again = await store.get_instance()
    assert (again.name, again.bounce_enabled, again.bounce_imap_password,
            again.bounce_imap_ssl) == ("second", False, None, True)
    assert again.created_at == got.created_at
    assert len(await raw("SELECT * FROM instance")) == 1


# -- command log -----------------------------------------------------------------------------


def _entry(ts: int, endpoint: str, tenant_id: str | None, status: int = 200,
           payload: object = None) -> CommandEntry:
    return CommandEntry(command_ts=ts, endpoint=endpoint, tenant_id=tenant_id,
                        payload=payload, response_status=status)


async def _fill_log(store: Store) -> None:
    t = int(T0)
    for entry in (
        _entry(t + 1, "POST /tenant", None, payload={"id": "acme", "webhook_secret": "***"}),
        _entry(t + 2, "POST /account", "acme", payload={"z": 1, "a": {"y": [1, "é"]}}),
        _entry(t + 3, "POST /commands/add-messages", "acme", 400),
        _entry(t + 3, "POST /commands/add-messages", "acme"),
        _entry(t + 5, "DELETE /account/main", "beta", 404),
        _entry(t + 6, "PUT /tenant/acme", "acme", 204),
    ):
        await store.log_commands([entry])


async def test_command_log_order_total_and_paging(store: Store) -> None:
    await _fill_log(store)
    total, found = await store.list_commands(tenant_id=None, since_ts=None, until_ts=None,
                                             endpoint=None, limit=100, offset=0)
    assert total == 6
    t = int(T0)
    assert [(e.command_ts, e.response_status) for e in found] == [
        (t + 6, 204), (t + 5, 404), (t + 3, 200), (t + 3, 400), (t + 2, 200), (t + 1, 200)]
    ids = [e.id for e in found]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 6
    assert found[4].payload == {"z": 1, "a": {"y": [1, "é"]}}
    assert list(found[4].payload) == ["z", "a"]  # stored as given, key order included
    assert found[0].payload is None and found[5].tenant_id is None
    total, page = await store.list_commands(tenant_id=None, since_ts=None, until_ts=None,
                                            endpoint=None, limit=2, offset=2)
    assert total == 6  # ignores limit and offset
    assert [e.id for e in page] == ids[2:4]


async def test_concurrent_command_log_writes_are_all_kept_in_arrival_order(
    store: Store
) -> None:
    t = int(T0)
    await asyncio.gather(*(
        store.log_commands([_entry(t, f"POST /x{i}", "acme", payload={"i": i})])
        for i in range(30)))
    total, found = await store.list_commands(tenant_id=None, since_ts=None, until_ts=None,
                                             endpoint=None, limit=100, offset=0)
    assert total == 30
    assert [(e.endpoint, e.payload) for e in found] == [
        (f"POST /x{i}", {"i": i}) for i in reversed(range(30))]  # newest first


async def test_command_log_filters(store: Store) -> None:
    await _fill_log(store)
    t = int(T0)

    async def query(**kw: object) -> tuple[int, list[int]]:
        args: dict[str, object] = {"tenant_id": None, "since_ts": None, "until_ts": None,
                                   "endpoint": None, "limit": 100, "offset": 0, **kw}
        total, found = await store.list_commands(**args)  # type: ignore[arg-type]
        return total, [e.command_ts - t for e in found]

    assert await query(tenant_id="acme") == (4, [6, 3, 3, 2])
    assert await query(tenant_id="nobody") == (0, [])
    assert await query(since_ts=t + 3, until_ts=t + 5) == (3, [5, 3, 3])  # both inclusive
    assert await query(endpoint="ACCOUNT") == (2, [5, 2])  # case-insensitive substring
    assert await query(endpoint="post /commands") == (2, [3, 3])
    assert await query(endpoint="%") == (0, [])  # no pattern characters
    assert await query(tenant_id="acme", since_ts=t + 3, endpoint="tenant") == (1, [6])


async def test_command_log_export_and_prune(store: Store) -> None:
    await _fill_log(store)
    t = int(T0)
    exported = await store.export_commands(tenant_id=None, since_ts=None, until_ts=None)
    assert [(e.command_ts - t, e.endpoint) for e in exported] == [  # 2xx only, oldest first
        (1, "POST /tenant"), (2, "POST /account"), (3, "POST /commands/add-messages"),
        (6, "PUT /tenant/acme")]
    assert exported[0].payload == {"id": "acme", "webhook_secret": "***"}
    only = await store.export_commands(tenant_id="acme", since_ts=t + 3, until_ts=t + 5)
    assert [e.command_ts - t for e in only] == [3]
    assert await store.prune_commands(t + 3) == 2  # strictly older
    total, found = await store.list_commands(tenant_id=None, since_ts=None, until_ts=None,
                                             endpoint=None, limit=100, offset=0)
    assert total == 4 and min(e.command_ts for e in found) == t + 3
    assert await store.prune_commands(t + 3) == 0
