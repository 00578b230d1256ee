"""The bounce-store contract (§12): memory, SQLite and PostgreSQL must all pass it."""

from __future__ import annotations

from typing import Any

from mailproxy.bounces.model import (
    BounceRecord,
    BounceType,
    MailboxCursor,
    MessageRef,
    NewSuppression,
    ParsedBounce,
    SoftRule,
    SuppressionCursor,
    SuppressionSource,
)
from mailproxy.bounces.parse import parse
from mailproxy.bounces.service import BounceStore
from mailproxy.model import NewMessage, Priority
from mailproxy.ports import Store
from mailproxy.store import open_bounce_store
from tests.store.conftest import RawQuery
from tests.store.test_contract import T0, account, listing, send_all, tenant
from tests.unit.test_bounce_parse import corpus

MANUAL = SuppressionSource.MANUAL


def msg(i: int, tenant_id: str = "acme", to: str = "r@example.org") -> NewMessage:
    payload = {"id": f"m{i}", "from": "Sender <s@acme.test>", "to": [to], "subject": "x"}
    return NewMessage(tenant_id=tenant_id, id=f"m{i}", account_id="main",
                      priority=Priority.MEDIUM, deferred_ts=None, batch_code=None,
                      payload=payload)


async def sent_message(store: Store, i: int = 1, tenant_id: str = "acme",
                       to: str = "r@example.org") -> MessageRef:
    await tenant(store, tenant_id)
    await account(store, tenant_id)
    assert await store.enqueue([msg(i, tenant_id, to)], T0) == [None]
    assert await send_all(store, T0) == [f"m{i}"]
    found = await listing(store, T0, tenant_id)
    bounces = open_bounce_store(store)
    ref = await bounces.message_by_pk(found[f"m{i}"]["pk"])
    assert ref is not None
    return ref


def bounce(recipient: str = "r@example.org", kind: BounceType = BounceType.HARD,
           fingerprint: str = "fp-1", **kw: Any) -> ParsedBounce:
    return ParsedBounce(recipient=recipient, type=kind, code="5.1.1" if kind == "hard" else
                        "4.2.2", reason="smtp; 550 5.1.1 user unknown", fingerprint=fingerprint,
                        **kw)


async def test_suppressions_add_list_remove(store: Store) -> None:
    await tenant(store, "acme")
    await tenant(store, "other")
    b = open_bounce_store(store)
    entries = [NewSuppression(a, "unsubscribed", MANUAL) for a in ("a@x.org", "b@x.org")]
    assert await b.add_suppressions("acme", entries, 100) == 2
    # Existing entries are unchanged (not replaced, not counted).
    again = [NewSuppression("a@x.org", "other reason", MANUAL)]
    assert await b.add_suppressions("acme", again, 200) == 0
    total, items = await b.list_suppressions("acme", address=None, limit=10, offset=0,
                                             after=None)
    assert total == 2
    assert [(s.address, s.reason, s.created_ts) for s in items] == [
        ("b@x.org", "unsubscribed", 100), ("a@x.org", "unsubscribed", 100)]
    assert items[0].tenant_id == "acme" and items[0].source is MANUAL
    assert items[0].created_at == "1970-01-01 00:01:40"
    # Another tenant sees none of them.
    assert (await b.list_suppressions("other", address=None, limit=10, offset=0,
                                      after=None))[0] == 0
    assert await b.suppressed_among("acme", ["a@x.org", "c@x.org"]) == {"a@x.org"}
    assert await b.suppressed_among("other", ["a@x.org"]) == frozenset()
    assert await b.has_suppressions("acme") and not await b.has_suppressions("other")
    assert await b.remove_suppressions("acme", ["a@x.org", "zz@x.org"]) == 1
    assert await b.suppressed_among("acme", ["a@x.org"]) == frozenset()


