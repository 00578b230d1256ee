"""PostgreSQL store: asyncpg pool, claim with FOR UPDATE SKIP LOCKED under a lease.

Several instances may share one database. What SQLite gets from owning the file, this
store gets from the database: row locks (SKIP LOCKED) keep claimers apart, a lease owner
fences late outcomes, and a transaction-level advisory lock per rate scope makes checking
and consuming a rate window one atomic step across instances.

Every operation is one transaction, or one statement where that is enough (the frequent
claim and record of the dispatch loop). A lost connection before COMMIT is retried with
backoff on a fresh connection (the pool reconnects after a server restart); a failure
during COMMIT is not retried, because its outcome is unknown, except for the single
statements that are safe to repeat. Driver exceptions leave as StoreError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from mailproxy import claimplan, policy
from mailproxy.errors import ConfigError, StoreError
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
from mailproxy.store.groups import GroupWriter, Linger
from mailproxy.store.pgsql import Sql, affected, compile_sql
from mailproxy.store.queries import load_queries, migrations
from mailproxy.tasks import cancel_and_wait

log = logging.getLogger("mailproxy.store.postgres")

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)
CHANNEL = "mailproxy_wake"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# insert_messages: array parameter -> column of a new row (PostgresStore._new_row).
_BATCH_COLUMNS = (
    ("pks", "pk"), ("tenant_ids", "tenant_id"), ("client_ids", "client_id"),
    ("account_ids", "account_id"), ("statuses", "status"), ("queueds", "queued"),
    ("priorities", "priority"), ("due_tss", "due_ts"), ("deferred_tss", "deferred_ts"),
    ("batch_codes", "batch_code"), ("intake_errors", "intake_error"), ("is_pecs", "is_pec"),
    ("payloads", "payload"), ("raws", "raw"), ("envelope_froms", "envelope_from"),
    ("errors", "error"), ("error_tss", "error_ts"), ("nows", "now"),
    ("header_message_ids", "header_message_id"), ("contents", "content"),
)
_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0)

# Errors after which the transaction surely did not commit and a new attempt may succeed.
_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, starting up
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.exceptions.InternalClientError,  # protocol state broken by a dropped connection
    OSError,
    TimeoutError,
)


def _load_all() -> dict[str, Sql]:
    """The named queries of every PostgreSQL query file (a name may appear once)."""
    found: dict[str, Sql] = {}
    for filename in ("queries.sql", "reports.sql"):
        for name, sql in load_queries("postgres", filename).items():
            if name in found:
                raise RuntimeError(f"query {name} is defined twice")
            found[name] = compile_sql(sql)
    return found


Q = _load_all()
_PURGE_CHUNK = 10000
_RECORD_GROUP = 200  # record() calls per group (one statement or transaction) at most
_RECORD_GATHER = 32  # fewer waiting calls than this, under load: linger before writing
_RECORD_LINGER = 0.03
_RECORD_BUSY = 0.05  # under load: the previous group was taken less than this ago
_INTAKE_ALONE = 50  # an enqueue of this many messages or more has its own transaction
_INTAKE_GROUP = 500  # messages per intake group at most


def _split_url(url: str) -> tuple[str, str | None]:
    """(dsn for asyncpg, schema) from a URL that may carry ?schema=NAME."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ConfigError(f"invalid PostgreSQL schema name: {schema!r}")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme == "postgres" else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


async def _plan_mode(con: Conn) -> None:
    """Plan every execution with its parameters while the queue table has no statistics.

    A prepared statement switches to a generic plan after five runs. On a table never
    analysed (a new database, until autovacuum's first ANALYZE) that plan picks the wrong
    index: the id lookup of enqueue scanned every row of the tenant, slower with every
    message. Once statistics exist the generic plans are right and cheaper than planning
    each run (about a fifth of enqueue time), so connections opened from then on use them
    (asyncpg replaces a pooled connection after 50,000 queries or 5 idle minutes).
    """
    analyzed = await con.fetchval(
        "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL"
        " FROM pg_stat_user_tables WHERE relid = 'messages'::regclass")
    if not analyzed:
        await con.execute("SET plan_cache_mode = force_custom_plan")


async def _keep_session(_con: Conn) -> None:
    """Pool release without asyncpg's reset query (one round trip and four statements per
    transaction). The pool still rolls back an open transaction; nothing else needs undoing:
    pooled connections take only transaction-level advisory locks, never LISTEN (wake-ups
    have their own connection), open no cursors and change no session settings."""


@dataclass(frozen=True, slots=True)
class _RecordCall:
    """One record() call: its outcomes, written in a group with others."""

    owner: str
    results: tuple[tuple[Claimed, Outcome], ...]
    now: float


def _statement_failed(exc: Exception) -> bool:
    """True when a statement was refused (not when the connection or the commit failed)."""
    if not isinstance(exc, StoreError):
        return False
    cause = exc.__cause__
    return (isinstance(cause, asyncpg.PostgresError | asyncpg.InterfaceError)
            and not isinstance(cause, _TRANSIENT))


class _CommitUnknown(Exception):
    """The connection failed during COMMIT: the transaction may or may not have committed."""


def _maybe_one_calls_fault(exc: Exception) -> bool:
    """For group commit: whether retrying the calls of a failed group one by one may help.
    Not when the database was away (each caller would wait through the retries again) nor
    when the commit's outcome is unknown (the group may be written already)."""
    if isinstance(exc, StoreError):
        return not isinstance(exc.__cause__, (_CommitUnknown, *_TRANSIENT))
    return True  # a bug in one call's data: the others may still go through


_BROKEN: tuple[type[BaseException], ...] = (_CommitUnknown, *_TRANSIENT)


def _retry_aware(fn: Callable[[Conn, bool], Awaitable[T]]) -> Callable[[Conn], Awaitable[T]]:
    """fn for _run, told whether it runs again after a lost connection (its second call on):
    work done outside a transaction may then have committed without its reply arriving."""
    attempts = 0

    async def attempt(c: Conn) -> T:
        nonlocal attempts
        attempts += 1
        return await fn(c, attempts > 1)

    return attempt


