"""BounceService on the in-memory store: correlation is exact across tenants (§12.2)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mailproxy.bounces.model import MailboxCursor
from mailproxy.bounces.parse import parse
from mailproxy.bounces.service import BounceService, SuppressionFilter
from mailproxy.errors import Forbidden, InvalidRequest, NotFound
from mailproxy.model import Account, NewMessage, Priority, Sent, Tenant
from mailproxy.service import Caller
from mailproxy.store import open_bounce_store
from mailproxy.store.sqlite import SqliteStore
from mailproxy.vault import Vault
from tests.conftest import FakeClock
from tests.unit.test_bounce_parse import CORPUS, corpus


class Counts:
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str]] = []

    def bounce(self, tenant_id: str | None, bounce_type: str) -> None:
        self.seen.append((tenant_id, bounce_type))


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    s = SqliteStore(":memory:", Vault(os.urandom(32)))
    await s.open()
    yield s
    await s.close()


async def scope(caller: Caller, tenant_id: str) -> Any:
    if caller.tenant_id is not None and caller.tenant_id != tenant_id:
        raise Forbidden("Token not authorized for this tenant")
    if tenant_id not in ("acme", "beta"):
        raise NotFound("tenant not found")
    return tenant_id


async def sent(store: SqliteStore, tenant_id: str, client_id: str) -> str:
    await store.put_tenant(Tenant(id=tenant_id))
    await store.put_account(Account(tenant_id=tenant_id, id="main", host="h", port=25))
    payload = {"from": "sender@acme.test", "to": ["nosuch@example.org"], "subject": "s"}
    await store.enqueue([NewMessage(tenant_id, client_id, "main", Priority.MEDIUM, None, None,
                                    payload)], 100.0)
    batch = await store.claim("w", 100.0, 300, 10)
    await store.record("w", [(m, Sent()) for m in batch.messages], 100.0)
    [row] = await store.list_messages(Tenant(id=tenant_id), now=100)
    return row.pk


def service(store: SqliteStore, counts: Counts) -> BounceService:
    b = open_bounce_store(store)
    clock = FakeClock(1000.0)
    return BounceService(b, clock, scope, SuppressionFilter(b, clock), observer=counts)


async def test_same_client_id_in_two_tenants_goes_to_the_exact_message(store: SqliteStore
                                                                        ) -> None:
    await sent(store, "acme", "inv-1")
    beta_pk = await sent(store, "beta", "inv-1")
    counts = Counts()
    svc = service(store, counts)
    bounces = parse(corpus("dsn_511.eml", pk=beta_pk, client_id="inv-1"))
    [result] = await svc.record(MailboxCursor("bounce", 1, 1), bounces)
    assert not result.duplicate and result.suppressed
    assert counts.seen == [("beta", "hard")]
    assert [b.tenant_id for b in await svc.list_bounces(Caller())] == ["beta"]
    assert await svc.list_bounces(Caller("acme")) == []
    beta = await svc.list_suppressions(Caller(), "beta")
    assert [s.address for s in beta.items] == ["nosuch@example.org"]
    assert (await svc.list_suppressions(Caller(), "acme")).total == 0


async def test_guessable_keys_alone_never_suppress_and_ambiguity_is_unmatched(
    store: SqliteStore,
) -> None:
    await sent(store, "acme", "inv-1")
    await sent(store, "beta", "inv-1")
    counts = Counts()
    svc = service(store, counts)
    unknown = "0193c0de-0000-7000-8000-000000000000"
    # The pk matches nothing; the client id matches two tenants' messages alike.
    results = await svc.record(MailboxCursor("bounce", 1, 1),
                               parse(corpus("dsn_511.eml", pk=unknown)))
    assert results == [] and counts.seen == [(None, "hard")]
    assert await svc.list_bounces(Caller()) == []
    # With a single candidate, the client id matches: recorded, never suppressed.
    await store.delete_tenant("beta")
    [result] = await svc.record(MailboxCursor("bounce", 1, 2),
                                parse(corpus("dsn_511.eml", pk=unknown)))
    assert not result.suppressed
    assert [b.tenant_id for b in await svc.list_bounces(Caller())] == ["acme"]


async def test_use_cases_check_scope_and_input(store: SqliteStore) -> None:
    svc = service(store, Counts())
    with pytest.raises(Forbidden):
        await svc.list_suppressions(Caller("acme"), "beta")
    with pytest.raises(Forbidden):
        await svc.add_suppressions(Caller("acme"), "beta", ["x@y.org"])
    with pytest.raises(Forbidden):
        await svc.list_bounces(Caller("acme"), "beta")
    with pytest.raises(NotFound):
        await svc.remove_suppressions(Caller(), "nobody", ["x@y.org"])
    with pytest.raises(InvalidRequest):
        await svc.add_suppressions(Caller(), "acme", ["not an address"])
    await store.put_tenant(Tenant(id="acme"))
    assert await svc.add_suppressions(Caller("acme"), "acme", ["X@Y.org"], "asked") == 1
    assert await svc.filter.suppressed("acme", ["x@y.ORG", "z@y.org"]) == {"x@y.org"}
    page = await svc.list_suppressions(Caller("acme"), "acme", limit=1)
    assert page.total == 1 and page.next_cursor is not None
    assert await svc.remove_suppressions(Caller("acme"), "acme", ["x@Y.org"]) == 1
    assert await svc.filter.suppressed("acme", ["x@y.org"]) == frozenset()


async def test_unique_client_message_id_suppresses_only_an_address_it_was_sent_to(
    store: SqliteStore
) -> None:
    """§12.2 rule 2 with a client-supplied Message-ID: matched alone, it may suppress the
    bounced recipient, never an address the message did not go to."""
    await store.put_tenant(Tenant(id="acme"))
    await store.put_account(Account(tenant_id="acme", id="main", host="h", port=25))
    payload = {"from": "sender@acme.test", "to": ["nosuch@example.org"], "subject": "s",
               "message_id": "<order-9@acme.test>"}
    await store.enqueue([NewMessage("acme", "m9", "main", Priority.MEDIUM, None, None,
                                    payload)], 100.0)
    svc = service(store, Counts())
    raw = (CORPUS / "dsn_511_client_message_id.eml").read_bytes()
    forged = parse(raw.replace(b"{MSGID}", b"<order-9@acme.test>").replace(b"{FROM}", b"x@y")
                   .replace(b"{N}", b"1").replace(b"{RCPT}", b"ceo@acme.test"))
    real = parse(raw.replace(b"{MSGID}", b"<order-9@acme.test>").replace(b"{FROM}", b"x@y")
                 .replace(b"{N}", b"2").replace(b"{RCPT}", b"nosuch@example.org"))
    [first] = await svc.record(MailboxCursor("bounce", 1, 1), forged)
    assert not first.duplicate and not first.suppressed  # recorded, not suppressing
    [second] = await svc.record(MailboxCursor("bounce", 1, 2), real)
    assert second.suppressed
    listed = await svc.list_suppressions(Caller(), "acme")
    assert [s.address for s in listed.items] == ["nosuch@example.org"]


async def test_a_forged_dsn_naming_our_pk_never_suppresses_an_address_not_mailed(
    store: SqliteStore,
) -> None:
    """Every recipient sees the pk in our Message-ID: a DSN they forge with it, naming some
    other address, is recorded for the message but must not suppress that address."""
    pk = await sent(store, "acme", "inv-1")
    svc = service(store, Counts())
    forged = parse(corpus("dsn_511.eml", pk=pk, rcpt="ceo@customer.example"))
    [result] = await svc.record(MailboxCursor("bounce", 1, 1), forged)
    assert not result.duplicate and not result.suppressed
    assert (await svc.list_suppressions(Caller(), "acme")).total == 0
    real = parse(corpus("dsn_511.eml", pk=pk, rcpt="nosuch@example.org"))
    [again] = await svc.record(MailboxCursor("bounce", 1, 2), real)
    assert again.suppressed
