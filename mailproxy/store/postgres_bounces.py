"""Bounces and suppressions on PostgreSQL: the BounceStore port over a PostgresStore's pool.

Each call is one transaction (or one statement) through the store's retrying runner, so
a lost connection before COMMIT is retried on a fresh one like every other store call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailproxy.bounces import correlate
from mailproxy.bounces.model import (
    BounceRecord,
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
from mailproxy.store.pgsql import affected, compile_sql
from mailproxy.store.postgres import Conn, PostgresStore
from mailproxy.store.queries import load_queries
from mailproxy.store.sqlite_bounces import (
    bounce_metadata,
    bounce_view,
    listing_args,
    message_ref,
    suppression_view,
)

B = {name: compile_sql(sql) for name, sql in load_queries("postgres", "bounces.sql").items()}


async def _q(con: Conn, name: str, /, **values: Any) -> list[Any]:
    sql = B[name]
    return list(await con.fetch(sql.text, *sql.args(values)))


async def _val(con: Conn, name: str, /, **values: Any) -> Any:
    sql = B[name]
    return await con.fetchval(sql.text, *sql.args(values))


async def _ex(con: Conn, name: str, /, **values: Any) -> int:
    sql = B[name]
    return affected(await con.execute(sql.text, *sql.args(values)))



class PostgresBounces:
    """BounceStore on the tables of migration 004."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def list_bounces(self, tenant_id: str | None, *, before_id: int | None, limit: int
                           ) -> list[BounceView]:
        found = await self._store.run_read(lambda c: _q(
            c, "list_bounces", tenant_id=tenant_id, before_id=before_id, limit=limit))
        return [bounce_view(r) for r in found]

    async def list_suppressions(
        self, tenant_id: str, *, address: str | None, limit: int, offset: int,
        after: SuppressionCursor | None,
    ) -> tuple[int, list[SuppressionView]]:
        args = listing_args(tenant_id, address, limit, offset, after)

        async def op(c: Conn) -> tuple[int, list[Any]]:
            total = await _val(c, "count_suppressions", **args)
            return int(total), await _q(c, "list_suppressions", **args)

        total, found = await self._store.run_write(op)
        return total, [suppression_view(r) for r in found]

    async def add_suppressions(self, tenant_id: str, entries: Sequence[NewSuppression],
                               now: int) -> int:
        async def op(c: Conn) -> int:
            added = 0
            for e in entries:
                args = correlate.suppression_args(tenant_id, e, now)
                added += await _ex(c, "add_suppression", **args)
            return added

        return await self._store.run_write(op)

    async def remove_suppressions(self, tenant_id: str, addresses: Sequence[str]) -> int:
        async def op(c: Conn) -> int:
            removed = 0
            for address in addresses:
                removed += await _ex(c, "remove_suppression", tenant_id=tenant_id,
                                     address=address)
            return removed

        return await self._store.run_write(op)

    async def suppressed_among(self, tenant_id: str, addresses: Sequence[str]) -> frozenset[str]:
        found = await self._store.run_read(lambda c: _q(
            c, "suppressed_among", tenant_id=tenant_id, addresses=list(addresses)))
        return frozenset(r[0] for r in found)

    async def has_suppressions(self, tenant_id: str) -> bool:
        found = await self._store.run_read(lambda c: _val(c, "any_suppression",
                                                       tenant_id=tenant_id))
        return found is not None

    async def message_by_pk(self, pk: str) -> MessageRef | None:
        found = await self._store.run_read(lambda c: _q(c, "message_by_pk", pk=pk))
        return message_ref(found[0]) if found else None

    async def messages_by_client_id(self, client_id: str) -> list[MessageRef]:
        found = await self._store.run_read(lambda c: _q(c, "messages_by_client_id",
                                                     client_id=client_id))
        return [message_ref(r) for r in found]

    async def messages_by_message_id(self, message_id: str, tenant_id: str | None = None,
                                     account_id: str | None = None) -> list[MessageRef]:
        found = await self._store.run_read(lambda c: _q(
            c, "messages_by_header_message_id", message_id=message_id, tenant_id=tenant_id,
            account_id=account_id))
        return [message_ref(r) for r in found]

    async def get_cursor(self, mailbox: str) -> MailboxCursor | None:
        found = await self._store.run_read(lambda c: _q(c, "get_cursor", mailbox=mailbox))
        if not found:
            return None
        row = found[0]
        return MailboxCursor(row[0], int(row[1]), int(row[2]))

    async def record_bounces(self, cursor: MailboxCursor, records: Sequence[BounceRecord],
                             rule: SoftRule, now: int) -> list[Recorded]:
        """Store the bounces and move the cursor, in one transaction."""

        async def op(c: Conn) -> list[Recorded]:
            out = [await self._record_one(c, r, rule, now) for r in records]
            await _ex(c, "put_cursor", **correlate.cursor_args(cursor, now))
            return out

        return await self._store.run_write(op)

    async def _record_one(self, c: Conn, record: BounceRecord, rule: SoftRule, now: int
                          ) -> Recorded:
        args = correlate.record_args(record, now)
        bounce_id = await _val(c, "insert_bounce", **args)
        if bounce_id is None:
            return Recorded(duplicate=True)
        event_id = await _val(c, "insert_bounce_event", **args,
                              metadata=bounce_metadata(record))
        await _ex(c, "set_bounce_event", event_id=event_id, id=bounce_id)
        await _ex(c, "mark_bounced", **args)
        source = await self._suppression_source(c, record, rule, now)
        if source is None:
            return Recorded(duplicate=False)
        entry = correlate.suppression_for(record, source)
        added = await _ex(c, "add_suppression",
                          **correlate.suppression_args(record.message.tenant_id, entry, now))
        return Recorded(duplicate=False, suppressed=bool(added))

    @staticmethod
    async def _suppression_source(c: Conn, record: BounceRecord, rule: SoftRule, now: int
                                  ) -> SuppressionSource | None:
        count = 0
        if correlate.needs_soft_count(record, rule):
            count = await _val(c, "count_soft_bounces", tenant_id=record.message.tenant_id,
                               recipient=record.bounce.recipient, since=now - rule.window)
        return correlate.suppression_source(record, rule, int(count))

    async def record_pec(self, cursor: MailboxCursor, records: Sequence[PecRecord], now: int
                         ) -> list[bool]:
        """Store the receipts as pec_* events (each once) and move the cursor."""

        async def op(c: Conn) -> list[bool]:
            out = []
            for r in records:
                args = correlate.pec_args(r, now)
                fresh = await _ex(c, "insert_pec_receipt", **args) > 0
                if fresh:
                    await _ex(c, "insert_pec_event", **args)
                out.append(fresh)
            await _ex(c, "put_cursor", **correlate.cursor_args(cursor, now))
            return out

        return await self._store.run_write(op)

    async def pec_timeouts(self, tenant_id: str, account_id: str, before: int, now: int
                           ) -> int:
        async def op(c: Conn) -> int:
            found = await _q(c, "pec_overdue",
                             **correlate.overdue_args(tenant_id, account_id, before))
            for seq, tenant in found:
                await _ex(c, "insert_pec_event", **correlate.timeout_args(seq, tenant, now))
            return len(found)

        return await self._store.run_write(op)

    async def acquire_lease(self, name: str, owner: str, now: float, until: float) -> bool:
        return bool(await self._store.run_write(lambda c: _ex(
            c, "acquire_lease", name=name, owner=owner, now=now, until=until)))

    async def release_lease(self, name: str, owner: str) -> None:
        await self._store.run_write(lambda c: _ex(c, "release_lease", name=name, owner=owner))