async def test_suppression_keyset_and_offset_pages(store: Store) -> None:
    await tenant(store)
    b = open_bounce_store(store)
    for i in range(5):
        await b.add_suppressions("acme", [NewSuppression(f"u{i}@x.org", None, MANUAL)], 10 + i)
    _, first = await b.list_suppressions("acme", address=None, limit=2, offset=0, after=None)
    assert [s.address for s in first] == ["u4@x.org", "u3@x.org"]
    after = SuppressionCursor(first[-1].created_ts, first[-1].address)
    _, second = await b.list_suppressions("acme", address=None, limit=2, offset=0, after=after)
    assert [s.address for s in second] == ["u2@x.org", "u1@x.org"]
    total, third = await b.list_suppressions("acme", address=None, limit=2, offset=4,
                                             after=None)
    assert total == 5 and [s.address for s in third] == ["u0@x.org"]
    total, one = await b.list_suppressions("acme", address="u3@x.org", limit=10, offset=0,
                                           after=None)
    assert total == 1 and one[0].address == "u3@x.org"


async def test_hard_bounce_records_event_status_and_suppression(store: Store) -> None:
    ref = await sent_message(store)
    b = open_bounce_store(store)
    cursor = MailboxCursor("bounce", 7, 3)
    rec = BounceRecord(ref, bounce(), suppress=True)
    [result] = await b.record_bounces(cursor, [rec], SoftRule(), 500)
    assert not result.duplicate and result.suppressed
    row = (await listing(store, T0, include_history=True))["m1"]
    assert row["status"] == "bounced"
    assert (row["bounce_type"], row["bounce_code"], row["bounce_ts"]) == ("hard", "511", 500)
    assert [h["event_type"] for h in row["history"]] == ["sent", "bounce"]
    events = await store.pending_events("acme", 10)
    assert events[-1].metadata == {"bounce_type": "hard", "bounce_code": "511",
                                   "bounce_reason": "smtp; 550 5.1.1 user unknown",
                                   "bounce_recipient": "r@example.org"}
    assert await b.suppressed_among("acme", ["r@example.org"]) == {"r@example.org"}
    _, [sup] = await b.list_suppressions("acme", address=None, limit=5, offset=0, after=None)
    assert (sup.source, sup.bounce_code, sup.message_id) == (
        SuppressionSource.HARD_BOUNCE, "511", "m1")
    assert await b.get_cursor("bounce") == cursor
    [view] = await b.list_bounces("acme", before_id=None, limit=10)
    assert (view.tenant_id, view.message_id, view.recipient, view.type, view.code) == (
        "acme", "m1", "r@example.org", BounceType.HARD, "5.1.1")
    assert view.message_pk == ref.pk and not view.reported
    # The same bounce again (a rescan) changes nothing.
    [again] = await b.record_bounces(MailboxCursor("bounce", 7, 4), [rec], SoftRule(), 600)
    assert again.duplicate
    assert len(await b.list_bounces(None, before_id=None, limit=10)) == 1
    assert (await b.get_cursor("bounce")) == MailboxCursor("bounce", 7, 4)


async def test_soft_bounces_keep_status_and_suppress_after_the_limit(store: Store) -> None:
    ref = await sent_message(store)
    b = open_bounce_store(store)
    rule = SoftRule(limit=2, window=100)
    soft = [BounceRecord(ref, bounce(kind=BounceType.SOFT, fingerprint=f"s{i}"), True)
            for i in range(3)]
    [first] = await b.record_bounces(MailboxCursor("bounce", 1, 1), soft[:1], rule, 1000)
    assert not first.suppressed
    assert (await listing(store, T0))["m1"]["status"] == "sent"
    # The second soft bounce, but outside the window of the first: still not suppressed.
    [late] = await b.record_bounces(MailboxCursor("bounce", 1, 2), soft[1:2], rule, 1200)
    assert not late.suppressed
    [third] = await b.record_bounces(MailboxCursor("bounce", 1, 3), soft[2:], rule, 1250)
    assert third.suppressed
    _, [sup] = await b.list_suppressions("acme", address=None, limit=5, offset=0, after=None)
    assert sup.source is SuppressionSource.SOFT_BOUNCE
    assert (await listing(store, T0))["m1"]["bounce_type"] == "soft"


