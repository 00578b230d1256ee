"""Bounces and suppressions on SQLite: the BounceStore port over a SqliteStore's threads.

It shares the store's writer (group commit) and reader, so a bounce, its event and the
mailbox cursor are committed in one transaction with nothing else in between.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from mailproxy.bounces import correlate
from mailproxy.bounces.model import (
    BounceRecord,
    BounceType,
    BounceView,
    MailboxCursor,
    MessageRef,
    NewSuppression,
    PecRecord,
    Recorded,
    SoftRule,
    SuppressionCursor,
    SuppressionSource,
    SuppressionView,
)
from mailproxy.store.queries import load_queries
from mailproxy.store.sqlite import SqliteStore

B = load_queries("sqlite", "bounces.sql")


def bounce_view(r: Sequence[Any]) -> BounceView:
    return BounceView(id=int(r[0]), tenant_id=r[1], message_id=r[2], recipient=r[3],
                      type=BounceType(r[4]), code=r[5], reason=r[6], created_ts=int(r[7]),
                      message_pk=r[8], reported_ts=None if r[9] is None else int(r[9]))


def suppression_view(r: Sequence[Any]) -> SuppressionView:
    return SuppressionView(tenant_id=r[0], address=r[1], reason=r[2],
                           source=SuppressionSource(r[3]), created_ts=int(r[4]),
                           bounce_code=r[5], message_id=r[6])


def message_ref(r: Sequence[Any]) -> MessageRef:
    seq, pk, tenant_id, client_id, account_id, status, payload, envelope_from = r
    data = payload if isinstance(payload, dict) else json.loads(payload)
    from_addr, recipients = correlate.addresses_of(data, envelope_from)
    return MessageRef(seq=int(seq), pk=pk, tenant_id=tenant_id, client_id=client_id,
                      account_id=account_id, status=status, from_addr=from_addr,
                      recipients=recipients)


def listing_args(tenant_id: str, address: str | None, limit: int, offset: int,
                 after: SuppressionCursor | None) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "address": address, "limit": limit, "offset": offset,
            "after_ts": None if after is None else after.created_ts,
            "after_address": None if after is None else after.address}


def bounce_metadata(record: BounceRecord) -> str:
    b = record.bounce
    return json.dumps({"bounce_type": b.type.value, "bounce_code": correlate.digits(b.code),
                       "bounce_reason": b.reason, "bounce_recipient": b.recipient},
                      separators=(",", ":"), ensure_ascii=False)


class SqliteBounces:
    """BounceStore on the tables of migration 004."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def list_bounces(self, tenant_id: str | None, *, before_id: int | None, limit: int
                           ) -> list[BounceView]:
        args = {"tenant_id": tenant_id, "before_id": before_id, "limit": limit}
        found = await self._store.run_read(lambda c: c.execute(B["list_bounces"], args).fetchall())
        return [bounce_view(r) for r in found]

    async def list_suppressions(
        self, tenant_id: str, *, address: str | None, limit: int, offset: int,
        after: SuppressionCursor | None,
    ) -> tuple[int, list[SuppressionView]]:
        args = listing_args(tenant_id, address, limit, offset, after)

        def op(c: sqlite3.Connection) -> tuple[int, list[Any]]:
            total = c.execute(B["count_suppressions"], args).fetchone()[0]
            return int(total), c.execute(B["list_suppressions"], args).fetchall()

        total, found = await self._store.run_read(op)
        return total, [suppression_view(r) for r in found]

    async def add_suppressions(self, tenant_id: str, entries: Sequence[NewSuppression],
                               now: int) -> int:
        def op(c: sqlite3.Connection) -> int:
            add = B["add_suppression"]
            return sum(c.execute(add, correlate.suppression_args(tenant_id, e, now)).rowcount
                       for e in entries)

        return await self._store.run_write(op)

    async def remove_suppressions(self, tenant_id: str, addresses: Sequence[str]) -> int:
        def op(c: sqlite3.Connection) -> int:
            return sum(c.execute(B["remove_suppression"],
                                 {"tenant_id": tenant_id, "address": a}).rowcount
                       for a in addresses)

        return await self._store.run_write(op)

    async def suppressed_among(self, tenant_id: str, addresses: Sequence[str]) -> frozenset[str]:
        args = {"tenant_id": tenant_id, "addresses": json.dumps(list(addresses))}
        found = await self._store.run_read(
            lambda c: c.execute(B["suppressed_among"], args).fetchall())
        return frozenset(r[0] for r in found)

    async def has_suppressions(self, tenant_id: str) -> bool:
        row = await self._store.run_read(
            lambda c: c.execute(B["any_suppression"], {"tenant_id": tenant_id}).fetchone())
        return row is not None

    async def message_by_pk(self, pk: str) -> MessageRef | None:
        row = await self._store.run_read(
            lambda c: c.execute(B["message_by_pk"], {"pk": pk}).fetchone())
        return None if row is None else message_ref(row)

    async def messages_by_client_id(self, client_id: str) -> list[MessageRef]:
        found = await self._store.run_read(
            lambda c: c.execute(B["messages_by_client_id"], {"client_id": client_id})
            .fetchall())
        return [message_ref(r) for r in found]

    async def messages_by_message_id(self, message_id: str, tenant_id: str | None = None,
                                     account_id: str | None = None) -> list[MessageRef]:
        args = {"message_id": message_id, "tenant_id": tenant_id, "account_id": account_id}
        found = await self._store.run_read(
            lambda c: c.execute(B["messages_by_header_message_id"], args).fetchall())
        return [message_ref(r) for r in found]

    async def get_cursor(self, mailbox: str) -> MailboxCursor | None:
        row = await self._store.run_read(
            lambda c: c.execute(B["get_cursor"], {"mailbox": mailbox}).fetchone())
        return None if row is None else MailboxCursor(row[0], int(row[1]), int(row[2]))

    async def record_bounces(self, cursor: MailboxCursor, records: Sequence[BounceRecord],
                             rule: SoftRule, now: int) -> list[Recorded]:
        """Store the bounces and move the cursor, in one transaction."""

        def op(c: sqlite3.Connection) -> list[Recorded]:
            out = [self._record_one(c, r, rule, now) for r in records]
            c.execute(B["put_cursor"], correlate.cursor_args(cursor, now))
            return out

        return await self._store.run_write(op)

    def _record_one(self, c: sqlite3.Connection, record: BounceRecord, rule: SoftRule,
                    now: int) -> Recorded:
        args = correlate.record_args(record, now)
        cur = c.execute(B["insert_bounce"], args)
        if not cur.rowcount:
            return Recorded(duplicate=True)
        bounce_id = cur.lastrowid
        event = c.execute(B["insert_bounce_event"], {**args, "metadata": bounce_metadata(record)})
        c.execute(B["set_bounce_event"], {"event_id": event.lastrowid, "id": bounce_id})
        c.execute(B["mark_bounced"], args)
        source = self._suppression_source(c, record, rule, now)
        if source is None:
            return Recorded(duplicate=False)
        entry = correlate.suppression_for(record, source)
        added = c.execute(B["add_suppression"],
                          correlate.suppression_args(record.message.tenant_id, entry, now)).rowcount
        return Recorded(duplicate=False, suppressed=bool(added))

    @staticmethod
    def _suppression_source(c: sqlite3.Connection, record: BounceRecord, rule: SoftRule,
                            now: int) -> SuppressionSource | None:
        count = 0
        if correlate.needs_soft_count(record, rule):
            count = c.execute(B["count_soft_bounces"], {
                "tenant_id": record.message.tenant_id, "recipient": record.bounce.recipient,
                "since": now - rule.window}).fetchone()[0]
        return correlate.suppression_source(record, rule, int(count))

    async def record_pec(self, cursor: MailboxCursor, records: Sequence[PecRecord], now: int
                         ) -> list[bool]:
        """Store the receipts as pec_* events (each once) and move the cursor."""

        def op(c: sqlite3.Connection) -> list[bool]:
            out = []
            for r in records:
                args = correlate.pec_args(r, now)
                fresh = c.execute(B["insert_pec_receipt"], args).rowcount > 0
                if fresh:
                    c.execute(B["insert_pec_event"], args)
                out.append(fresh)
            c.execute(B["put_cursor"], correlate.cursor_args(cursor, now))
            return out

        return await self._store.run_write(op)

    async def pec_timeouts(self, tenant_id: str, account_id: str, before: int, now: int
                           ) -> int:
        def op(c: sqlite3.Connection) -> int:
            found = c.execute(B["pec_overdue"], correlate.overdue_args(
                tenant_id, account_id, before)).fetchall()
            for seq, tenant in found:
                c.execute(B["insert_pec_event"], correlate.timeout_args(seq, tenant, now))
            return len(found)

        return await self._store.run_write(op)

    async def acquire_lease(self, name: str, owner: str, now: float, until: float) -> bool:
        args = {"name": name, "owner": owner, "now": now, "until": until}
        return bool(await self._store.run_write(
            lambda c: c.execute(B["acquire_lease"], args).rowcount))

    async def release_lease(self, name: str, owner: str) -> None:
        await self._store.run_write(
            lambda c: c.execute(B["release_lease"], {"name": name, "owner": owner}))
