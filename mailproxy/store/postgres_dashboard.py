"""The dashboard's store on PostgreSQL, on the store's connection pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailproxy.dashboard.port import ActionResult, Cursor, Filter, MessageDetail, MinuteCount, Page
from mailproxy.store import dashboard_rows as dr
from mailproxy.store.pgsql import compile_sql
from mailproxy.store.postgres import Conn, PostgresStore
from mailproxy.store.queries import load_queries

_TEXTS = dr.compose(load_queries("postgres", "dashboard.sql"))
Q = {name: compile_sql(sql) for name, sql in _TEXTS.items()}
MINUTES_KEPT = 172800


async def _fetch(con: Conn, name: str, values: dict[str, Any]) -> list[Any]:
    sql = Q[name]
    return list(await con.fetch(sql.text, *sql.args(values)))


class PostgresDashboard:
    """DashboardStore over a PostgresStore."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def close(self) -> None:
        """The pool belongs to the store."""

    async def _all(self, name: str, values: dict[str, Any]) -> list[Any]:
        async def op(c: Conn) -> list[Any]:
            return await _fetch(c, name, values)

        return await self._store.run_read(op)

    async def status_counts(self, tenant_id: str | None, now: int
                            ) -> dict[str, dict[str, int]]:
        args = {"tenant_id": tenant_id, "now": now}
        counts = await self._all("status_counts", args)
        due = await self._all("due_counts", args)
        return dr.display_counts(counts, due)

    async def minute_counts(self, tenant_id: str | None, since: int) -> list[MinuteCount]:
        found = await self._all("minute_counts", {"tenant_id": tenant_id, "since": since})
        return [MinuteCount(int(m), k, int(n)) for m, k, n in found]

    async def oldest_waiting(self, tenant_id: str | None, now: int) -> float | None:
        found = await self._all("oldest_waiting", {"tenant_id": tenant_id, "now": now})
        return None if not found or found[0][0] is None else float(found[0][0])

    async def page(self, flt: Filter, now: int, cursor: Cursor | None, limit: int,
                   scan: int) -> Page:
        name = dr.scan_name(flt)
        args = {**dr.match_args(flt, now), **dr.scan_args(flt, cursor, scan), "limit": limit + 1}

        bounded = dr.needs_bound(flt)

        async def op(c: Conn) -> tuple[list[Any], Any]:
            bound = await _fetch(c, f"bound:{name}", args) if bounded else []
            end = bound[0] if bound else None
            return await _fetch(c, f"page:{name}", {**args, **dr.end_args(end, bounded)}), end

        found, end = await self._store.run_read(op)
        return dr.page(found, end, limit, scan, now)

    async def message(self, pk: str, now: int) -> MessageDetail | None:
        async def op(c: Conn) -> tuple[Any, list[Any], list[Any]]:
            rows = await _fetch(c, "message", {"pk": pk})
            if not rows:
                return None, [], []
            seq = {"seq": rows[0][0]}
            return (rows[0], await _fetch(c, "message_events", seq),
                    await _fetch(c, "message_attempts", seq))

        row, events, attempts = await self._store.run_read(op)
        if row is None:
            return None
        return dr.message_detail(row, events, attempts, now)

    @staticmethod
    def _actionable_args(flt: Filter, action: str, now: int) -> dict[str, Any]:
        return {**dr.match_args(flt, now), **dr.action_window(flt),
                "statuses": list(dr.ACTION_STATUSES[action])}

    async def count_actionable(self, flt: Filter, action: str, now: int) -> int:
        sql = Q["actionable"]
        text = sql.text.replace("FOR UPDATE", "")
        args = sql.args(self._actionable_args(flt, action, now))

        async def op(c: Conn) -> int:
            return len(await c.fetch(text, *args))

        return await self._store.run_read(op)

    async def act(self, flt: Filter, action: str, now: int, expected: int | None
                  ) -> ActionResult:
        args = self._actionable_args(flt, action, now)

        async def op(c: Conn) -> ActionResult:
            found = await _fetch(c, "actionable", args)
            if expected is not None and len(found) != expected:
                return ActionResult(len(found), 0)
            seqs = {"seqs": [r[0] for r in found], "now": now}
            if action == "cancel":
                await c.execute(Q["cancel_events"].text, *Q["cancel_events"].args(seqs))
            status = await c.execute(Q[action].text, *Q[action].args(seqs))
            changed = int(status.rsplit(" ", 1)[-1])
            return ActionResult(len(found), changed, tuple(sorted({r[1] for r in found})))

        return await self._store.run_write(op)

    async def rate_use(self, scopes: Sequence[str], now: int) -> dict[str, tuple[int, int, int]]:
        found = await self._all("rate_use", {"scopes": list(scopes), "now": now})
        return {s: (int(m), int(h), int(d)) for s, m, h, d in found}

    async def waiting_of_account(self, tenant_id: str, account_id: str) -> int:
        found = await self._all("waiting_of_account",
                                {"tenant_id": tenant_id, "account_id": account_id})
        return int(found[0][0])

    async def maintain(self, now: int) -> None:
        async def analyze(c: Conn) -> None:
            if await c.fetchval(Q["never_analyzed"].text):
                await c.execute("ANALYZE messages")

        await self._store.run_read(analyze)

        async def op(c: Conn) -> None:
            if not await c.fetchval(Q["fold_lock"].text):
                return
            await c.execute(Q["fold_counts"].text)
            await c.execute(Q["fold_minutes"].text)
            sql = Q["prune_minutes"]
            await c.execute(sql.text, *sql.args({"before": now - MINUTES_KEPT}))

        await self._store.run_write(op)