async def test_weak_match_never_suppresses(store: Store) -> None:
    ref = await sent_message(store)
    b = open_bounce_store(store)
    [result] = await b.record_bounces(MailboxCursor("bounce", 1, 1),
                                      [BounceRecord(ref, bounce(), suppress=False)],
                                      SoftRule(), 10)
    assert not result.suppressed
    assert not await b.has_suppressions("acme")
    assert (await listing(store, T0))["m1"]["status"] == "bounced"


async def test_client_id_lookup_spans_tenants_and_pk_lookup_is_exact(store: Store) -> None:
    one = await sent_message(store, 1, "acme")
    two = await sent_message(store, 1, "beta", to="q@example.org")
    b: BounceStore = open_bounce_store(store)
    found = await b.messages_by_client_id("m1")
    assert {(m.tenant_id, m.pk) for m in found} == {("acme", one.pk), ("beta", two.pk)}
    assert two.recipients == ("q@example.org",) and two.from_addr == "s@acme.test"
    assert await b.message_by_pk("00000000-0000-7000-8000-000000000000") is None


async def test_tenant_delete_takes_bounces_and_suppressions(store: Store, raw: RawQuery
                                                            ) -> None:
    ref = await sent_message(store)
    b = open_bounce_store(store)
    await b.record_bounces(MailboxCursor("bounce", 1, 1), [BounceRecord(ref, bounce(), True)],
                           SoftRule(), 10)
    assert await store.delete_tenant("acme")
    assert await raw("SELECT count(*) FROM suppressions") == [(0,)]
    assert await raw("SELECT count(*) FROM bounces") == [(0,)]


async def test_poller_lease_has_one_holder(store: Store) -> None:
    b = open_bounce_store(store)
    assert await b.acquire_lease("bounce", "p1", 100.0, 160.0)
    assert not await b.acquire_lease("bounce", "p2", 120.0, 180.0)
    assert await b.acquire_lease("bounce", "p1", 130.0, 190.0)  # renewal
    assert await b.acquire_lease("bounce", "p2", 200.0, 260.0)  # expired: taken over
    await b.release_lease("bounce", "p1")  # not the holder: no effect
    assert not await b.acquire_lease("bounce", "p1", 210.0, 270.0)
    await b.release_lease("bounce", "p2")
    assert await b.acquire_lease("bounce", "p1", 220.0, 280.0)


async def test_pec_receipts_are_recorded_once_and_timeouts_raised_once(store: Store) -> None:
    from mailproxy.bounces.model import PecReceipt, PecRecord

    await tenant(store)
    await account(store, account_id="main")
    pec = NewMessage(tenant_id="acme", id="p1", account_id="main", priority=Priority.MEDIUM,
                     deferred_ts=None, batch_code=None, is_pec=True,
                     payload={"from": "s@acme.test", "to": ["r@example.org"], "subject": "x"})
    late = NewMessage(tenant_id="acme", id="p2", account_id="main", priority=Priority.MEDIUM,
                      deferred_ts=None, batch_code=None, is_pec=True,
                      payload={"from": "s@acme.test", "to": ["r@example.org"], "subject": "y"})
    await store.enqueue([pec, late], T0)
    await send_all(store, T0)
    rows = await listing(store, T0)
    b = open_bounce_store(store)
    ref = await b.message_by_pk(rows["p1"]["pk"])
    assert ref is not None
    accepted = PecRecord(ref, PecReceipt("pec_acceptance", "ACCETTAZIONE: x", "fp-a"))
    assert await b.record_pec(MailboxCursor("pec:acme/main", 3, 9), [accepted], int(T0)) == [True]
    assert await b.record_pec(MailboxCursor("pec:acme/main", 3, 9), [accepted], int(T0)) == [
        False]
    assert await b.get_cursor("pec:acme/main") == MailboxCursor("pec:acme/main", 3, 9)
    # Not yet due; then only the message without acceptance times out, and only once.
    assert await b.pec_timeouts("acme", "main", int(T0) - 1, int(T0)) == 0
    assert await b.pec_timeouts("acme", "main", int(T0) + 10, int(T0) + 10) == 1
    assert await b.pec_timeouts("acme", "main", int(T0) + 20, int(T0) + 20) == 0
    assert await b.pec_timeouts("acme", "other", int(T0) + 20, int(T0) + 20) == 0
    found = await listing(store, T0, include_history=True)
    assert [h["event_type"] for h in found["p1"]["history"]] == ["sent", "pec_acceptance"]
    assert [h["event_type"] for h in found["p2"]["history"]] == ["sent", "pec_timeout"]
    events = [e for e in await store.pending_events("acme", 10) if e.client_id == "p2"]
    assert events[-1].event_type == "pec_timeout"


