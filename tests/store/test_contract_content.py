"""A claimed row carries the Content intake built; rows stored before rows held it (payload
only) are read once by the legacy decoder. Every backend."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from mailproxy import intake
from mailproxy.model import Attachment, Content, Priority
from mailproxy.ports import Store
from mailproxy.store.sqlite import SqliteStore
from tests.store.conftest import PgSchema, RawQuery
from tests.store.test_contract import LEASE, T0, account, new, tenant

RULES = intake.IntakeRules(
    Priority.MEDIUM, 10_000_000, intake.fetch_modes(filesystem=True))


def _item(**fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": "m1", "tenant_id": "acme", "account_id": "main",
        "from": "Ann <ann@Acme.TEST>", "to": "r1@Example.org, \"Bob, B\" <bob@example.org>",
        "cc": ["c@example.org"], "reply_to": "reply@acme.test", "subject": "Quarterly",
        "body": "<p>Hi</p>", "content_type": "html", "message_id": "<q1@acme.test>",
        "headers": {"X-Tag": 7, "Bcc": "hidden@example.org", "x-tag": "last"},
        "attachments": [{"filename": "a.txt", "storage_path": "base64:YQ=="},
                        {"filename": "b.pdf", "storage_path": "docs/b.pdf",
                         "mime_type": "application/pdf",
                         "content_md5": "0123456789abcdef0123456789abcdef"}],
        "unknown": {"kept": True},
    }
    item.update(fields)
    return item


async def _insert_old_row(store: Store, pg_schema: PgSchema | None, client_id: str,
                          payload: dict[str, Any], envelope_from: str | None = None,
                          raw: bytes | None = None) -> None:
    """A due row as the releases before `content` wrote it: only their columns."""
    columns = ("pk, tenant_id, client_id, account_id, status, queued, priority, payload, raw,"
               " envelope_from, created_ts, updated_ts")
    args = (f"pk-{client_id}", "acme", client_id, "main", "pending", 1, 2,
            json.dumps(payload), raw, envelope_from, T0, T0)
    if pg_schema is not None:
        marks = ", ".join(f"${i}" for i in range(1, len(args) + 1))
        await pg_schema.fetch(f"INSERT INTO messages ({columns}) VALUES ({marks})", *args)
        return
    assert isinstance(store, SqliteStore)
    marks = ", ".join("?" * len(args))
    await store.run_write(
        lambda c: c.execute(f"INSERT INTO messages ({columns}) VALUES ({marks})", args))


async def test_the_claim_carries_the_content_intake_built(store: Store, raw: RawQuery
                                                         ) -> None:
    await tenant(store)
    await account(store)
    built = intake.build(_item(), account_exists=True, is_pec=False, rules=RULES,
                         default_priority=None)
    assert built.error is None and built.content is not None
    assert await store.enqueue([built], T0) == [None]
    [claimed] = (await store.claim("w1", T0, LEASE, 10)).messages
    assert claimed.content == built.content
    assert claimed.content.to == ("r1@example.org", "Bob, B <bob@example.org>")
    assert claimed.content.attachments[1] == Attachment(
        "b.pdf", "docs/b.pdf", "endpoint", "application/pdf",
        "0123456789abcdef0123456789abcdef")
    # the texts intake kept as submitted are stored once, in the payload
    [(stored,)] = await raw("SELECT content FROM messages")
    assert "Quarterly" not in stored and "<p>Hi</p>" not in stored and "YQ==" not in stored


async def test_an_upsert_replaces_the_content(store: Store) -> None:
    await tenant(store)
    await account(store)
    for to in ("first@example.org", "second@example.org"):
        built = intake.build(_item(to=to), account_exists=True, is_pec=False, rules=RULES,
                             default_priority=None)
        assert await store.enqueue([built], T0) == [None]
    [claimed] = (await store.claim("w1", T0, LEASE, 10)).messages
    assert claimed.content.to == ("second@example.org",)


async def test_an_intake_error_stores_no_content(store: Store, raw: RawQuery) -> None:
    await tenant(store)
    await account(store)
    built = intake.build(_item(to="not an address"), account_exists=True, is_pec=False,
                         rules=RULES, default_priority=None)
    assert built.error is not None and built.content is None
    assert await store.enqueue([built], T0) == [built.error]
    assert await raw("SELECT content FROM messages") == [(None,)]


async def test_a_row_stored_before_content_is_read_once_as_it_was(
    store: Store, pg_schema: PgSchema | None
) -> None:
    """Rows of the previous release hold the payload only: they are claimed with the
    Content that release built from it at send time, and nothing in them is refused."""
    await tenant(store)
    await account(store)
    payload = _item(id="old1")
    await _insert_old_row(store, pg_schema, "old1", payload)
    odd = {"id": "old2", "from": "sender@acme.test", "to": ["fine@example.org", "no at sign"],
           "subject": "Odd", "headers": {"X-Num": 3.5}}
    await _insert_old_row(store, pg_schema, "old2", odd)
    submitted = {"id": "old3", "from": "App@Acme.test", "to": ["Rcpt@EXAMPLE.org"],
                 "raw_size": 10, "subject": "Via SMTP"}
    await _insert_old_row(store, pg_schema, "old3", submitted, envelope_from="App@Acme.test",
                          raw=b"Subject: x\r\n\r\nbody")
    claimed = {m.id: m for m in (await store.claim("w1", T0, LEASE, 10)).messages}
    assert claimed["old1"].content == intake.content_of(payload)
    assert claimed["old2"].content == Content(
        from_addr="sender@acme.test", to=("fine@example.org", "no at sign"), subject="Odd",
        headers=(("X-Num", "3.5"),))
    assert claimed["old3"].content == Content(
        from_addr="App@Acme.test", to=("Rcpt@EXAMPLE.org",), subject="Via SMTP")
    assert claimed["old3"].raw == b"Subject: x\r\n\r\nbody"


async def test_a_bare_payload_without_content_is_read_by_the_legacy_decoder(
    store: Store
) -> None:
    """A NewMessage without content (as store tests build them) is stored like an old row."""
    await tenant(store)
    await account(store)
    item = replace(new(1), payload={"id": "m1", "from": "a@acme.test", "to": ["r@example.org"],
                                    "subject": "Bare"})
    assert await store.enqueue([item], T0) == [None]
    [claimed] = (await store.claim("w1", T0, LEASE, 10)).messages
    assert claimed.content == Content(from_addr="a@acme.test", to=("r@example.org",),
                                      subject="Bare")
