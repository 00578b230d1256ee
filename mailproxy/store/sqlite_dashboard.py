"""The dashboard's store on SQLite: reads on the store's reader, changes in its group commit."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from mailproxy.dashboard.port import ActionResult, Cursor, Filter, MessageDetail, MinuteCount, Page
from mailproxy.store import dashboard_rows as dr
from mailproxy.store.queries import load_queries
from mailproxy.store.rows import dumps
from mailproxy.store.sqlite import SqliteStore

Q = dr.compose(load_queries("sqlite", "dashboard.sql"))
MINUTES_KEPT = 172800


class SqliteDashboard:
    """DashboardStore over a SqliteStore (the same file, connections and writer)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def close(self) -> None:
        """Nothing of its own to close: the store owns the connections."""

    async def status_counts(self, tenant_id: str | None, now: int
                            ) -> dict[str, dict[str, int]]:
        args = {"tenant_id": tenant_id, "now": now}

        def op(c: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            return (c.execute(Q["status_counts"], args).fetchall(),
                    c.execute(Q["due_counts"], args).fetchall())

        counts, due = await self._store.run_read(op)
        return dr.display_counts(counts, due)

    async def minute_counts(self, tenant_id: str | None, since: int) -> list[MinuteCount]:
        args = {"tenant_id": tenant_id, "since": since}
        found = await self._store.run_read(
            lambda c: c.execute(Q["minute_counts"], args).fetchall())
        return [MinuteCount(int(m), k, int(n)) for m, k, n in found]

    async def oldest_waiting(self, tenant_id: str | None, now: int) -> float | None:
        args = {"tenant_id": tenant_id, "now": now}
        row = await self._store.run_read(
            lambda c: c.execute(Q["oldest_waiting"], args).fetchone())
        return None if row is None or row[0] is None else float(row[0])

    async def page(self, flt: Filter, now: int, cursor: Cursor | None, limit: int,
                   scan: int) -> Page:
        name = dr.scan_name(flt)
        args = {**dr.match_args(flt, now), **dr.scan_args(flt, cursor, scan), "limit": limit + 1}

        bounded = dr.needs_bound(flt)

        def op(c: sqlite3.Connection) -> tuple[list[Any], Any]:
            end = c.execute(Q[f"bound:{name}"], args).fetchone() if bounded else None
            found = c.execute(Q[f"page:{name}"], {**args, **dr.end_args(end, bounded)}
                              ).fetchall()
            return found, end

        found, end = await self._store.run_read(op)
        return dr.page(found, end, limit, scan, now)

    async def message(self, pk: str, now: int) -> MessageDetail | None:
        def op(c: sqlite3.Connection) -> tuple[Any, list[Any], list[Any]]:
            row = c.execute(Q["message"], {"pk": pk}).fetchone()
            if row is None:
                return None, [], []
            seq = {"seq": row[0]}
            return (row, c.execute(Q["message_events"], seq).fetchall(),
                    c.execute(Q["message_attempts"], seq).fetchall())

        row, events, attempts = await self._store.run_read(op)
        if row is None:
            return None
        return dr.message_detail(row, events, attempts, now)

    def _actionable_args(self, flt: Filter, action: str, now: int) -> dict[str, Any]:
        return {**dr.match_args(flt, now), **dr.action_window(flt),
                "statuses": dumps(list(dr.ACTION_STATUSES[action]))}

    async def count_actionable(self, flt: Filter, action: str, now: int) -> int:
        args = self._actionable_args(flt, action, now)
        found = await self._store.run_read(lambda c: c.execute(Q["actionable"], args).fetchall())
        return len(found)

    async def act(self, flt: Filter, action: str, now: int, expected: int | None
                  ) -> ActionResult:
        args = self._actionable_args(flt, action, now)

        def op(c: sqlite3.Connection) -> ActionResult:
            found = c.execute(Q["actionable"], args).fetchall()
            if expected is not None and len(found) != expected:
                return ActionResult(len(found), 0)
            seqs = {"seqs": dumps([r[0] for r in found]), "now": now}
            if action == "cancel":
                c.execute(Q["cancel_events"], seqs)
            changed = c.execute(Q[action], seqs).rowcount
            return ActionResult(len(found), changed, tuple(sorted({r[1] for r in found})))

        return await self._store.run_write(op)

    async def rate_use(self, scopes: Sequence[str], now: int) -> dict[str, tuple[int, int, int]]:
        args = {"scopes": dumps(list(scopes)), "now": now}
        found = await self._store.run_read(lambda c: c.execute(Q["rate_use"], args).fetchall())
        return {s: (int(m), int(h), int(d)) for s, m, h, d in found}

    async def waiting_of_account(self, tenant_id: str, account_id: str) -> int:
        args = {"tenant_id": tenant_id, "account_id": account_id}
        row = await self._store.run_read(
            lambda c: c.execute(Q["waiting_of_account"], args).fetchone())
        return int(row[0])

    async def maintain(self, now: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(Q["prune_minutes"], {"before": now - MINUTES_KEPT})
            c.execute(Q["prune_counts"])

        await self._store.run_write(op)

