"""The store contract: every backend (memory, SQLite, PostgreSQL) must pass every test."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from mailproxy.ingress.http import message_info
from mailproxy.model import (
    Account,
    ClientAuth,
    Deferred,
    Failed,
    LimitBehavior,
    NewMessage,
    Priority,
    RateLimits,
    Sent,
    Tenant,
)
from mailproxy.ports import Store
from mailproxy.store.rows import ts_text
from tests.store.conftest import RawQuery

T0 = 1_800_000_000.0
LEASE = 300.0


# -- helpers ---------------------------------------------------------------------------------


async def tenant(store: Store, tenant_id: str = "acme", **fields: Any) -> Tenant:
    await store.put_tenant(Tenant(id=tenant_id, **fields))
    found = await store.get_tenant(tenant_id)
    assert found is not None
    return found


async def account(store: Store, tenant_id: str = "acme", account_id: str = "main",
                  **fields: Any) -> Account:
    values: dict[str, Any] = {"host": "relay.test", "port": 25, **fields}
    acc = Account(tenant_id=tenant_id, id=account_id, **values)
    await store.put_account(acc)
    return acc


def new(i: int | str, *, tenant_id: str = "acme", account_id: str = "main",
        priority: Priority = Priority.MEDIUM, deferred_ts: int | None = None,
        batch: str | None = None, error: str | None = None, subject: str | None = None
        ) -> NewMessage:
    payload = {"id": f"m{i}", "subject": subject or f"Hello {i}", "to": ["r@example.org"]}
    return NewMessage(tenant_id=tenant_id, id=f"m{i}", account_id=account_id,
                      priority=priority, deferred_ts=deferred_ts, batch_code=batch,
                      payload=payload, error=error)


async def listing(store: Store, now: float, tenant_id: str = "acme", **kw: Any
                  ) -> dict[str, dict[str, Any]]:
    found = await store.get_tenant(tenant_id)
    assert found is not None
    records = await store.list_messages(found, now=int(now), **kw)
    return {r["id"]: r for r in map(message_info, records)}  # as GET /messages shows them


async def claim_ids(store: Store, now: float, owner: str = "w1", max_total: int = 100,
                    skip: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    batch = await store.claim(owner, now, LEASE, max_total, skip)
    return [m.id for m in batch.messages]


async def send_all(store: Store, now: float, owner: str = "w1") -> list[str]:
    """Claim what is due and record it as sent."""
    batch = await store.claim(owner, now, LEASE, 100)
    if batch.messages:
        assert all(await store.record(owner, [(m, Sent()) for m in batch.messages], now))
    return [m.id for m in batch.messages]


# -- meta, tenants, accounts -----------------------------------------------------------------


async def test_meta(store: Store) -> None:
    assert await store.get_meta("k") is None
    assert await store.set_meta_if_absent("k", "first") == "first"
    assert await store.set_meta_if_absent("k", "second") == "first"
    await store.set_meta("k", "third")
    assert await store.get_meta("k") == "third"
    await store.ping()


async def test_tenant_crud(store: Store) -> None:
    limits = RateLimits(minute=5, hour=None, day=100)
    created = await store.put_tenant(Tenant(
        id="acme", name="Acme", client_base_url="https://acme.test", rate_limits=limits,
        large_file_config={"enabled": True, "max_size_mb": 5}, urls_set_by_tenant=True))
    assert created is True
    got = await store.get_tenant("acme")
    assert got is not None
    assert (got.name, got.client_base_url, got.rate_limits) == ("Acme", "https://acme.test",
                                                                limits)
    assert got.large_file_config == {"enabled": True, "max_size_mb": 5}
    assert got.urls_set_by_tenant and got.active and got.suspended_batches == ()
    assert got.created_at is not None and len(got.created_at) == 19

    assert await store.set_api_key("acme", "hash-1", 1234) is True
    assert await store.set_suspended("acme", ["b1"]) is True
    assert await store.put_tenant(replace(got, name="Acme 2", active=False)) is False
    again = await store.get_tenant("acme")
    assert again is not None
    assert (again.name, again.active) == ("Acme 2", False)
    # put_tenant replaces the fields, never the key or the suspension
    assert (again.api_key_hash, again.suspended_batches) == ("hash-1", ("b1",))

    await tenant(store, "beta")
    assert [t.id for t in await store.list_tenants()] == ["acme", "beta"]
    assert [t.id for t in await store.list_tenants(active_only=True)] == ["beta"]
    assert await store.get_tenant("nope") is None
    assert await store.set_api_key("nope", "h", None) is False
    assert await store.set_suspended("nope", ["*"]) is False
    assert await store.delete_tenant("nope") is False


async def test_key_hash_lookup(store: Store) -> None:
    await tenant(store)
    await store.set_api_key("acme", "digest-abc", 1900000000)
    found = await store.tenant_by_key_hash("digest-abc")
    assert found is not None
    assert (found.id, found.api_key_expires_at) == ("acme", 1900000000)
    assert await store.tenant_by_key_hash("digest-other") is None
    await store.set_api_key("acme", None, None)
    assert await store.tenant_by_key_hash("digest-abc") is None


async def test_secrets_round_trip_and_encrypted_at_rest(store: Store, raw: RawQuery) -> None:
    await tenant(store, client_auth=ClientAuth(method="bearer", token="tok-PLAINTEXT-1"),
                 webhook_secret="whsec-PLAINTEXT-2")
    await account(store, user="u", password="pw-PLAINTEXT-3", imap_password="imap-PLAINTEXT-4",
                  submission_password_hash="hash$x")
    got = await store.get_tenant("acme")
    assert got is not None
    assert got.client_auth == ClientAuth(method="bearer", token="tok-PLAINTEXT-1")
    assert got.webhook_secret == "whsec-PLAINTEXT-2"
    acc = await store.get_account("acme", "main")
    assert acc is not None
    assert (acc.password, acc.imap_password) == ("pw-PLAINTEXT-3", "imap-PLAINTEXT-4")
    assert acc.submission_password_hash == "hash$x"
    stored = repr(await raw("SELECT * FROM tenants")) + repr(await raw("SELECT * FROM accounts"))
    assert "PLAINTEXT" not in stored


async def test_attachment_auth_secrets_are_encrypted_at_rest(store: Store, raw: RawQuery
                                                              ) -> None:
    await tenant(store)
    await account(store)
    attachment = {"filename": "a.txt", "storage_path": "base64:YQ==",
                  "auth": {"method": "basic", "user": "ann", "password": "att-PLAINTEXT-5"}}
    bearer = {**attachment, "auth": {"method": "bearer", "token": "att-PLAINTEXT-6"}}
    payload = {"id": "m1", "to": ["r@example.org"], "attachments": [attachment, bearer]}
    assert await store.enqueue([replace(new(1), payload=payload)], T0) == [None]
    assert "PLAINTEXT" not in repr(await raw("SELECT * FROM messages"))
    shown = (await listing(store, T0))["m1"]["message"]["attachments"]
    assert [a["auth"] for a in shown] == [
        {"method": "basic", "user": "ann", "password": "***"},
        {"method": "bearer", "token": "***"}]
    [claimed] = (await store.claim("w1", T0, LEASE, 10)).messages
    assert "PLAINTEXT" not in repr(claimed.payload)


async def test_account_crud(store: Store) -> None:
    await tenant(store)
    await tenant(store, "beta")
    await account(store, account_id="b", limits=RateLimits(minute=3), batch_size=7,
                  limit_behavior=LimitBehavior.REJECT, use_tls=True, is_pec_account=True)
    await account(store, account_id="a")
    await account(store, "beta", "x")
    got = await store.get_account("acme", "b")
    assert got is not None
    assert (got.limits, got.batch_size, got.limit_behavior, got.use_tls, got.is_pec_account) \
        == (RateLimits(minute=3), 7, LimitBehavior.REJECT, True, True)
    assert [a.id for a in await store.list_accounts("acme")] == ["a", "b"]
    assert [a.key for a in await store.list_accounts()] == [
        ("acme", "a"), ("acme", "b"), ("beta", "x")]
    await account(store, account_id="b", port=2525)
    updated = await store.get_account("acme", "b")
    assert updated is not None and updated.port == 2525
    assert await store.get_account("beta", "a") is None
    assert await store.delete_account("acme", "a", int(T0)) is True
    assert await store.delete_account("acme", "a", int(T0)) is False
    assert [a.id for a in await store.list_accounts("acme")] == ["b"]


# -- enqueue ---------------------------------------------------------------------------------


async def test_enqueue_new_and_listing_record(store: Store) -> None:
    await tenant(store, name="Acme Inc")
    await account(store)
    payload = {"z": 1, "a": [1, 2], "id": "m1", "nested": {"y": "é", "b": None}}
    item = replace(new(1, batch="spring"), payload=payload, is_pec=True)
    assert await store.enqueue([item], T0) == [None]
    record = (await listing(store, T0))["m1"]
    assert list(record["message"]) == ["z", "a", "id", "nested"]  # stored as submitted
    assert record["message"] == payload
    assert record["status"] == "pending" and record["suspended"] is False
    assert (record["tenant_name"], record["account_id"], record["batch_code"]) == (
        "Acme Inc", "main", "spring")
    assert (record["priority"], record["deferred_ts"], record["retry_count"]) == (2, None, 0)
    assert record["is_pec"] is True
    assert record["created_at"] == ts_text(T0) == record["updated_at"]
    assert record["sent_ts"] is None and record["error"] is None
    assert len(record["pk"]) == 36
    assert await store.count_open("acme") == 1


async def test_upsert_keeps_queue_position_and_resets_retries(store: Store) -> None:
    await tenant(store)
    await account(store)
    assert await store.enqueue([new(1)], T0) == [None]
    assert await store.enqueue([new(2)], T0 + 1) == [None]
    first = await store.claim("w1", T0 + 2, LEASE, 1)
    assert [m.id for m in first.messages] == ["m1"]
    deferred = Deferred("451 try later", int(T0) + 500, 1)
    assert await store.record("w1", [(first.messages[0], deferred)], T0 + 2) == [True]
    assert (await listing(store, T0 + 3))["m1"]["retry_count"] == 1

    assert await store.enqueue([new(1, subject="Fixed", priority=Priority.MEDIUM)], T0 + 3) \
        == [None]
    again = await store.claim("w1", T0 + 4, LEASE, 100)
    assert [m.id for m in again.messages] == ["m1", "m2"]
    assert again.messages[0].retry_count == 0
    assert again.messages[0].payload["subject"] == "Fixed"
    record = (await listing(store, T0 + 4))["m1"]
    assert record["created_at"] == ts_text(T0)


async def test_enqueue_same_id_twice_in_one_call_upserts(store: Store) -> None:
    await tenant(store)
    await account(store)
    assert await store.enqueue([new(1), new(1, subject="Second")], T0) == [None, None]
    records = await listing(store, T0)
    assert len(records) == 1 and records["m1"]["message"]["subject"] == "Second"


async def test_enqueue_already_sent_and_being_sent(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1), new(2)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    assert await store.record("w1", [(batch.messages[0], Sent())], T0 + 1) == [True]
    assert await store.enqueue([new(1, subject="x"), new(2, subject="y")], T0 + 2) == [
        "already sent", "message is being sent"]
    records = await listing(store, T0 + 2)
    assert records["m1"]["status"] == "sent" and records["m1"]["sent_ts"] == int(T0) + 1
    assert records["m2"]["status"] == "sending"
    assert records["m2"]["message"]["subject"] == "Hello 2"


async def test_a_mixed_batch_answers_each_item_in_order_and_queues_in_batch_order(
    store: Store
) -> None:
    await tenant(store)
    await account(store)
    await tenant(store, "beta")
    await account(store, "beta")
    await store.enqueue([new("old"), new("done"), new("busy")], T0)
    claimed = {m.id: m for m in (await store.claim("w1", T0, LEASE, 100)).messages}
    await store.record("w1", [(claimed["mdone"], Sent()),
                              (claimed["mold"], Deferred("451 later", int(T0), 1))], T0)
    await store.enqueue([new("bad0", error="missing to")], T0)  # "mbusy" stays sending

    items = [
        new(5),
        new("bad", error="missing subject"),
        new("done", subject="again"),
        new("busy", subject="again"),
        new(3, tenant_id="beta", subject="Beta's third"),
        new(3),
        new("old", subject="Replaced"),
        new("bad0"),
        new(7, error="missing to"),
        new(7, subject="Seventh, fixed"),
        new(5, subject="Fifth, second time"),
        new(8, deferred_ts=int(T0) + 100),
        replace(new(9), raw=b"Subject: raw\r\n\r\nbody\r\n", is_pec=True,
                envelope_from="bounce@acme.test"),
    ]
    assert await store.enqueue(items, T0 + 1) == [
        None, "missing subject", "already sent", "message is being sent", None, None, None,
        None, "missing to", None, None, None, None]

    records = await listing(store, T0 + 1, include_history=True)
    assert records["m5"]["message"]["subject"] == "Fifth, second time"
    assert records["mold"]["message"]["subject"] == "Replaced"
    assert records["mdone"]["status"] == "sent"
    assert (records["mbusy"]["status"], records["mbusy"]["message"]["subject"]) == (
        "sending", "Hello busy")
    assert (records["mbad"]["status"], records["mbad"]["error"]) == ("error", "missing subject")
    assert [h["event_type"] for h in records["mbad"]["history"]] == ["error"]
    assert (records["mbad0"]["status"], records["mbad0"]["error"]) == ("pending", None)
    assert (records["m7"]["status"], records["m7"]["message"]["subject"]) == (
        "pending", "Seventh, fixed")
    assert [h["description"] for h in records["m7"]["history"]] == ["missing to"]
    assert (records["m8"]["status"], records["m8"]["deferred_ts"]) == ("scheduled", int(T0) + 100)
    assert records["m9"]["is_pec"] is True
    assert records["m3"]["message"]["subject"] == "Hello 3"
    beta = await listing(store, T0 + 1, "beta")
    assert list(beta) == ["m3"] and beta["m3"]["message"]["subject"] == "Beta's third"

    # replaced rows keep their place; new ids follow in the order of the batch
    batch = await store.claim("w1", T0 + 2, LEASE, 100)
    assert [m.id for m in batch.messages if m.tenant_id == "acme"] == [
        "mold", "mbad0", "m5", "m3", "m7", "m9"]
    ninth = next(m for m in batch.messages if m.id == "m9")
    assert (ninth.raw, ninth.envelope_from) == (
        b"Subject: raw\r\n\r\nbody\r\n", "bounce@acme.test")
    assert [m.id for m in batch.messages if m.tenant_id == "beta"] == ["m3"]


async def test_rows_are_numbered_in_the_order_given_around_intake_errors(
        store: Store) -> None:
    await tenant(store)
    await account(store)
    assert await store.enqueue([new(1), new(2, error="missing to"), new(3), new(4)], T0) == [
        None, "missing to", None, None]
    assert list(await listing(store, T0)) == ["m4", "m3", "m2", "m1"]  # newest first


async def test_ids_of_any_text_are_known_again_in_a_large_batch(store: Store) -> None:
    await tenant(store)
    await account(store)
    odd = ['q"uote', "back\\slash", "emoji \U0001f600", "caf\u00e9", "tab\tin", "a,b"]
    await store.enqueue([new(i) for i in odd], T0)
    await send_all(store, T0)
    batch = [new(i, subject="again") for i in odd] + [new(n) for n in range(500)]
    assert await store.enqueue(batch, T0 + 1) == ["already sent"] * len(odd) + [None] * 500
    records = await listing(store, T0 + 1)
    assert len(records) == len(odd) + 500
    assert {records[f"m{i}"]["message"]["subject"] for i in odd} == {
        f"Hello {i}" for i in odd}


async def test_concurrent_calls_are_answered_each_and_stored_in_arrival_order(
        store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(0)], T0)
    calls = [[new(1)], [new(2), new(3, error="missing to")], [new(1, subject="again")],
             [new(0, subject="again")], [new(4)]]
    answers = await asyncio.gather(*(store.enqueue(c, T0 + 1) for c in calls))
    assert answers == [[None], [None, "missing to"], [None], [None], [None]]
    records = await listing(store, T0 + 1)
    assert list(records) == ["m4", "m3", "m2", "m1", "m0"]  # the order they came in
    assert records["m1"]["message"]["subject"] == "again"  # the later call replaced it
    assert records["m0"]["message"]["subject"] == "again"


async def test_a_call_refused_by_the_database_fails_alone(store: Store) -> None:
    await tenant(store)
    await account(store)
    unwritable = replace(new(2), payload={"id": "m2", "when": object()})
    answers = await asyncio.gather(store.enqueue([new(1)], T0), store.enqueue([unwritable], T0),
                                   store.enqueue([new(3)], T0), return_exceptions=True)
    assert answers[0] == [None] and answers[2] == [None]
    assert isinstance(answers[1], Exception)
    assert list(await listing(store, T0)) == ["m3", "m1"]


async def test_intake_error_stored_then_replaced_by_valid_repost(store: Store) -> None:
    await tenant(store)
    await account(store)
    assert await store.enqueue([new(1, error="missing subject")], T0) == ["missing subject"]
    record = (await listing(store, T0, include_history=True))["m1"]
    assert (record["status"], record["error"], record["error_ts"]) == (
        "error", "missing subject", int(T0))
    assert [(h["event_type"], h["description"]) for h in record["history"]] == [
        ("error", "missing subject")]
    assert await store.count_open("acme") == 0

    assert await store.enqueue([new(1)], T0 + 1) == [None]
    record = (await listing(store, T0 + 1))["m1"]
    assert (record["status"], record["error"], record["error_ts"]) == ("pending", None, None)

    # a pending row is left untouched by an invalid re-post
    assert await store.enqueue([new(1, error="missing to", subject="bad")], T0 + 2) == [
        "missing to"]
    record = (await listing(store, T0 + 2))["m1"]
    assert (record["status"], record["message"]["subject"]) == ("pending", "Hello 1")


async def test_error_after_attempt_is_final(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    await store.record("w1", [(batch.messages[0], Failed("550 no such user", 550))], T0)
    assert await store.enqueue([new(1)], T0 + 1) == ["already sent"]
    record = (await listing(store, T0 + 1, include_history=True))["m1"]
    assert (record["status"], record["error"]) == ("error", "550 no such user")
    assert record["history"][0]["metadata"] == {"error_code": 550}


# -- claiming --------------------------------------------------------------------------------


async def test_scheduled_rows_wait_until_due(store: Store) -> None:
    await tenant(store)
    await account(store)
    due = int(T0) + 100
    await store.enqueue([new(1, deferred_ts=due), new(2, deferred_ts=int(T0) - 5)], T0)
    records = await listing(store, T0)
    assert (records["m1"]["status"], records["m1"]["deferred_ts"]) == ("scheduled", due)
    assert (records["m2"]["status"], records["m2"]["deferred_ts"]) == ("pending", None)
    assert await claim_ids(store, T0) == ["m2"]
    assert await claim_ids(store, T0 + 99) == []
    assert (await listing(store, T0 + 100))["m1"]["status"] == "pending"
    assert (await listing(store, T0 + 100))["m1"]["deferred_ts"] == due
    assert await claim_ids(store, T0 + 100) == ["m1"]


async def test_retry_deferral_due_later(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    outcome = Deferred("421 busy", int(T0) + 60, 1)
    assert await store.record("w1", [(batch.messages[0], outcome)], T0) == [True]
    record = (await listing(store, T0 + 1, include_history=True))["m1"]
    assert (record["status"], record["deferred_ts"], record["error"]) == (
        "deferred", int(T0) + 60, None)
    assert record["history"][0]["metadata"] == {"retry_count": 1,
                                                 "next_attempt_ts": int(T0) + 60}
    assert await claim_ids(store, T0 + 59) == []
    again = await store.claim("w1", T0 + 60, LEASE, 100)
    assert [(m.id, m.retry_count) for m in again.messages] == [("m1", 1)]


async def test_claim_order_priority_then_fifo(store: Store) -> None:
    await tenant(store)
    await account(store)
    prios = [Priority.LOW, Priority.IMMEDIATE, Priority.MEDIUM, Priority.IMMEDIATE, Priority.HIGH]
    for i, p in enumerate(prios, 1):
        await store.enqueue([new(i, priority=p)], T0 + i)
    batch = await store.claim("w1", T0 + 10, LEASE, 100)
    assert [m.id for m in batch.messages] == ["m2", "m4", "m5", "m3", "m1"]
    first = batch.messages[0]
    assert (first.tenant_id, first.account_id, first.priority, first.date_ts) == (
        "acme", "main", 0, int(T0) + 10)
    assert first.payload["subject"] == "Hello 2" and first.raw is None
    assert (await listing(store, T0 + 10))["m1"]["status"] == "sending"


async def test_every_account_served_each_cycle(store: Store) -> None:
    await tenant(store)
    await tenant(store, "beta")
    await account(store, account_id="a1", batch_size=2)
    await account(store, "beta", "b1", batch_size=3)
    await store.enqueue([new(f"a{i}", account_id="a1") for i in range(6)], T0)
    await store.enqueue([new(f"b{i}", tenant_id="beta", account_id="b1") for i in range(6)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    got = sorted(m.id for m in batch.messages)
    assert got == ["ma0", "ma1", "mb0", "mb1", "mb2"]
    assert len(await claim_ids(store, T0, max_total=3)) == 3


async def test_raw_bytes_round_trip(store: Store) -> None:
    await tenant(store)
    await account(store)
    data = b"From: a@b\r\n\r\n\x00\xff body"
    await store.enqueue([replace(new(1), raw=data, envelope_from="bounce@acme.test")], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    assert (batch.messages[0].raw, batch.messages[0].envelope_from) == (data,
                                                                      "bounce@acme.test")


async def test_suspension_and_inactive_tenant_hold_rows(store: Store) -> None:
    acme = await tenant(store)
    await account(store)
    await store.enqueue([new(1, batch="b1"), new(2, batch="b2"), new(3)], T0)
    await store.set_suspended("acme", ["b1"])
    records = await listing(store, T0)
    assert records["m1"]["suspended"] is True and records["m2"]["suspended"] is False
    assert sorted(await claim_ids(store, T0)) == ["m2", "m3"]

    await store.enqueue([new(4), new(5, batch="b2")], T0 + 1)
    await store.set_suspended("acme", ["*"])
    assert await claim_ids(store, T0 + 1) == []
    assert all(r["suspended"] for r in (await listing(store, T0 + 1, status="pending")).values())

    await store.set_suspended("acme", [])
    await store.put_tenant(replace(acme, active=False))
    assert await claim_ids(store, T0 + 2) == []
    assert (await listing(store, T0 + 2))["m4"]["suspended"] is True

    await store.put_tenant(replace(acme, active=True))
    assert sorted(await claim_ids(store, T0 + 3)) == ["m1", "m4", "m5"]


# -- leases ----------------------------------------------------------------------------------


async def test_renew_extends_only_the_owners_lease(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    await store.renew("w1", batch.messages, T0 + 1000)
    await store.renew("intruder", batch.messages, T0 + 5000)
    assert await store.recover(T0 + LEASE + 1, 5, all_sending=False) == 0
    assert await store.recover(T0 + 1001, 5, all_sending=False) == 1


async def test_record_by_non_owner_is_refused(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1), new(2)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    m1, m2 = batch.messages
    assert await store.record("w2", [(m1, Sent()), (m2, Failed("x"))], T0) == [False, False]
    records = await listing(store, T0, include_history=True)
    assert records["m1"]["status"] == "sending" and records["m1"]["history"] == []
    assert await store.record("w1", [(m1, Sent()), (m2, Failed("boom"))], T0) == [True, True]
    assert await store.record("w1", [(m1, Sent())], T0) == [False]  # already finished


async def test_expired_lease_counts_a_try_then_gives_up(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1)], T0)
    lost = await store.claim("w1", T0, LEASE, 100)
    assert await store.recover(T0 + LEASE - 1, 2, all_sending=False) == 0
    assert await store.recover(T0 + LEASE + 1, 2, all_sending=False) == 1
    record = (await listing(store, T0 + LEASE + 1, include_history=True))["m1"]
    assert (record["status"], record["retry_count"], record["history"]) == ("pending", 1, [])
    # the old owner comes back too late: fenced
    assert await store.record("w1", [(lost.messages[0], Sent())], T0 + LEASE + 2) == [False]

    now = T0 + 1000
    for expected_retry in (1, 2):
        again = await store.claim("w2", now, LEASE, 100)
        assert [m.retry_count for m in again.messages] == [expected_retry]
        now += LEASE + 1
        assert await store.recover(now, 2, all_sending=False) == 1
    record = (await listing(store, now, include_history=True))["m1"]
    assert (record["status"], record["error"]) == ("error", "worker lost the message 3 times")
    assert [(h["event_type"], h["description"]) for h in record["history"]] == [
        ("error", "worker lost the message 3 times")]


async def test_recover_all_sending(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1), new(2)], T0)
    await store.claim("w1", T0, LEASE, 100)
    assert await store.recover(T0 + 1, 5, all_sending=True) == 2
    assert [r["retry_count"] for r in (await listing(store, T0 + 1)).values()] == [1, 1]


async def test_release_returns_claims_without_counting_a_try(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new(1), new(2, deferred_ts=int(T0) + 10)], T0)
    batch = await store.claim("w1", T0 + 10, LEASE, 100)
    await store.release("intruder", batch.messages, T0 + 11)
    assert {r["status"] for r in (await listing(store, T0 + 11)).values()} == {"sending"}
    await store.release("w1", batch.messages, T0 + 11)
    records = await listing(store, T0 + 11)
    assert {(r["status"], r["retry_count"]) for r in records.values()} == {("pending", 0)}
    assert records["m2"]["deferred_ts"] == int(T0) + 10
    assert sorted(await claim_ids(store, T0 + 12, owner="w2")) == ["m1", "m2"]


# -- rate limits -----------------------------------------------------------------------------


async def test_rate_limit_defer_until_window_frees(store: Store) -> None:
    await tenant(store)
    await account(store, limits=RateLimits(minute=2))
    await store.enqueue([new(i) for i in range(1, 5)], T0)
    assert await send_all(store, T0) == ["m1", "m2"]
    batch = await store.claim("w1", T0 + 10, LEASE, 100)
    free_at = int(T0) + 60
    assert batch.messages == ()
    assert batch.blocked == {("acme", "main"): free_at}
    assert [(r.account_id, r.deferred) for r in batch.rate_limited] == [("main", True)]
    records = await listing(store, T0 + 10, include_history=True)
    assert (records["m3"]["status"], records["m3"]["deferred_ts"]) == ("deferred", free_at)
    assert [(h["event_type"], h["description"], h["metadata"])
            for h in records["m3"]["history"]] == [
        ("deferred", "rate_limit", {"next_attempt_ts": free_at})]
    assert records["m3"]["retry_count"] == 0 and records["m3"]["error"] is None
    assert (records["m4"]["status"], records["m4"]["history"]) == ("pending", [])
    assert await claim_ids(store, T0 + 11, skip=frozenset({("acme", "main")})) == []
    assert await claim_ids(store, T0 + 59) == []  # still full: defers one more, claims none
    assert await claim_ids(store, T0 + 61) == ["m3", "m4"]


async def test_in_flight_counts_toward_the_limit(store: Store) -> None:
    await tenant(store)
    await account(store, limits=RateLimits(minute=2))
    await store.enqueue([new(i) for i in range(1, 5)], T0)
    assert await claim_ids(store, T0) == ["m1", "m2"]
    batch = await store.claim("w1", T0 + 1, LEASE, 100)
    assert (batch.messages, batch.blocked) == ((), {})  # no window is full from sends alone
    records = await listing(store, T0 + 1, include_history=True)
    assert all(r["history"] == [] for r in records.values())


async def test_failed_attempt_releases_its_reservation(store: Store) -> None:
    await tenant(store)
    await account(store, limits=RateLimits(minute=1))
    await store.enqueue([new(1), new(2)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    assert [m.id for m in batch.messages] == ["m1"]
    await store.record("w1", [(batch.messages[0], Failed("550 no"))], T0)
    assert await claim_ids(store, T0 + 1) == ["m2"]


async def test_rate_limit_reject(store: Store) -> None:
    await tenant(store)
    await account(store, limits=RateLimits(minute=1), limit_behavior=LimitBehavior.REJECT)
    await store.enqueue([new(i) for i in range(1, 4)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    assert [m.id for m in batch.messages] == ["m1"]
    assert [r.deferred for r in batch.rate_limited] == [False, False]
    records = await listing(store, T0, include_history=True)
    for mid in ("m2", "m3"):
        assert (records[mid]["status"], records[mid]["error"]) == (
            "error", "rate_limit_exceeded")
        assert [(h["event_type"], h["metadata"]) for h in records[mid]["history"]] == [
            ("error", {"error_code": 429})]


async def test_tenant_limit_spans_accounts(store: Store) -> None:
    await tenant(store, rate_limits=RateLimits(minute=3))
    await account(store, account_id="a1")
    await account(store, account_id="a2")
    await store.enqueue([new(f"x{i}", account_id="a1") for i in range(3)], T0)
    await store.enqueue([new(f"y{i}", account_id="a2") for i in range(3)], T0)
    batch = await store.claim("w1", T0, LEASE, 100)
    assert len(batch.messages) == 3
    assert all(m.rate_scopes == ("t:acme",) for m in batch.messages)
    await store.record("w1", [(m, Sent()) for m in batch.messages], T0)
    assert await claim_ids(store, T0 + 30) == []
    assert len(await claim_ids(store, T0 + 61)) == 3


# -- queries and deletion --------------------------------------------------------------------


async def test_list_messages_filters(store: Store) -> None:
    await tenant(store)
    await account(store)
    await store.enqueue([new("sent")], T0)
    await send_all(store, T0)
    await store.enqueue([new("bad", error="missing from")], T0 + 1)
    await store.enqueue([new("plain")], T0 + 2)
    await store.enqueue([new("soon", deferred_ts=int(T0) + 10)], T0 + 3)
    await store.enqueue([new("later", deferred_ts=int(T0) + 1000)], T0 + 4)
    now = T0 + 20

    async def ids(**kw: Any) -> list[str]:
        found = await store.get_tenant("acme")
        assert found is not None
        return [r.client_id for r in await store.list_messages(found, now=int(now), **kw)]

    assert await ids() == ["mlater", "msoon", "mplain", "mbad", "msent"]  # newest first
    assert await ids(status="pending") == ["msoon", "mplain"]
    assert await ids(status="scheduled") == ["mlater"]
    assert await ids(status="sent") == ["msent"]
    assert await ids(status="error") == ["mbad"]
    assert await ids(active_only=True) == ["mlater", "msoon", "mplain"]
    assert await ids(limit=2, offset=1) == ["msoon", "mplain"]
    records = await listing(store, now, include_history=True)
    assert [h["event_type"] for h in records["msent"]["history"]] == ["sent"]
    assert records["msent"]["history"][0]["event_id"]
    assert "history" not in (await listing(store, now))["msent"]


async def test_count_open(store: Store) -> None:
    await tenant(store)
    await tenant(store, "beta")
    await account(store)
    await account(store, "beta")
    await store.enqueue([new(1, batch="b1"), new(2, batch="b1"), new(3), new(4, error="x")], T0)
    await store.enqueue([new(9, tenant_id="beta")], T0)
    assert await store.count_open() == 4
    assert await store.count_open("acme") == 3
    assert await store.count_open("acme", "b1") == 2
    await send_all(store, T0)
    assert await store.count_open("acme") == 0


async def test_delete_messages(store: Store) -> None:
    await tenant(store)
    await tenant(store, "beta")
    await account(store)
    await account(store, "beta")
    await store.enqueue([new(1), new(2), new(3, error="bad")], T0)
    await store.enqueue([new(7, tenant_id="beta")], T0)
    await store.claim("w1", T0, LEASE, 1)  # m1 is being sent: deleted anyway
    assert await store.delete_messages("acme", ["m1", "zz", "m3", "m7"]) == (2, ["zz", "m7"])
    assert list(await listing(store, T0)) == ["m2"]
    assert list(await listing(store, T0, tenant_id="beta")) == ["m7"]
    assert await store.enqueue([new(3)], T0 + 1) == [None]  # the id is free again


async def test_delete_account_errors_open_messages(store: Store) -> None:
    await tenant(store)
    await account(store)
    await account(store, account_id="other")
    await store.enqueue([new(1), new(2), new(3, account_id="other")], T0)
    only_main = frozenset({("acme", "other")})
    batch = await store.claim("w1", T0, LEASE, 1, only_main)
    await store.record("w1", [(batch.messages[0], Sent())], T0)
    late = await store.claim("w1", T0, LEASE, 1, only_main)  # m2: sending
    assert await store.delete_account("acme", "main", int(T0) + 5) is True
    records = await listing(store, T0 + 5, include_history=True)
    assert records["m1"]["status"] == "sent"
    assert (records["m2"]["status"], records["m2"]["error"]) == ("error", "account deleted")
    assert [h["event_type"] for h in records["m2"]["history"]] == ["error"]
    assert records["m3"]["status"] == "pending"
    assert await store.record("w1", [(late.messages[0], Sent())], T0 + 6) == [False]


async def test_delete_tenant_cascades(store: Store) -> None:
    await tenant(store)
    await account(store, limits=RateLimits(minute=1))
    await store.enqueue([new(1), new(2)], T0)
    await send_all(store, T0)
    assert await store.delete_tenant("acme") is True
    assert await store.get_tenant("acme") is None
    assert await store.list_accounts("acme") == []
    assert await store.count_open("acme") == 0
    await tenant(store)  # recreated: nothing of the old tenant comes back
    await account(store, limits=RateLimits(minute=1))
    assert await listing(store, T0) == {}
    await store.enqueue([new(2)], T0 + 1)
    assert await claim_ids(store, T0 + 1) == ["m2"]


async def test_delete_tenant_keeps_other_tenants_rate_counts(store: Store) -> None:
    """Tenant ids may contain '_': deleting "t_1" must not touch the counts of "tx1"."""
    for tenant_id in ("t_1", "tx1"):
        await tenant(store, tenant_id)
        await account(store, tenant_id, limits=RateLimits(minute=1))
    await store.enqueue([new(1, tenant_id="tx1")], T0)
    assert await send_all(store, T0) == ["m1"]
    assert await store.delete_tenant("t_1") is True
    await store.enqueue([new(2, tenant_id="tx1")], T0 + 1)
    assert await claim_ids(store, T0 + 1) == []