async def _q(con: Conn, name: str, /, **values: Any) -> list[Any]:
    sql = Q[name]
    return list(await con.fetch(sql.text, *sql.args(values)))


async def _q1(con: Conn, name: str, /, **values: Any) -> Any:
    sql = Q[name]
    return await con.fetchrow(sql.text, *sql.args(values))


async def _val(con: Conn, name: str, /, **values: Any) -> Any:
    sql = Q[name]
    return await con.fetchval(sql.text, *sql.args(values))


async def _ex(con: Conn, name: str, /, **values: Any) -> int:
    sql = Q[name]
    return affected(await con.execute(sql.text, *sql.args(values)))


class PostgresStore:
    """The Store on a PostgreSQL database, shared by any number of instances."""

    def __init__(
        self, url: str, cipher: rows.Cipher, *, pool_size: int = 10,
        retry_delays: Sequence[float] = _RETRY_DELAYS,
    ) -> None:
        self._dsn, self._schema = _split_url(url)
        self._cipher = cipher
        self._pool_size = max(1, pool_size)
        self._retry_delays = tuple(retry_delays)
        self._pool: Any = None
        self._claim_offset = 0
        self._promoted_at: int | None = None  # the second of the last promote_due
        # Outcomes: a refused statement is retried call by call (fencing makes repeats safe);
        # a bug or a database away reaches every caller of the group.
        self._records = GroupWriter(self._write_group, limit=_RECORD_GROUP,
                                    isolate=_statement_failed, name="pg-record",
                                    linger=Linger(_RECORD_GATHER, _RECORD_LINGER, _RECORD_BUSY))
        self._intake = GroupWriter(self._store_pairs, limit=_INTAKE_GROUP,
                                   isolate=_maybe_one_calls_fault, name="pg-intake")
        self._commands = GroupWriter(self._insert_commands, limit=_INTAKE_GROUP,
                                     isolate=_maybe_one_calls_fault, name="pg-command-log")
        self._listen_con: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._listen_lost = asyncio.Event()
        self._listen_callback: Callable[[], None] | None = None
        self._change_callbacks: list[Callable[[], None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def _server_settings(self) -> dict[str, str]:
        name = "mailproxy" if self._schema is None else f"mailproxy/{self._schema}"
        settings = {"application_name": name}
        if self._schema is not None:
            settings["search_path"] = f'"{self._schema}"'
        return settings

    async def open(self) -> None:
        try:
            await self._migrate()
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size,
                server_settings=self._server_settings(), reset=_keep_session,
                init=_plan_mode,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StoreError(f"cannot open the PostgreSQL database: {exc}") from exc

    async def _migrate(self) -> None:
        """Create the schema and apply new migrations, one instance at a time."""
        con = await asyncpg.connect(self._dsn, server_settings=self._server_settings())
        try:
            lock = f"mailproxy:migrate:{self._schema or ''}"
            await con.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock)
            try:
                if self._schema is not None:
                    await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r[0] for r in await con.fetch("SELECT version FROM schema_migrations")}
                for number, script in migrations("postgres"):
                    if number in done:
                        continue
                    async with con.transaction():
                        await con.execute(script)
                        await con.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", number)
            finally:
                await con.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock)
        finally:
            await con.close()

    async def close(self) -> None:
        for writer in (self._intake, self._commands, self._records):
            await writer.drain()
        if self._listen_task is not None:
            await cancel_and_wait(self._listen_task)
            self._listen_task = None
        await self._drop_listener()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)

    # -- plumbing ----------------------------------------------------------------------------

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        """Run fn in one transaction; retry when the connection was lost before COMMIT.

        With transaction=False fn runs its statements on their own (each one atomic), saving
        the BEGIN and COMMIT round trips; only for work that is safe to repeat whatever the
        lost connection had done (claims and fenced outcomes), since it is retried too.
        """
        for delay in (*self._retry_delays, None):
            try:
                return await self._attempt(fn, transaction)
            except _CommitUnknown as exc:
                raise StoreError(f"database commit outcome unknown: {exc.__cause__}") from exc
            except _TRANSIENT as exc:
                if delay is None:
                    raise StoreError(f"database unavailable: {exc}") from exc
                log.warning("database operation failed (%s); retrying in %.2f s", exc, delay)
                if not isinstance(exc, asyncpg.exceptions.TransactionRollbackError):
                    await self._expire_connections()
                await asyncio.sleep(delay)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise StoreError(f"database operation failed: {exc}") from exc
        raise AssertionError("unreachable")

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """One SELECT, without BEGIN and COMMIT (two round trips of three): a statement is
        atomic by itself, and a read is safe to repeat after a lost connection."""
        return await self._run(fn, transaction=False)

    async def run_read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """For companion stores (dashboard, bounces, offload index): one read on a pooled
        connection."""
        return await self._read(fn)

    async def run_write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """For companion stores: fn in one transaction, retried like the store's own."""
        return await self._run(fn)

    async def _attempt(self, fn: Callable[[Conn], Awaitable[T]], transaction: bool) -> T:
        pool = self._pool
        if pool is None:
            raise StoreError("store is closed")
        async with pool.acquire() as con:
            try:
                if not transaction:
                    return await fn(con)
                return await self._in_transaction(con, fn)
            except _BROKEN:
                with contextlib.suppress(Exception):  # may already be detached from the pool
                    con.terminate()  # never hand a broken connection back to the pool
                raise

    @staticmethod
    async def _in_transaction(con: Conn, fn: Callable[[Conn], Awaitable[T]]) -> T:
        tx = con.transaction()
        await tx.start()
        try:
            result = await fn(con)
        except BaseException:
            with contextlib.suppress(Exception):
                await tx.rollback()
            raise
        try:
            await tx.commit()
        except _TRANSIENT as exc:
            raise _CommitUnknown() from exc
        return result

    async def _expire_connections(self) -> None:
        """After a connection error, replace the idle connections too: they died with it."""
        if self._pool is not None:
            await self._pool.expire_connections()

    # -- wake-ups across instances ------------------------------------------------------------

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call callback on each NOTIFY mailproxy_wake, re-subscribing after a reconnect."""
        self._listen_callback = callback
        await self._subscribe()
        self._listen_task = asyncio.get_running_loop().create_task(
            self._watch_listener(), name="pg-listen")

    async def _subscribe(self) -> None:
        try:
            con = await asyncpg.connect(self._dsn, server_settings=self._server_settings())
            await con.add_listener(CHANNEL, self._notified)
        except _TRANSIENT as exc:
            raise StoreError(f"cannot listen for wake-ups: {exc}") from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot listen for wake-ups: {exc}") from exc
        con.add_termination_listener(self._listener_lost)
        self._listen_lost.clear()
        self._listen_con = con

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call callback when any instance changed a tenant or an account (migration 006's
        triggers notify with payload 'changed'), and after a reconnect (one may be missed)."""
        self._change_callbacks.append(callback)

    def _notified(self, *args: Any) -> None:
        payload = args[3] if len(args) > 3 else None
        if payload is None or payload == "changed":
            for callback in self._change_callbacks:
                callback()
        if self._listen_callback is not None:
            self._listen_callback()

    def _listener_lost(self, *_args: Any) -> None:
        self._listen_lost.set()

    async def _watch_listener(self) -> None:
        """Reconnect the listening connection when it drops (checked every 10 s too)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listen_lost.wait(), 10)
            if not self._listen_lost.is_set() and await self._listener_alive():
                continue
            await self._drop_listener()
            attempt = 0
            while True:
                try:
                    await self._subscribe()
                    break
                except StoreError as exc:
                    delay = min(5.0, 0.1 * 2**attempt)
                    attempt += 1
                    log.warning("wake-up listener lost (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
            self._notified()  # a notification may have been missed while away

    async def _listener_alive(self) -> bool:
        con = self._listen_con
        if con is None or con.is_closed():
            return False
        try:
            await asyncio.wait_for(con.execute("SELECT 1"), 5)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return False
        return True

    async def _drop_listener(self) -> None:
        con, self._listen_con = self._listen_con, None
        if con is None:
            return
        con.remove_termination_listener(self._listener_lost)
        if con.is_closed():
            return
        try:
            await asyncio.wait_for(con.close(), 5)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            con.terminate()

    # -- meta --------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(lambda c: c.fetchval("SELECT 1"))

    async def get_meta(self, key: str) -> str | None:
        value = await self._read(lambda c: _val(c, "get_meta", key=key))
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(lambda c: _ex(c, "set_meta", key=key, value=value))

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store value unless one exists; return the stored value."""

        async def op(c: Conn) -> str:
            await _ex(c, "set_meta_if_absent", key=key, value=value)
            return str(await _val(c, "get_meta", key=key))

        return await self._run(op)

    # -- tenants -----------------------------------------------------------------------------

    def _tenant(self, row: Sequence[Any] | None) -> Tenant | None:
        return None if row is None else rows.tenant_from_row(row, self._cipher)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self._tenant(await self._read(lambda c: _q1(c, "get_tenant", tenant_id=tenant_id)))

    async def list_tenants(self, active_only: bool = False) -> list[Tenant]:
        found = await self._read(lambda c: _q(c, "list_tenants", active_only=active_only))
        return [rows.tenant_from_row(r, self._cipher) for r in found]

    async def tenant_by_key_hash(self, key_hash: str) -> Tenant | None:
        return self._tenant(await self._read(lambda c: _q1(c, "tenant_by_key", key_hash=key_hash)))

    async def put_tenant(self, tenant: Tenant) -> bool:
        """Insert or replace a tenant's fields (not its key); True when created."""
        data = rows.tenant_to_row(tenant, self._cipher)
        data["active"] = bool(data["active"])
        data["now_text"] = rows.now_text()
        return bool(await self._run(lambda c: _val(c, "put_tenant", **data)))

    async def set_api_key(self, tenant_id: str, key_hash: str | None, expires: int | None) -> bool:
        values = {"key_hash": key_hash, "expires": expires, "now_text": rows.now_text(),
                  "tenant_id": tenant_id}
        return bool(await self._run(lambda c: _ex(c, "set_api_key", **values)))

    async def set_suspended(self, tenant_id: str, batches: Sequence[str]) -> bool:
        """Set the suspension; other instances are woken (an activation frees work for all
        of them, not only for the instance that received it)."""
        values = {"suspended": rows.dumps(list(batches)), "now_text": rows.now_text(),
                  "tenant_id": tenant_id}

        async def op(c: Conn) -> bool:
            changed = bool(await _ex(c, "set_suspended", **values))
            if changed:
                await _val(c, "notify_wake")
            return changed

        return await self._run(op)

    async def delete_tenant(self, tenant_id: str) -> bool:
        async def op(c: Conn) -> bool:
            if not await _ex(c, "delete_tenant", tenant_id=tenant_id):
                return False
            for name in ("delete_tenant_events", "delete_tenant_messages",
                         "delete_tenant_rates", "delete_tenant_blocks", "delete_sync"):
                await _ex(c, name, tenant_id=tenant_id)
            return True

        return await self._run(op)

    # -- accounts ----------------------------------------------------------------------------

    async def get_account(self, tenant_id: str, account_id: str) -> Account | None:
        row = await self._read(
            lambda c: _q1(c, "get_account", tenant_id=tenant_id, account_id=account_id))
        return None if row is None else rows.account_from_row(row, self._cipher)

    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]:
        async def op(c: Conn) -> list[Any]:
            if tenant_id is None:
                return await _q(c, "all_accounts")
            return await _q(c, "list_accounts", tenant_id=tenant_id)

        return [rows.account_from_row(r, self._cipher) for r in await self._read(op)]

    async def put_account(self, account: Account) -> None:
        """Create or replace an account; other instances are woken (new limits may free
        work that waits)."""
        data = rows.account_to_row(account, self._cipher)
        data["now_text"] = rows.now_text()

        async def op(c: Conn) -> None:
            await _ex(c, "upsert_account", **data)
            await _val(c, "notify_wake")

        await self._run(op)

    async def delete_account(self, tenant_id: str, account_id: str, now: int) -> bool:
        """Delete an account; its open messages become `error` ("account deleted")."""

        async def op(c: Conn) -> bool:
            if not await _ex(c, "delete_account", tenant_id=tenant_id, account_id=account_id):
                return False
            await _ex(c, "delete_account_block", tenant_id=tenant_id, account_id=account_id)
            for row in await _q(c, "open_messages_of_account", tenant_id=tenant_id,
                                account_id=account_id):
                await _fail(c, row["seq"], tenant_id, "account deleted", None, now)
            return True

        return await self._run(op)

    # -- messages: intake --------------------------------------------------------------------

    async def enqueue(self, items: Sequence[NewMessage], now: float) -> list[str | None]:
        """Store each item in one transaction; per item None (queued) or a rejection reason.

        Group commit for small calls (one message per REST request or SMTP submission):
        calls that arrive while an earlier group is being written are written together in
        the next one, in arrival order, as if one after the other (store/groups.py). A group
        that fails while the database is reachable is retried call by call, so that one bad
        call never fails the others. Larger calls have a transaction of their own. Other
        instances are woken by a notification that is delivered at commit.
        """
        if not items:
            return []
        if len(items) >= _INTAKE_ALONE:
            return await self._store_items(items, [now] * len(items))
        return await self._intake.submit([(m, now) for m in items])

    async def _store_pairs(self, pairs: list[tuple[NewMessage, float]]) -> list[str | None]:
        return await self._store_items([m for m, _ in pairs], [now for _, now in pairs])

    async def _store_items(self, items: Sequence[NewMessage], nows: Sequence[float]
                           ) -> list[str | None]:
        """One transaction: a message's `now` is that of the call that brought it."""

        async def op(c: Conn) -> list[str | None]:
            if len(items) == 1:
                results = [await self._enqueue_one(c, items[0], nows[0])]
            else:
                results = await self._enqueue_batch(c, items, nows)
            if any(r is None for r in results):
                await _val(c, "notify_wake")
            return results

        return await self._run(op)

    async def _enqueue_batch(
        self, c: Conn, items: Sequence[NewMessage], nows: Sequence[float]
    ) -> list[str | None]:
        """New ids go in with one statement (two statements per message took most of the
        intake time); ids already stored, repeated in the batch, or stored meanwhile by
        another transaction go one by one afterwards, in batch order."""
        keys = [(m.tenant_id, m.id) for m in items]
        tenant_ids, client_ids = [k[0] for k in keys], [k[1] for k in keys]
        stored = {(r[0], r[1]) for r in await _q(c, "existing_messages", tenant_ids=tenant_ids,
                                                   client_ids=client_ids)}
        fresh: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key not in stored and key not in fresh:
                fresh[key] = i
        results: list[str | None] = [None] * len(items)
        done: set[int] = set()
        if fresh:
            new_rows = [self._new_row(items[i], nows[i]) for i in fresh.values()]
            columns = {param: [r[column] for r in new_rows] for param, column in _BATCH_COLUMNS}
            events = []
            for tenant_id, client_id, seq in await _q(c, "insert_messages", **columns):
                i = fresh[(tenant_id, client_id)]
                done.add(i)
                error = results[i] = items[i].error
                if error is not None:
                    events.append((i, seq, tenant_id, error))
            if events:
                events.sort()
                await _ex(c, "insert_events", seqs=[e[1] for e in events],
                          tenant_ids=[e[2] for e in events], event_types=["error"] * len(events),
                          event_tss=[int(nows[e[0]]) for e in events],
                          descriptions=[e[3] for e in events],
                          metadatas=[rows.dumps({"error_code": None})] * len(events))
        for i, m in enumerate(items):
            if i not in done:
                results[i] = await self._enqueue_one(c, m, nows[i])
        return results

    async def _enqueue_one(self, c: Conn, m: NewMessage, now: float) -> str | None:
        # Two tries: a concurrent transaction may insert the same id between read and insert.
        for _ in range(2):
            existing = await _q1(c, "message_state", tenant_id=m.tenant_id, client_id=m.id)
            if existing is not None:
                return await self._enqueue_existing(c, m, now, existing)
            stored, reason = await self._insert(c, m, now)
            if stored:
                return reason
        raise StoreError(f"message {m.id} changed concurrently, try again")

    async def _enqueue_existing(
        self, c: Conn, m: NewMessage, now: float, existing: Any
    ) -> str | None:
        seq, status, intake_error = existing
        refused = rows.resubmitted(status, intake_error, m)
        if refused is not None:
            return refused
        await _ex(c, "upsert_message", **rows.message_values(m, now, self._cipher), seq=seq)
        return None

    def _new_row(self, m: NewMessage, now: float) -> dict[str, Any]:
        """Column values of a new message row (an intake error is stored as failed)."""
        values = rows.message_values(m, now, self._cipher)
        values.update(pk=rows.new_pk(), tenant_id=m.tenant_id, client_id=m.id)
        if m.error is not None:
            values.update(status="error", queued=None, intake_error=True, error=m.error,
                          error_ts=int(now))
        else:
            values.update(intake_error=False, error=None, error_ts=None)
        return values

    async def _insert(self, c: Conn, m: NewMessage, now: float) -> tuple[bool, str | None]:
        """(False, None) when another transaction stored the same id first."""
        seq = await _val(c, "insert_message", **self._new_row(m, now))
        if seq is None:
            return False, None
        if m.error is not None:
            await _ex(c, "insert_event", seq=seq, tenant_id=m.tenant_id, event_type="error",
                      event_ts=int(now), description=m.error,
                      metadata=rows.dumps({"error_code": None}))
        return True, m.error

    # -- messages: queries -------------------------------------------------------------------

    async def count_open(self, tenant_id: str | None = None, batch_code: str | None = None) -> int:
        value = await self._read(
            lambda c: _val(c, "count_open", tenant_id=tenant_id, batch_code=batch_code))
        return int(value)

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
        args = {"tenant_id": tenant.id, "active_only": active_only, "status": status,
                "now": now, "limit": limit, "offset": offset}
        records, _last = await self._listing("list_messages", args, include_history,
                                             {tenant.id: tenant})
        return records

    async def list_all_messages(
        self, tenants: Mapping[str, Tenant], *, now: int, active_only: bool = False,
        status: str | None = None, include_history: bool = False, limit: int = 1000,
        before: int | None = None,
    ) -> tuple[list[MessageView], int | None]:
        args = {"active_only": active_only, "status": status, "now": now, "limit": limit,
                "before": before}
        return await self._listing("list_all_messages", args, include_history, tenants)

    async def _listing(self, query: str, args: dict[str, Any], include_history: bool,
                       tenants: Mapping[str, Tenant]) -> tuple[list[MessageView], int | None]:
        async def op(c: Conn) -> tuple[list[Any], list[Any]]:
            found = await _q(c, query, **args)
            events: list[Any] = []
            if include_history and found:
                events = await _q(c, "history", seqs=[r["seq"] for r in found])
            return found, events

        found, events = await self._run(op)
        return rows.listing_views(found, events if include_history else None, tenants,
                                    int(args["now"]))

    async def delete_messages(self, tenant_id: str, ids: Sequence[str]) -> tuple[int, list[str]]:
        async def op(c: Conn) -> dict[str, int]:
            gone = await _q(c, "delete_messages", tenant_id=tenant_id, ids=list(ids))
            if gone:
                await _ex(c, "delete_events_of", seqs=[r["seq"] for r in gone])
            return {r["client_id"]: r["seq"] for r in gone}

        deleted = await self._run(op)
        removed, missing, seen = 0, [], set()
        for client_id in ids:  # a repeated id counts once, then reads as not found
            if client_id in deleted and client_id not in seen:
                seen.add(client_id)
                removed += 1
            else:
                missing.append(client_id)
        return removed, missing

    # -- messages: dispatch ------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        now: float,
        lease_seconds: float,
        max_total: int,
        skip: frozenset[tuple[str, str]] = frozenset(),
    ) -> ClaimBatch:
        """Claim due rows of active accounts, at most max_total, under a lease.

        A claim cycle is frequent under load, so it costs as few round trips as it can:
        due times are whole seconds, so waiting rows are promoted once a second; accounts
        without rate limits are claimed by one statement outside a transaction. When that
        statement is retried after a lost connection, the retry first adopts the rows an
        attempt whose reply was lost had taken (same owner, same lease end), so that none
        waits out its lease. Rate-limited accounts are claimed in a transaction, for the
        advisory locks that make checking and spending a window one step.
        """
        self._claim_offset += 1
        offset = self._claim_offset
        claim = _Claim(self, owner, now, lease_seconds, max_total, skip)
        now_int = int(now)

        async def free(c: Conn, retry: bool) -> ClaimBatch | list[_Plan]:
            """The claim if no account has limits, else the plans for a transaction."""
            if now_int != self._promoted_at:
                await _ex(c, "promote_due", now_int=now_int)  # idempotent
                self._promoted_at = now_int
            plans = await claim.plans(c, offset)
            if any(p.scopes for p in plans):
                return plans
            return await claim.run(c, plans, adopt=retry)

        done = await self._run(_retry_aware(free), transaction=False)
        if isinstance(done, ClaimBatch):
            return done
        return await self._run(lambda c: claim.run(c, done))

    async def record(
        self, owner: str, results: Sequence[tuple[Claimed, Outcome]], now: float
    ) -> list[bool]:
        """Commit outcomes of leases still owned (fencing); False where the lease was lost.

        Group commit, as on SQLite (store/groups.py, lingering under load): calls that
        arrive while an earlier group is being written are written together in the next
        group (each worker records one outcome per finished send, so under load many calls
        wait at once). A group whose statement is refused is retried call by call, so that
        one bad call never fails the others.
        """
        if not results:
            return []
        [flags] = await self._records.submit([_RecordCall(owner, tuple(results), now)])
        return flags

    async def _write_group(self, group: Sequence[_RecordCall]) -> list[list[bool]]:
        # A group of Sent outcomes alone (nearly always) is one statement, which is atomic
        # by itself and safe to repeat (fencing): no transaction round trips.
        only_sent = all(isinstance(o, Sent) for call in group for _, o in call.results)
        return await self._run(_retry_aware(lambda c, retry: self._record_group(c, group, retry)),
                               transaction=not only_sent)

    async def _record_group(self, c: Conn, calls: Sequence[_RecordCall], retry: bool
                            ) -> list[list[bool]]:
        """The outcomes of several calls; per call, per result a flag.

        Sent outcomes (nearly all) are finished by one statement for the whole group,
        with their rate-window counts and events. Others are finished one by one.
        """
        flags = {id(call): [False] * len(call.results) for call in calls}
        sent: list[tuple[_RecordCall, int, Claimed, Sent]] = []
        seen: set[int] = set()
        for call in calls:
            for i, (m, outcome) in enumerate(call.results):
                if isinstance(outcome, Sent) and m.seq not in seen:  # listed twice: once
                    seen.add(m.seq)
                    sent.append((call, i, m, outcome))
        if sent:
            finished = await self._finish_sent(c, sent, retry)
            for call, i, m, _ in sent:
                flags[id(call)][i] = m.seq in finished
        events: list[tuple[int, str, str, int, str | None, str]] = []
        for call in calls:
            for i, (m, outcome) in enumerate(call.results):
                if isinstance(outcome, Sent):
                    continue
                if await self._finish_other(c, call.owner, m, outcome, call.now):
                    flags[id(call)][i] = True
                    now_int = int(call.now)
                    event_type, description, metadata = rows.outcome_event(outcome, now_int)
                    events.append((m.seq, m.tenant_id, event_type, now_int, description,
                                   rows.dumps(metadata)))
        if events:
            columns = list(zip(*events, strict=True))
            await _ex(c, "insert_events", seqs=list(columns[0]), tenant_ids=list(columns[1]),
                      event_types=list(columns[2]), event_tss=list(columns[3]),
                      descriptions=list(columns[4]), metadatas=list(columns[5]))
        return [flags[id(call)] for call in calls]

    @staticmethod
    async def _finish_sent(
        c: Conn, sent: Sequence[tuple[_RecordCall, int, Claimed, Sent]], retry: bool
    ) -> set[int]:
        """Finish Sent outcomes (each message once) with their rate counts and events.

        On a retry after a lost connection, rows the lost attempt finished (it may have
        committed) count as finished too: they are sent at exactly this outcome's time.
        """
        rate_seqs: list[int] = []
        rate_scopes: list[str] = []
        rate_tss: list[int] = []
        events: list[tuple[str, int, str | None, str]] = []
        for call, _, m, outcome in sent:
            now_int = int(call.now)
            for scope in m.rate_scopes:
                rate_seqs.append(m.seq)
                rate_scopes.append(scope)
                rate_tss.append(now_int)
            event_type, description, metadata = rows.outcome_event(outcome, now_int)
            events.append((event_type, now_int, description, rows.dumps(metadata)))
        seqs = [m.seq for _, _, m, _ in sent]
        nows = [call.now for call, _, _, _ in sent]
        found = await _q(
            c, "finish_sent", seqs=seqs, owners=[call.owner for call, _, _, _ in sent],
            nows=nows, rate_seqs=rate_seqs, rate_scopes=rate_scopes, rate_tss=rate_tss,
            tenant_ids=[m.tenant_id for _, _, m, _ in sent],
            event_types=[e[0] for e in events], event_tss=[e[1] for e in events],
            descriptions=[e[2] for e in events], metadatas=[e[3] for e in events],
        )
        finished = {r["seq"] for r in found}
        if retry:
            earlier = await _q(c, "finished_sent_at", seqs=seqs, nows=nows)
            finished.update(r["seq"] for r in earlier)
        return finished

    async def _finish_other(
        self, c: Conn, owner: str, m: Claimed, outcome: Outcome, now: float
    ) -> bool:
        """Finish a row with a Deferred or Failed outcome (its event is added by the caller)."""
        now_int = int(now)
        base = {"owner": owner, "seq": m.seq, "now": now, "now_int": now_int}
        if isinstance(outcome, Deferred):
            queued = 1 if outcome.next_ts <= now_int else 2
            return bool(await _ex(c, "finish_deferred", **base, queued=queued,
                                  next_ts=outcome.next_ts, retry_count=outcome.retry_count))
        assert isinstance(outcome, Failed)
        status = "suppressed" if outcome.suppressed else "error"
        return bool(await _ex(c, "finish_failed", **base, status=status, error=outcome.error))

    async def renew(self, owner: str, claimed: Sequence[Claimed], until: float) -> None:
        seqs = [m.seq for m in claimed]
        await self._run(lambda c: _ex(c, "renew", until=until, seqs=seqs, owner=owner))

    async def release(self, owner: str, claimed: Sequence[Claimed], now: float) -> None:
        """Give unfinished claims back to the queue without counting a try (clean shutdown)."""
        seqs = [m.seq for m in claimed]
        await self._run(lambda c: _ex(c, "release", now=now, seqs=seqs, owner=owner))

    async def recover(self, now: float, retry_max: int, *, all_sending: bool = False) -> int:
        """Return lost claims to the queue, counting a try; give up after retry_max.

        Only expired leases unless all_sending; a row another transaction holds (its owner
        recording an outcome) is left alone.
        """

        async def op(c: Conn) -> int:
            found = (await _q(c, "all_sending") if all_sending
                     else await _q(c, "expired_leases", now=now))
            for seq, tenant_id, retry_count in found:
                if retry_count + 1 > retry_max:
                    await _fail(c, seq, tenant_id,
                                f"worker lost the message {retry_count + 1} times", None,
                                int(now))
                else:
                    await _ex(c, "requeue_lost", now=now, seq=seq)
            return len(found)

        return await self._run(op)

    async def prune(self, now: float) -> None:
        await self._run(lambda c: _ex(c, "prune_rate_sends", before=int(now) - 86400))

    # -- delivery reports --------------------------------------------------------------------

    async def pending_event_counts(self) -> dict[str, int]:
        """Unreported events per tenant (tenants without any are absent)."""
        found = await self._read(lambda c: _q(c, "pending_event_counts"))
        return {str(t): int(n) for t, n in found}

    async def pending_events(self, tenant_id: str, limit: int) -> list[Event]:
        """The tenant's oldest unreported events, in event order, with message id/account."""
        found = await self._read(
            lambda c: _q(c, "pending_events", tenant_id=tenant_id, limit=limit))
        return [rows.event_from_row(r) for r in found]

    async def ack_events(self, tenant_id: str, event_ids: Sequence[str], now: int) -> int:
        """Mark events reported (and their messages' reported_ts); returns events marked."""
        args = {"tenant_id": tenant_id, "now": now, "ids": [int(i) for i in event_ids]}

        async def op(c: Conn) -> int:
            await _val(c, "lock_tenant_acks", tenant_id=tenant_id)
            await _ex(c, "ack_messages", **args)
            return await _ex(c, "ack_events", **args)

        return await self._run(op)

    async def ack_all_events(self, tenant_id: str, now: int) -> int:
        """Mark every unreported event of a tenant reported (tenant without a target).

        Every instance's report loop calls this for such tenants; when another instance is
        acknowledging the tenant right now, this one leaves the work to it (0).
        """

        async def op(c: Conn) -> int:
            if not await _val(c, "try_lock_tenant_acks", tenant_id=tenant_id):
                return 0
            await _ex(c, "ack_tenant_messages", tenant_id=tenant_id, now=now)
            return await _ex(c, "ack_tenant_events", tenant_id=tenant_id, now=now)

        return await self._run(op)

    async def get_sync_state(self, tenant_id: str) -> SyncState:
        row = await self._read(lambda c: _q1(c, "get_sync", tenant_id=tenant_id))
        return SyncState(tenant_id) if row is None else rows.sync_from_row(row)

    async def list_sync_states(self) -> list[SyncState]:
        return [rows.sync_from_row(r) for r in await self._read(lambda c: _q(c, "list_sync"))]

    async def put_sync_state(self, state: SyncState) -> None:
        """Upsert the state; never touches the report lease."""
        data = rows.sync_to_row(state)
        for name in ("last_sync_ts", "next_sync_after"):  # bigint columns
            if data[name] is not None:
                data[name] = int(data[name])
        await self._run(lambda c: _ex(c, "put_sync", **data))

    async def acquire_report_lease(self, tenant_id: str, owner: str, now: float, until: float
                                   ) -> bool:
        """Take or renew the claim on a tenant's pending events; False if another owns it.

        One statement (INSERT ... ON CONFLICT DO UPDATE ... WHERE), so that of several
        instances asking at once exactly one gets a free or expired lease.
        """
        values = {"tenant_id": tenant_id, "owner": owner, "now": now, "until": until}
        return bool(await self._run(lambda c: _ex(c, "acquire_report_lease", **values)))

    async def release_report_lease(self, tenant_id: str, owner: str) -> None:
        await self._run(
            lambda c: _ex(c, "release_report_lease", tenant_id=tenant_id, owner=owner))

    async def purge_reported(self, before_ts: int, tenant_id: str | None = None) -> int:
        """Delete final messages fully acknowledged before before_ts, with their events.

        One transaction per chunk, so that a large purge holds its row locks briefly; rows
        another instance is purging at the same time are skipped (it deletes them).
        """

        async def chunk(c: Conn) -> int:
            found = await _q(c, "purge_candidates", before=before_ts, tenant_id=tenant_id,
                             chunk=_PURGE_CHUNK)
            seqs = [r["seq"] for r in found]
            if seqs:
                await _ex(c, "purge_events", seqs=seqs)
                await _ex(c, "purge_messages", seqs=seqs)
            return len(seqs)

        total = 0
        while True:
            removed = await self._run(chunk)
            total += removed
            if removed < _PURGE_CHUNK:
                return total

    # -- instance settings and command log ---------------------------------------------------

    async def get_instance(self) -> InstanceConfig:
        row = await self._read(lambda c: _q1(c, "get_instance"))
        return rows.instance_from_row(row, self._cipher)

    async def put_instance(self, config: InstanceConfig) -> None:
        data = rows.instance_to_row(config, self._cipher)
        data["bounce_enabled"] = bool(data["bounce_enabled"])
        data["bounce_imap_ssl"] = bool(data["bounce_imap_ssl"])
        data["now_text"] = rows.now_text()
        await self._run(lambda c: _ex(c, "put_instance", **data))

    async def log_commands(self, entries: Sequence[CommandEntry]) -> None:
        """Group commit, as for small enqueues: one row per REST command."""
        await self._commands.submit(entries)

    async def _insert_commands(self, entries: list[CommandEntry]) -> list[bool]:
        lines = rows.command_lines(entries)
        values = {"command_tss": [line[0] for line in lines],
                  "endpoints": [line[1] for line in lines],
                  "tenant_ids": [line[2] for line in lines],
                  "payloads": [line[3] for line in lines],
                  "statuses": [line[4] for line in lines]}
        if lines:
            await self._run(lambda c: _ex(c, "insert_commands", **values))
        return [True] * len(entries)

    async def list_commands(
        self, *, tenant_id: str | None, since_ts: int | None, until_ts: int | None,
        endpoint: str | None, limit: int, offset: int,
    ) -> tuple[int, list[CommandEntry]]:
        """Matching rows newest first, and the number of all matches."""
        where = {"tenant_id": tenant_id, "since_ts": since_ts, "until_ts": until_ts,
                 "endpoint": endpoint}

        async def op(c: Conn) -> tuple[int, list[Any]]:
            total = await _val(c, "count_commands", **where)
            found = await _q(c, "list_commands", **where, limit=limit, offset=offset)
            return int(total), found

        total, found = await self._run(op)
        return total, [rows.command_from_row(r) for r in found]

    async def export_commands(
        self, *, tenant_id: str | None, since_ts: int | None, until_ts: int | None
    ) -> list[CommandEntry]:
        """Successful (2xx) rows, oldest first."""
        found = await self._read(lambda c: _q(c, "export_commands", tenant_id=tenant_id,
                                              since_ts=since_ts, until_ts=until_ts))
        return [rows.command_from_row(r) for r in found]

    async def prune_commands(self, before_ts: int) -> int:
        return await self._run(lambda c: _ex(c, "prune_commands", before=before_ts))


