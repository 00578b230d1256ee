"""SQLite store: WAL, one writer thread with group commit, one reader thread.

Every write is a function run on the writer thread inside a transaction shared with the
other writes that arrived meanwhile (each in its own savepoint), so many acknowledgements
cost one fsync. A caller's future resolves only after COMMIT returned.

aiosqlite hops to its thread once per statement; a transaction of many statements then
costs many hops. Running the whole transaction as one function on an owned thread is the
same model with one hop, which is what group commit needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mailproxy import claimplan, policy
from mailproxy.errors import StoreError
from mailproxy.model import (
    Account,
    ClaimBatch,
    Claimed,
    CommandEntry,
    Deferred,
    Event,
    Failed,
    InstanceConfig,
    MessageView,
    NewMessage,
    Outcome,
    RateLimited,
    Sent,
    SyncState,
    Tenant,
)
from mailproxy.store import rows
from mailproxy.store.queries import load_queries, migrations
from mailproxy.store.sqlite_batch import InList, MultiRowInsert
from mailproxy.store.sqlite_commands import CommandLogFile

T = TypeVar("T")
Q = load_queries("sqlite")
R = load_queries("sqlite", "reports.sql")
_INSERT_MESSAGES = MultiRowInsert(Q["insert_message"])
_STORED_IDS = InList(Q["stored_ids"])


class _Busy(Exception):
    """Raised inside a savepoint to undo it and hand a value back."""


def _listing_filters(active_only: bool, status: str | None) -> list[str]:
    """WHERE terms of a message listing (a due scheduled/deferred row reads as pending)."""
    where = []
    if active_only:
        where.append("status NOT IN ('sent', 'error', 'bounced', 'suppressed')")
    if status == "pending":
        where.append("(status = 'pending' OR (status IN ('scheduled', 'deferred') "
                     "AND (deferred_ts IS NULL OR deferred_ts <= :now)))")
    elif status in ("scheduled", "deferred"):
        where.append("status = :status AND deferred_ts > :now")
    elif status is not None:
        where.append("status = :status")
    return where


class SqliteStore:
    """The Store on one SQLite file, owned by one process (a lock file enforces it).

    With the path ":memory:" it is the in-memory store of the unit tests: the same code and
    SQL on a private database, so the fake can never drift from the real thing.
    """

    def __init__(self, path: str, cipher: rows.Cipher, *, synchronous: str = "FULL") -> None:
        self._path = path
        self._cipher = cipher
        self._sync = synchronous
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._claim_offset = 0
        self._commands = CommandLogFile(path)
        # The enqueue calls gathered into the intake op queued last, while nothing else was
        # queued after it and its group commit has not begun (see enqueue).
        self._intake: list[_IntakeCall] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        loop = asyncio.get_running_loop()
        self._wconn = await loop.run_in_executor(self._writer, self._connect, False)
        await loop.run_in_executor(self._writer, self._migrate)
        if self._path == ":memory:":
            # One private database: reads share the writer's connection and thread.
            self._reader.shutdown()
            self._reader = self._writer
            self._rconn = self._wconn
        else:
            self._rconn = await loop.run_in_executor(self._reader, self._connect, True)
        await self._commands.open()
        await loop.run_in_executor(self._writer, self._commands.adopt, self._wconn)

    def _take_lock(self) -> None:
        fd = os.open(self._path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"{self._path} is in use by another running mail-proxy process"
            ) from None
        self._lock_fd = fd

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._sync}")
            # 2 MB, SQLite's default. 8 MB filled up with payload pages: 8 MB more RSS with
            # 100,000 queued. With 2 MB, intake and claims with 1,000,000 queued cost 0.9 x
            # and 0.8 x what they cost with 10,000 (bench/run.py --scale-only --large 1000000).
            conn.execute("PRAGMA cache_size = -2000")
        else:
            conn.execute("PRAGMA query_only = 1")
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _migrate(self) -> None:
        conn = self._wconn
        assert conn is not None
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in migrations("sqlite"):
            if number <= version:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
        await self._commands.close()
        loop = asyncio.get_running_loop()
        if self._rconn is self._wconn:
            self._rconn = None
        if self._wconn is not None:
            await loop.run_in_executor(self._writer, self._wconn.close)
            self._wconn = None
        if self._rconn is not None:
            await loop.run_in_executor(self._reader, self._rconn.close)
            self._rconn = None
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- plumbing ----------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        if conn is None:
            raise StoreError("store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(fn)

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """fn queued for the next group commit; its future settles after COMMIT."""
        if self._wconn is None:
            raise StoreError("store is closed")
        self._intake = None  # a write after a gathered intake op: later calls go after it
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, future))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            self._intake = None  # taken: the calls gathered into its intake op are sealed
            try:
                results = await loop.run_in_executor(
                    self._writer, self._run_batch, [fn for fn, _ in batch]
                )
            except Exception as exc:  # the commit itself failed: nothing is durable
                error = StoreError(f"database write failed: {exc}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(error)
                continue
            for (_, fut), (ok, value) in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_batch(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        conn = self._wconn
        assert conn is not None
        out: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn in fns:
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(exc, sqlite3.Error):
                        exc = StoreError(f"database write failed: {exc}")
                    out.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    out.append((True, value))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return out

    async def run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For companion stores (dashboard, bounces, offload index): fn on the reader connection."""
        return await self._read(fn)

    async def run_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For companion stores: fn in the group-committed write transaction."""
        return await self._write(fn)

    # -- meta --------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    async def get_meta(self, key: str) -> str | None:
        row = await self._read(lambda c: c.execute(Q["get_meta"], (key,)).fetchone())
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(lambda c: c.execute(Q["set_meta"], (key, value)))

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store value unless one exists; return the stored value."""

        def op(c: sqlite3.Connection) -> str:
            row = c.execute(Q["get_meta"], (key,)).fetchone()
            if row is not None:
                return str(row[0])
            c.execute(Q["set_meta"], (key, value))
            return value

        return await self._write(op)

    # -- tenants -----------------------------------------------------------------------------

    def _tenant(self, row: Sequence[Any] | None) -> Tenant | None:
        return None if row is None else rows.tenant_from_row(row, self._cipher)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._read(lambda c: c.execute(Q["get_tenant"], (tenant_id,)).fetchone())
        return self._tenant(row)

    async def list_tenants(self, active_only: bool = False) -> list[Tenant]:
        found = await self._read(
            lambda c: c.execute(Q["list_tenants"], (1 if active_only else 0,)).fetchall()
        )
        return [rows.tenant_from_row(r, self._cipher) for r in found]

    async def tenant_by_key_hash(self, key_hash: str) -> Tenant | None:
        row = await self._read(lambda c: c.execute(Q["tenant_by_key"], (key_hash,)).fetchone())
        return self._tenant(row)

    async def put_tenant(self, tenant: Tenant) -> bool:
        """Insert or replace a tenant's fields (not its key); True when created."""
        data = rows.tenant_to_row(tenant, self._cipher)
        data["now_text"] = rows.now_text()

        def op(c: sqlite3.Connection) -> bool:
            if c.execute(Q["update_tenant"], data).rowcount:
                return False
            c.execute(Q["insert_tenant"], data)
            return True

        return await self._write(op)

    async def set_api_key(self, tenant_id: str, key_hash: str | None, expires: int | None) -> bool:
        args = (key_hash, expires, rows.now_text(), tenant_id)
        return bool(await self._write(lambda c: c.execute(Q["set_api_key"], args).rowcount))

    async def set_suspended(self, tenant_id: str, batches: Sequence[str]) -> bool:
        args = (rows.dumps(list(batches)), rows.now_text(), tenant_id)
        return bool(await self._write(lambda c: c.execute(Q["set_suspended"], args).rowcount))

    async def delete_tenant(self, tenant_id: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            if not c.execute(Q["delete_tenant"], (tenant_id,)).rowcount:
                return False
            for name in ("delete_tenant_accounts", "delete_tenant_events",
                         "delete_tenant_messages", "delete_tenant_rates"):
                c.execute(Q[name], (tenant_id,))
            c.execute(R["delete_sync"], (tenant_id,))
            return True

        return await self._write(op)

    # -- accounts ----------------------------------------------------------------------------

    async def get_account(self, tenant_id: str, account_id: str) -> Account | None:
        row = await self._read(
            lambda c: c.execute(Q["get_account"], (tenant_id, account_id)).fetchone()
        )
        return None if row is None else rows.account_from_row(row, self._cipher)

    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]:
        def op(c: sqlite3.Connection) -> list[Any]:
            if tenant_id is None:
                return c.execute(Q["all_accounts"]).fetchall()
            return c.execute(Q["list_accounts"], (tenant_id,)).fetchall()

        return [rows.account_from_row(r, self._cipher) for r in await self._read(op)]

    async def put_account(self, account: Account) -> None:
        data = rows.account_to_row(account, self._cipher)
        data["now_text"] = rows.now_text()
        await self._write(lambda c: c.execute(Q["upsert_account"], data))

    async def delete_account(self, tenant_id: str, account_id: str, now: int) -> bool:
        """Delete an account; its open messages become `error` ("account deleted")."""

        def op(c: sqlite3.Connection) -> bool:
            if not c.execute(Q["delete_account"], (tenant_id, account_id)).rowcount:
                return False
            for seq, _client_id in c.execute(
                Q["open_messages_of_account"], (tenant_id, account_id)
            ).fetchall():
                self._fail(c, seq, tenant_id, "account deleted", None, now)
            return True

        return await self._write(op)

    # -- messages: intake --------------------------------------------------------------------

    async def enqueue(self, items: Sequence[NewMessage], now: float) -> list[str | None]:
        """Store each item in one transaction; per item None (queued) or a rejection reason.

        Calls that arrive while the writer is busy are gathered into one write of the next
        group commit, in arrival order (as if one after the other): with 16 single-message
        calls at a time, one savepoint, existence check and INSERT instead of one each per
        call, and the writer thread takes the GIL back a few times per commit instead of a
        few dozen (each take waits behind the event loop). Should the gathered write fail,
        each call is written alone, so that one bad call never fails the others."""
        loop = asyncio.get_running_loop()
        call = _IntakeCall(items, now, loop.create_future())
        if self._intake is not None:
            self._intake.append(call)
        else:
            calls = [call]
            self._submit(lambda c: self._enqueue_calls(c, calls)).add_done_callback(
                functools.partial(_settle_intake, calls))
            self._intake = calls  # after _submit, which seals the group before
        return await call.future

    def _enqueue_calls(self, c: sqlite3.Connection, calls: list[_IntakeCall]
                       ) -> list[tuple[bool, Any]]:
        """The gathered calls' outcomes, each (True, reasons) or (False, its error)."""
        if len(calls) > 1:
            c.execute("SAVEPOINT gathered")
            try:
                reasons = self._enqueue_items(c, [(m, call.now) for call in calls
                                                  for m in call.items])
            except Exception:  # perhaps one call's fault: each alone below
                c.execute("ROLLBACK TO gathered")
                c.execute("RELEASE gathered")
            else:
                c.execute("RELEASE gathered")
                out: list[tuple[bool, Any]] = []
                start = 0
                for call in calls:
                    out.append((True, reasons[start:start + len(call.items)]))
                    start += len(call.items)
                return out
        return [self._enqueue_alone(c, call) for call in calls]

    def _enqueue_alone(self, c: sqlite3.Connection, call: _IntakeCall) -> tuple[bool, Any]:
        c.execute("SAVEPOINT alone")
        try:
            reasons = self._enqueue_items(c, [(m, call.now) for m in call.items])
        except Exception as exc:
            c.execute("ROLLBACK TO alone")
            c.execute("RELEASE alone")
            if isinstance(exc, sqlite3.Error):
                exc = StoreError(f"database write failed: {exc}")
            return False, exc
        c.execute("RELEASE alone")
        return True, reasons

    def _enqueue_items(self, c: sqlite3.Connection, items: Sequence[tuple[NewMessage, float]]
                       ) -> list[str | None]:
        """New valid messages, most of any call, go in as multi-row INSERTs (sqlite_batch):
        a thousand of them in a handful of statements. A message already stored, one given
        twice, or one stored as an intake error takes the one-row path, after the new rows
        before it and their status counters, so rows are numbered in the order given and a
        row replaced within the call moves a counter that exists."""
        added: Counter[tuple[str, str]] = Counter()
        stored = self._stored_ids(c, [m for m, _ in items])  # grows with the ids stored here
        fresh: list[dict[str, Any]] = []
        reasons: list[str | None] = []
        for m, now in items:
            key = (m.tenant_id, m.id)
            if m.error is None and key not in stored:
                values = self._valid_values(m, now)
                fresh.append(values)
                added[m.tenant_id, values["status"]] += 1
                reasons.append(None)
            else:
                self._flush_new(c, fresh, added)
                reasons.append(self._enqueue_one(c, m, now, added))
            stored.add(key)
        self._flush_new(c, fresh, added)
        return reasons

    @staticmethod
    def _flush_new(c: sqlite3.Connection, fresh: list[dict[str, Any]],
                   added: Counter[tuple[str, str]]) -> None:
        """Write the new rows gathered so far and the status counters of the rows added so
        far (once per tenant and status, not per row: migration 010)."""
        _INSERT_MESSAGES.run(c, fresh)
        fresh.clear()
        if added:
            c.executemany(Q["count_added"], [(*key, n) for key, n in added.items()])
            added.clear()

    @staticmethod
    def _stored_ids(c: sqlite3.Connection, items: Sequence[NewMessage]) -> set[tuple[str, str]]:
        """The (tenant, client id) pairs of `items` already stored: per tenant, a few
        queries with the ids as bound parameters (any text compares as stored)."""
        by_tenant: dict[str, list[str]] = {}
        for m in items:
            by_tenant.setdefault(m.tenant_id, []).append(m.id)
        found: set[tuple[str, str]] = set()
        for tenant_id, ids in by_tenant.items():
            found.update((tenant_id, client_id) for (client_id,) in
                         _STORED_IDS.run(c, (tenant_id,), list(dict.fromkeys(ids))))
        return found

    def _new_values(self, m: NewMessage, now: float) -> dict[str, Any]:
        values = rows.message_values(m, now, self._cipher)
        values["pk"] = rows.new_pk()
        values["tenant_id"] = m.tenant_id
        values["client_id"] = m.id
        return values

    def _valid_values(self, m: NewMessage, now: float) -> dict[str, Any]:
        """A new row for a message that passed intake."""
        values = self._new_values(m, now)
        values.update(intake_error=0, error=None, error_ts=None)
        return values

    def _enqueue_one(self, c: sqlite3.Connection, m: NewMessage, now: float,
                     added: Counter[tuple[str, str]]) -> str | None:
        existing = c.execute(Q["message_state"], (m.tenant_id, m.id)).fetchone()
        if existing is not None:
            seq, status, intake_error = existing
            refused = rows.resubmitted(status, intake_error, m)
            if refused is not None:
                return refused
            values = rows.message_values(m, now, self._cipher)
            c.execute(Q["upsert_message"], {**values, "seq": seq})
            return None
        if m.error is not None:
            values = self._new_values(m, now)
            values.update(status="error", queued=None, intake_error=1, error=m.error,
                          error_ts=int(now))
            cur = c.execute(Q["insert_message"], values)
            c.execute(Q["insert_event"], (cur.lastrowid, m.tenant_id, "error", int(now),
                                          m.error, rows.dumps({"error_code": None})))
            added[m.tenant_id, "error"] += 1
            return m.error
        values = self._valid_values(m, now)
        c.execute(Q["insert_message"], values)
        added[m.tenant_id, values["status"]] += 1
        return None

    # -- messages: queries -------------------------------------------------------------------

    async def count_open(self, tenant_id: str | None = None, batch_code: str | None = None) -> int:
        row = await self._read(
            lambda c: c.execute(Q["count_open"], (tenant_id, batch_code)).fetchone()
        )
        return int(row[0])

    async def list_messages(
        self,
        tenant: Tenant,
        *,
        now: int,
        active_only: bool = False,
        status: str | None = None,
        include_history: bool = False,
        limit: int = 10000,
        offset: int = 0,
    ) -> list[MessageView]:
        where = ["tenant_id = :tenant_id", *_listing_filters(active_only, status)]
        sql = (
            f"SELECT messages.*, ({rows.LAST_EVENT_ERROR}) AS last_event_error "
            "FROM messages WHERE " + " AND ".join(where)
            + " ORDER BY created_ts DESC, seq DESC LIMIT :limit OFFSET :offset"
        )
        args = {"tenant_id": tenant.id, "now": now, "status": status, "limit": limit,
                "offset": offset}
        records, _last = await self._listing(sql, args, include_history, {tenant.id: tenant})
        return records

    async def list_all_messages(
        self, tenants: Mapping[str, Tenant], *, now: int, active_only: bool = False,
        status: str | None = None, include_history: bool = False, limit: int = 1000,
        before: int | None = None,
    ) -> tuple[list[MessageView], int | None]:
        """Every tenant's messages (admin), newest enqueued first, keyset-paged on seq."""
        # Only a real bound lets SQLite start the rowid scan at the cursor (an OR would not).
        where = ["seq < :before" if before is not None else "1",
                 *_listing_filters(active_only, status)]
        sql = (
            f"SELECT messages.*, ({rows.LAST_EVENT_ERROR}) AS last_event_error "
            "FROM messages WHERE " + " AND ".join(where) + " ORDER BY seq DESC LIMIT :limit"
        )
        args = {"now": now, "status": status, "limit": limit, "before": before}
        return await self._listing(sql, args, include_history, tenants)

    async def _listing(self, sql: str, args: dict[str, Any], include_history: bool,
                       tenants: Mapping[str, Tenant]
                       ) -> tuple[list[MessageView], int | None]:
        def op(c: sqlite3.Connection) -> tuple[list[MessageView], int | None]:
            cur = c.execute(sql, args)
            names = [d[0] for d in cur.description]
            found = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            events = None
            if include_history:
                seqs = rows.dumps([r["seq"] for r in found])
                events = c.execute(Q["history"], (seqs,)).fetchall() if found else []
            return rows.listing_views(found, events, tenants, int(args["now"]))

        return await self._read(op)

    async def delete_messages(self, tenant_id: str, ids: Sequence[str]) -> tuple[int, list[str]]:
        def op(c: sqlite3.Connection) -> tuple[int, list[str]]:
            removed, missing = 0, []
            for client_id in ids:
                row = c.execute(Q["message_state"], (tenant_id, client_id)).fetchone()
                if row is None:
                    missing.append(client_id)
                    continue
                c.execute(Q["delete_message_events"], (row[0],))
                c.execute(Q["delete_message"], (row[0],))
                removed += 1
            return removed, missing

        return await self._write(op)

    # -- messages: dispatch ------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        now: float,
        lease_seconds: float,
        max_total: int,
        skip: frozenset[tuple[str, str]] = frozenset(),
    ) -> ClaimBatch:
        self._claim_offset += 1
        offset = self._claim_offset
        return await self._write(
            lambda c: self._claim(c, owner, now, lease_seconds, max_total, skip, offset)
        )

    def _claim(
        self,
        c: sqlite3.Connection,
        owner: str,
        now: float,
        lease_seconds: float,
        max_total: int,
        skip: frozenset[tuple[str, str]],
        offset: int,
    ) -> ClaimBatch:
        now_int = int(now)
        c.execute(Q["promote_due"], (now_int,))
        tenants = {
            tid: (bool(active), json.loads(cfg), tuple(json.loads(susp)))
            for tid, active, cfg, susp in c.execute(Q["claim_tenants"]).fetchall()
        }
        accounts = claimplan.rotate(c.execute(Q["claim_accounts"]).fetchall(), offset)
        claimed: list[Claimed] = []
        blocked: dict[tuple[str, str], int] = {}
        limited: list[RateLimited] = []
        for tenant_id, account_id, cfg_text in accounts:
            remaining = max_total - len(claimed)
            if remaining <= 0:
                break
            tenant = tenants.get(tenant_id)
            if tenant is None or (tenant_id, account_id) in skip:
                continue
            active, tcfg, suspended = tenant
            if not active or "*" in suspended:
                continue
            account = rows.account_config(tenant_id, account_id, json.loads(cfg_text))
            held = rows.dumps(list(suspended))
            scopes = claimplan.rate_scopes(account, rows.tenant_limits(tcfg))
            step = claimplan.take(account, self._budget(c, account, scopes, now_int),
                                  remaining)
            if step.heads:
                self._over_limit(c, account, step, held, now, blocked, limited)
            if step.n <= 0:
                continue
            args = {"owner": owner, "until": now + lease_seconds, "now": now,
                    "now_int": now_int, "tenant_id": tenant_id, "account_id": account_id,
                    "held": held, "n": step.n}
            got = c.execute(Q["claim_account"], args).fetchall()
            got.sort(key=lambda r: (r[5], r[0]))
            names = claimplan.scope_names(scopes)
            claimed.extend(self._claimed(r, names) for r in got)
        return ClaimBatch(tuple(claimed), blocked, tuple(limited))

    @staticmethod
    def _claimed(r: Sequence[Any], scopes: tuple[str, ...]) -> Claimed:
        (seq, pk, tenant_id, client_id, account_id, priority, retry, created, date_ts,
         payload_text, content, raw, envelope_from) = r
        payload = json.loads(payload_text)
        return Claimed(
            pk=pk, tenant_id=tenant_id, id=client_id, account_id=account_id,
            priority=priority, retry_count=retry, created_ts=created, date_ts=date_ts,
            payload=payload, raw=raw,
            content=rows.content_from_row(content, payload, envelope_from),
            seq=seq, envelope_from=envelope_from, rate_scopes=scopes,
        )

    @staticmethod
    def _budget(
        c: sqlite3.Connection, account: Account, scopes: Sequence[claimplan.Scope], now: int
    ) -> policy.Budget:
        """Gather each scope's recent sends and sends in flight for the planner."""
        usages = []
        for scope in scopes:
            if scope.tenant_wide:
                in_flight = c.execute(Q["count_sending_tenant"], (account.tenant_id,))
            else:
                in_flight = c.execute(Q["count_sending_account"],
                                      (account.tenant_id, account.id))
            count = in_flight.fetchone()[0]
            sends = c.execute(Q["rate_sends"],
                              (scope.name, now - claimplan.SENDS_HORIZON)).fetchall()
            usages.append(claimplan.Usage(scope, sends, count))
        return claimplan.budget(usages, now)

    def _over_limit(
        self,
        c: sqlite3.Connection,
        account: Account,
        step: claimplan.Take,
        held: str,
        now: float,
        blocked: dict[tuple[str, str], int],
        limited: list[RateLimited],
    ) -> None:
        """Read the due heads and apply what the planner decides for those over the limit."""
        head_args = {"tenant_id": account.tenant_id, "account_id": account.id, "held": held,
                     "n": step.heads}
        heads = [seq for seq, _ in c.execute(Q["ready_head"], head_args).fetchall()]
        verdict = claimplan.over_limit(account, step, heads)
        for seq in verdict.reject:
            self._fail(c, seq, account.tenant_id, verdict.reason, verdict.code, int(now))
        if verdict.defer is not None:
            seq, until = verdict.defer, verdict.until
            c.execute(Q["defer_rate_limited"], {"until": until, "now": now, "seq": seq})
            c.execute(Q["insert_event"], (seq, account.tenant_id, "deferred", int(now),
                                          claimplan.DEFER_REASON,
                                          rows.dumps({"next_attempt_ts": until})))
            blocked[account.key] = until
        limited.extend(verdict.limited(account))

    def _fail(
        self, c: sqlite3.Connection, seq: int, tenant_id: str, error: str, code: int | None,
        now: int,
    ) -> None:
        c.execute(Q["fail_message"], {"status": "error", "error": error, "now_int": now,
                                      "now": float(now), "seq": seq})
        c.execute(Q["insert_event"], (seq, tenant_id, "error", now, error,
                                      rows.dumps({"error_code": code})))

    async def record(
        self, owner: str, results: Sequence[tuple[Claimed, Outcome]], now: float
    ) -> list[bool]:
        """Commit outcomes of leases still owned (fencing); False where the lease was lost."""
        return await self._write(lambda c: [self._record_one(c, owner, m, o, now)
                                            for m, o in results])

    def _record_one(
        self, c: sqlite3.Connection, owner: str, m: Claimed, outcome: Outcome, now: float
    ) -> bool:
        now_int = int(now)
        base = {"owner": owner, "seq": m.seq, "now": now, "now_int": now_int}
        if isinstance(outcome, Sent):
            done = c.execute(Q["finish_sent"], base).rowcount
            if done:
                for scope in m.rate_scopes:
                    c.execute(Q["add_rate_send"], (scope, now_int))
        elif isinstance(outcome, Deferred):
            queued = 1 if outcome.next_ts <= now_int else 2
            done = c.execute(Q["finish_deferred"], {**base, "queued": queued,
                                                    "next_ts": outcome.next_ts,
                                                    "retry_count": outcome.retry_count}).rowcount
        else:
            assert isinstance(outcome, Failed)
            status = "suppressed" if outcome.suppressed else "error"
            done = c.execute(Q["finish_failed"], {**base, "status": status,
                                                  "error": outcome.error}).rowcount
        if not done:
            return False
        event_type, description, metadata = rows.outcome_event(outcome, now_int)
        c.execute(Q["insert_event"], (m.seq, m.tenant_id, event_type, now_int, description,
                                      rows.dumps(metadata)))
        return True

    async def renew(self, owner: str, claimed: Sequence[Claimed], until: float) -> None:
        args = [(until, m.seq, owner) for m in claimed]
        await self._write(lambda c: c.executemany(Q["renew"], args))

    async def release(self, owner: str, claimed: Sequence[Claimed], now: float) -> None:
        """Give unfinished claims back to the queue without counting a try (clean shutdown)."""
        args = [(now, m.seq, owner) for m in claimed]
        await self._write(lambda c: c.executemany(Q["release"], args))

    async def recover(self, now: float, retry_max: int, *, all_sending: bool) -> int:
        """Return lost claims to the queue, counting a try; give up after retry_max."""

        def op(c: sqlite3.Connection) -> int:
            found = (c.execute(Q["all_sending"]).fetchall() if all_sending
                     else c.execute(Q["expired_leases"], (now,)).fetchall())
            for seq, tenant_id, _account, _client, retry_count, _deferred in found:
                if retry_count + 1 > retry_max:
                    self._fail(c, seq, tenant_id,
                               f"worker lost the message {retry_count + 1} times", None, int(now))
                else:
                    c.execute(Q["requeue_lost"], (now, seq))
            return len(found)

        return await self._write(op)

    async def prune(self, now: float) -> None:
        await self._write(lambda c: c.execute(Q["prune_rate_sends"], (int(now) - 86400,)))

    # -- delivery reports --------------------------------------------------------------------

    async def pending_event_counts(self) -> dict[str, int]:
        """Unreported events per tenant (tenants without any are absent)."""
        found = await self._read(lambda c: c.execute(R["pending_event_counts"]).fetchall())
        return {str(t): int(n) for t, n in found}

    async def pending_events(self, tenant_id: str, limit: int) -> list[Event]:
        """The tenant's oldest unreported events, in event order, with message id/account."""
        found = await self._read(
            lambda c: c.execute(R["pending_events"], (tenant_id, limit)).fetchall()
        )
        return [rows.event_from_row(r) for r in found]

    async def ack_events(self, tenant_id: str, event_ids: Sequence[str], now: int) -> int:
        """Mark events reported (and their messages' reported_ts); returns events marked."""
        args = {"tenant_id": tenant_id, "now": now,
                "ids": rows.dumps([int(i) for i in event_ids])}

        def op(c: sqlite3.Connection) -> int:
            c.execute(R["ack_messages"], args)
            return int(c.execute(R["ack_events"], args).rowcount)

        return await self._write(op)

    async def ack_all_events(self, tenant_id: str, now: int) -> int:
        """Mark every unreported event of a tenant reported (tenant without a target)."""
        args = {"tenant_id": tenant_id, "now": now}

        def op(c: sqlite3.Connection) -> int:
            c.execute(R["ack_tenant_messages"], args)
            return int(c.execute(R["ack_tenant_events"], args).rowcount)

        return await self._write(op)

    async def get_sync_state(self, tenant_id: str) -> SyncState:
        row = await self._read(lambda c: c.execute(R["get_sync"], (tenant_id,)).fetchone())
        return SyncState(tenant_id) if row is None else rows.sync_from_row(row)

    async def list_sync_states(self) -> list[SyncState]:
        found = await self._read(lambda c: c.execute(R["list_sync"]).fetchall())
        return [rows.sync_from_row(r) for r in found]

    async def put_sync_state(self, state: SyncState) -> None:
        """Upsert the state; never touches the report lease."""
        data = rows.sync_to_row(state)
        await self._write(lambda c: c.execute(R["put_sync"], data))

    async def acquire_report_lease(self, tenant_id: str, owner: str, now: float, until: float
                                   ) -> bool:
        """Take or renew the claim on a tenant's pending events; False if another owns it."""
        args = {"tenant_id": tenant_id, "owner": owner, "now": now, "until": until}
        return bool(await self._write(
            lambda c: c.execute(R["acquire_report_lease"], args).rowcount))

    async def release_report_lease(self, tenant_id: str, owner: str) -> None:
        await self._write(
            lambda c: c.execute(R["release_report_lease"], (tenant_id, owner)))

    async def purge_reported(self, before_ts: int, tenant_id: str | None = None) -> int:
        """Delete final messages fully acknowledged before before_ts, with their events."""
        args = {"before": before_ts, "tenant_id": tenant_id}

        def op(c: sqlite3.Connection) -> int:
            total = 0
            while True:
                seqs = [r[0] for r in c.execute(R["purge_candidates"], args).fetchall()]
                if not seqs:
                    return total
                text = rows.dumps(seqs)
                c.execute(R["purge_events"], (text,))
                c.execute(R["purge_messages"], (text,))
                total += len(seqs)

        return await self._write(op)

    # -- instance settings and command log ---------------------------------------------------

    async def get_instance(self) -> InstanceConfig:
        row = await self._read(lambda c: c.execute(R["get_instance"]).fetchone())
        return rows.instance_from_row(row, self._cipher)

    async def put_instance(self, config: InstanceConfig) -> None:
        data = rows.instance_to_row(config, self._cipher)
        data["now_text"] = rows.now_text()
        await self._write(lambda c: c.execute(R["put_instance"], data))

    async def log_commands(self, entries: Sequence[CommandEntry]) -> None:
        await self._commands.log(entries)

    async def list_commands(
        self, *, tenant_id: str | None, since_ts: int | None, until_ts: int | None,
        endpoint: str | None, limit: int, offset: int,
    ) -> tuple[int, list[CommandEntry]]:
        """Matching rows newest first, and the number of all matches."""
        return await self._commands.matching({
            "tenant_id": tenant_id, "since_ts": since_ts, "until_ts": until_ts,
            "endpoint": endpoint, "limit": limit, "offset": offset})

    async def export_commands(
        self, *, tenant_id: str | None, since_ts: int | None, until_ts: int | None
    ) -> list[CommandEntry]:
        """Successful (2xx) rows, oldest first."""
        return await self._commands.export(
            {"tenant_id": tenant_id, "since_ts": since_ts, "until_ts": until_ts})

    async def prune_commands(self, before_ts: int) -> int:
        return await self._commands.prune(before_ts)


def _statements(script: str) -> list[str]:
    """The statements of a migration script, split where sqlite3 finds one complete (a
    trigger body holds semicolons of its own)."""
    found, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending)
            pending = ""
    if pending.strip():
        found.append(pending)
    return found


@dataclass(frozen=True, slots=True)
class _IntakeCall:
    """One enqueue call gathered into an intake write (SqliteStore.enqueue)."""

    items: Sequence[NewMessage]
    now: float
    future: asyncio.Future[list[str | None]]


def _settle_intake(calls: list[_IntakeCall], done: asyncio.Future[list[tuple[bool, Any]]]
                   ) -> None:
    """Hand each gathered call its reasons or its error, once the group commit is over."""
    failure = None if done.cancelled() else done.exception()
    outcomes = None if done.cancelled() or failure is not None else done.result()
    for index, call in enumerate(calls):
        if call.future.done():  # the caller gave up
            continue
        if outcomes is None:
            call.future.set_exception(failure or StoreError("write cancelled"))
        else:
            ok, value = outcomes[index]
            if ok:
                call.future.set_result(value)
            else:
                call.future.set_exception(value)