async def test_client_message_id_is_stored_at_intake_and_found_exactly(store: Store) -> None:
    """§12.2 rule 2: a client-supplied Message-ID (from `headers` over `message_id`, or the
    raw header) is indexed at intake; the generated form is not stored (its pk finds it)."""
    await tenant(store, "acme")
    await tenant(store, "beta")
    await account(store, "acme")
    await account(store, "beta")
    items = [msg(1), msg(2), msg(3), msg(1, "beta"), msg(4)]
    items[0].payload["message_id"] = "inv-1@acme.test"
    items[1].payload.update(message_id="ignored@acme.test",
                            headers={"message-id": "<Hdr-2@Acme.test>"})
    items[3].payload["message_id"] = "<inv-1@acme.test>"  # another tenant, the same id
    raw = b"From: s@acme.test\r\nTo: r@example.org\r\nMessage-ID:\r\n <raw-3@acme.test>\r\n\r\nx"
    items[2] = NewMessage(tenant_id="acme", id="m3", account_id="main",
                          priority=Priority.MEDIUM, deferred_ts=None, batch_code=None,
                          payload={"id": "m3", "from": "s@acme.test", "to": ["r@example.org"]},
                          raw=raw)
    assert await store.enqueue(items, T0) == [None] * 5
    b = open_bounce_store(store)
    found = await b.messages_by_message_id("<inv-1@acme.test>")
    assert sorted((m.tenant_id, m.client_id) for m in found) == [("acme", "m1"), ("beta", "m1")]
    [only] = await b.messages_by_message_id("<inv-1@acme.test>", "beta", "main")
    assert (only.tenant_id, only.client_id) == ("beta", "m1")
    assert await b.messages_by_message_id("<inv-1@acme.test>", "beta", "other") == []
    assert [m.client_id for m in await b.messages_by_message_id("<Hdr-2@Acme.test>")] == ["m2"]
    assert await b.messages_by_message_id("<hdr-2@acme.test>") == []  # exact, case included
    assert await b.messages_by_message_id("<ignored@acme.test>") == []
    assert [m.client_id for m in await b.messages_by_message_id("<raw-3@acme.test>")] == ["m3"]
    # An upsert of m1 with a new Message-ID moves the index with it.
    again = msg(1)
    again.payload["message_id"] = "<inv-1b@acme.test>"
    assert await store.enqueue([again], T0 + 1) == [None]
    assert [m.tenant_id for m in await b.messages_by_message_id("<inv-1@acme.test>")] == [
        "beta"]
    assert [m.client_id for m in await b.messages_by_message_id("<inv-1b@acme.test>")] == [
        "m1"]


async def test_a_bounce_with_nul_and_lone_surrogates_is_stored(store: Store) -> None:
    """Bounce text comes from outside: a NUL in a Diagnostic-Code (which PostgreSQL refuses)
    must not fail the poll's transaction again and again and stop bounce processing."""
    ref = await sent_message(store)
    raw = corpus("dsn_511.eml", pk=ref.pk, rcpt="r@example.org")
    raw = raw.replace(b"Diagnostic-Code: smtp; 550 5.1.1",
                      b"Diagnostic-Code: smtp; 550 5.1.1 \x00bad \xed\xa0\x80")
    [parsed] = parse(raw)
    assert "\x00" not in (parsed.reason or "")
    b = open_bounce_store(store)
    [result] = await b.record_bounces(MailboxCursor("bounce", 1, 1),
                                      [BounceRecord(ref, parsed, suppress=True)], SoftRule(), 500)
    assert result.suppressed
    [view] = await b.list_bounces("acme", before_id=None, limit=10)
    assert view.reason is not None and "bad" in view.reason