@dataclass(frozen=True, slots=True)
class _Plan:
    """One account to serve in a claim cycle, with its rate scopes and limits."""

    account: Account
    scopes: tuple[claimplan.Scope, ...]


def _block_key(account: Account) -> str:
    return f"rate_block:{account.tenant_id}/{account.id}"


def _plan(row: Any) -> _Plan:
    account = rows.account_config(row["tenant_id"], row["id"], json.loads(row["config"]))
    tenant_limits = rows.tenant_limits(json.loads(row["tenant_config"]))
    return _Plan(account, claimplan.rate_scopes(account, tenant_limits))


class _Claim:
    """One claim cycle: gathers the inputs of claimplan and applies its steps.

    Accounts without limits are claimed together (one LATERAL query per run of them), by a
    statement of its own when no account has limits; otherwise the whole cycle is one
    transaction and an account under a rate limit is claimed alone, while that transaction
    holds the advisory locks of its scopes, so that no other instance can spend the same
    budget.
    An account deferred for a full window is recorded in meta ("rate_block:t/a"), so that
    every instance skips it until the window frees, as the deferring worker does: one
    deferred event per full window, however many instances run.
    """

    def __init__(
        self, store: PostgresStore, owner: str, now: float, lease_seconds: float,
        max_total: int, skip: frozenset[tuple[str, str]],
    ) -> None:
        self.store = store
        self.owner = owner
        self.now = now
        self.now_int = int(now)
        self.lease_seconds = lease_seconds
        self.max_total = max_total
        self.skip = skip
        self.claimed: list[Claimed] = []
        self.blocked: dict[tuple[str, str], int] = {}
        self.limited: list[RateLimited] = []

    async def plans(self, c: Conn, offset: int) -> list[_Plan]:
        """The accounts to claim for, rotated by offset so that none is always last."""
        plans = [p for p in map(_plan, await _q(c, "claim_accounts"))
                 if p.account.key not in self.skip]
        return claimplan.rotate(plans, offset)

    async def run(self, c: Conn, plans: list[_Plan], *, adopt: bool = False) -> ClaimBatch:
        self.claimed, self.blocked, self.limited = [], {}, []
        if adopt:  # a retry: rows an earlier attempt took, if it committed
            got = await _q(c, "claimed_by", owner=self.owner,
                           until=self.now + self.lease_seconds)
            self.claimed.extend(_claimed(r, ()) for r in got)
        scopes = sorted({s.name for p in plans for s in p.scopes})
        if scopes:
            await _val(c, "lock_scopes", scopes=scopes)
            plans = await self._unblocked(c, plans)
        run: list[_Plan] = []
        for plan in plans:
            if not plan.scopes:
                run.append(plan)
                continue
            await self._claim_free(c, run)
            run = []
            if self.max_total - len(self.claimed) <= 0:
                break
            await self._claim_limited(c, plan)
        await self._claim_free(c, run)
        return ClaimBatch(tuple(self.claimed), self.blocked, tuple(self.limited))

    async def _unblocked(self, c: Conn, plans: list[_Plan]) -> list[_Plan]:
        """Drop (and report as blocked) the accounts another instance found over a limit."""
        keys = [_block_key(p.account) for p in plans if p.scopes]
        blocks = {r["key"]: r["until"] for r in await _q(c, "rate_blocks", keys=keys)}
        kept = []
        for plan in plans:
            until = blocks.get(_block_key(plan.account))
            if until is not None and until > self.now_int:
                self.blocked[plan.account.key] = until
            else:
                kept.append(plan)
        return kept

    async def _take(self, c: Conn, wanted: Sequence[tuple[Account, int]], scopes: tuple[str, ...]
                    ) -> None:
        remaining = self.max_total - len(self.claimed)
        wanted = [(a, n) for a, n in wanted if n > 0]
        if remaining <= 0 or not wanted:
            return
        got = await _q(
            c, "claim", owner=self.owner, until=self.now + self.lease_seconds, now=self.now,
            now_int=self.now_int, tenant_ids=[a.tenant_id for a, _ in wanted],
            account_ids=[a.id for a, _ in wanted], ns=[min(n, remaining) for _, n in wanted],
            max_total=remaining,
        )
        order = {a.key: i for i, (a, _) in enumerate(wanted)}
        got.sort(key=lambda r: (order[(r["tenant_id"], r["account_id"])], r["priority"],
                                r["seq"]))
        self.claimed.extend(_claimed(r, scopes) for r in got)

    async def _claim_free(self, c: Conn, run: Sequence[_Plan]) -> None:
        await self._take(c, [(p.account, p.account.batch_size) for p in run], ())

    async def _claim_limited(self, c: Conn, plan: _Plan) -> None:
        account = plan.account
        step = claimplan.take(account, await self._budget(c, plan),
                              self.max_total - len(self.claimed))
        if step.heads:
            await self._over_limit(c, account, step)
        await self._take(c, [(account, step.n)], claimplan.scope_names(plan.scopes))

    async def _budget(self, c: Conn, plan: _Plan) -> policy.Budget:
        """Gather each scope's usage; in-flight is read before sends (never undercounts)."""
        account = plan.account
        usages = []
        since = self.now_int - claimplan.SENDS_HORIZON
        for scope in plan.scopes:
            if scope.tenant_wide:
                in_flight = await _val(c, "count_sending_tenant", tenant_id=account.tenant_id)
            else:
                in_flight = await _val(c, "count_sending_account", tenant_id=account.tenant_id,
                                       account_id=account.id)
            sends = [(r["ts"], r["n"]) for r in await _q(c, "rate_sends", scope=scope.name,
                                                          since=since)]
            usages.append(claimplan.Usage(scope, sends, int(in_flight)))
        return claimplan.budget(usages, self.now_int)

    async def _over_limit(self, c: Conn, account: Account, step: claimplan.Take) -> None:
        """Read the due heads and apply what the planner decides for those over the limit."""
        heads = await _q(c, "ready_head", tenant_id=account.tenant_id, account_id=account.id,
                         n=step.heads)
        verdict = claimplan.over_limit(account, step, [r["seq"] for r in heads])
        for seq in verdict.reject:
            await _fail(c, seq, account.tenant_id, verdict.reason, verdict.code, self.now_int)
        if verdict.defer is not None:
            seq, until = verdict.defer, verdict.until
            await _ex(c, "defer_rate_limited", until=until, now=self.now, seq=seq)
            await _ex(c, "insert_event", seq=seq, tenant_id=account.tenant_id,
                      event_type="deferred", event_ts=self.now_int,
                      description=claimplan.DEFER_REASON,
                      metadata=rows.dumps({"next_attempt_ts": until}))
            await _ex(c, "set_meta", key=_block_key(account), value=str(until))
            self.blocked[account.key] = until
        self.limited.extend(verdict.limited(account))


async def _fail(c: Conn, seq: int, tenant_id: str, error: str, code: int | None, now: int
                ) -> None:
    """Fail a message for good, with its error event."""
    await _ex(c, "fail_message", status="error", error=error, now_int=now,
              now=float(now), seq=seq)
    await _ex(c, "insert_event", seq=seq, tenant_id=tenant_id, event_type="error",
              event_ts=now, description=error, metadata=rows.dumps({"error_code": code}))


def _claimed(r: Any, scopes: tuple[str, ...]) -> Claimed:
    payload = json.loads(r["payload"])
    return Claimed(
        pk=r["pk"], tenant_id=r["tenant_id"], id=r["client_id"], account_id=r["account_id"],
        priority=r["priority"], retry_count=r["retry_count"], created_ts=r["created_ts"],
        date_ts=r["date_ts"], payload=payload, raw=r["raw"],
        content=rows.content_from_row(r["content"], payload, r["envelope_from"]),
        seq=r["seq"], envelope_from=r["envelope_from"], rate_scopes=scopes,
    )
