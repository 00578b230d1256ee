"""Delivery-report pusher (§8): sends unreported events to each tenant, with per-tenant backoff.

Each tenant is served by its own task under a store lease, so a tenant that hangs or fails
never delays another's reports; at most `concurrency` tenants are called at once, and calls
to one tenant are sequential. The decisions (what is due, what a reply means) live in
mailproxy.sync; this module only does the I/O and the scheduling.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from mailproxy import __version__, sync
from mailproxy.errors import StoreError
from mailproxy.model import Event, SyncState, Tenant
from mailproxy.netguard import AddressRefused, AllowList, GuardedResolver, check_literal
from mailproxy.policy import report_backoff
from mailproxy.ports import AuditPruning, Clock, ReportLog, TenantReader

log = logging.getLogger("mailproxy.reports")

USER_AGENT = f"mailproxy/{__version__}"


class ReporterStore(ReportLog, TenantReader, AuditPruning, Protocol):
    """The report log, the tenants it reports to, and the command log it prunes."""


class ReportObserver(Protocol):
    """Told the outcome of every report POST; mailproxy.metrics.Metrics implements it."""

    def report_sent(self, tenant_id: str) -> None: ...

    def report_failed(self, tenant_id: str) -> None: ...


class NullReportObserver:
    def report_sent(self, tenant_id: str) -> None:
        return None

    def report_failed(self, tenant_id: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ReporterSettings:
    owner: str
    rules: sync.SyncRules = field(default_factory=sync.SyncRules)
    timeout: float = 30.0
    concurrency: int = 8
    retention_seconds: int = 604800
    command_log_days: int = 90
    allow_private: AllowList = field(default_factory=AllowList)
    wake_delay: float = 1.0
    max_sleep: float = 5.0
    retention_interval: float = 3600.0


@dataclass(frozen=True, slots=True)
class CallResult:
    ok: bool
    error: str | None = None
    reply: Any = None


class Reporter:
    def __init__(self, store: ReporterStore, clock: Clock, settings: ReporterSettings,
                 rng: random.Random | None = None,
                 observer: ReportObserver | None = None) -> None:
        self._store = store
        self._observer = observer or NullReportObserver()
        self._clock = clock
        self._s = settings
        self._rng = rng or random.Random()
        self._event = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._forced: set[str] = set()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._open: aiohttp.ClientSession | None = None
        self._guarded: aiohttp.ClientSession | None = None
        self._stopping = False
        self._deadline = 0.0

    # -- control -----------------------------------------------------------------------------

    def wake(self) -> None:
        """New events exist: run a pass about `wake_delay` from now (bursts coalesce)."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._event.set()
            return
        self._timer = loop.call_later(self._s.wake_delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._event.set()

    def run_now(self, tenant_id: str | None) -> None:
        """Pass now; a named tenant gets a call even with nothing to report."""
        if tenant_id is not None:
            self._forced.add(tenant_id)
        self._event.set()

    async def start(self) -> None:
        self._open = aiohttp.ClientSession(trust_env=False)
        self._guarded = aiohttp.ClientSession(
            trust_env=False,
            connector=aiohttp.TCPConnector(resolver=GuardedResolver(self._s.allow_private),
                                           use_dns_cache=False),
        )
        self._tasks = [asyncio.create_task(self._run(), name="reports"),
                       asyncio.create_task(self._housekeeping(), name="retention")]

    async def stop(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        for task in [*self._tasks, *self._active.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._active.values(), return_exceptions=True)
        for session in (self._open, self._guarded):
            if session is not None:
                await session.close()

    # -- loops -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.cycle()
            except StoreError as exc:
                log.warning("report pass failed: %s", exc)
            except Exception:
                log.exception("report pass failed")
            wait = min(self._s.max_sleep, max(0.05, self._deadline - self._clock.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), wait)
            self._event.clear()

    async def _housekeeping(self) -> None:
        while not self._stopping:
            try:
                await self.purge()
            except StoreError as exc:
                log.warning("retention pass failed: %s", exc)
            await asyncio.sleep(self._s.retention_interval)

    async def purge(self) -> int:
        """Retention (§8.7) and command-log retention; returns the messages purged."""
        now = int(self._clock.now())
        removed = await self._store.purge_reported(now - self._s.retention_seconds)
        await self._store.prune_commands(now - self._s.command_log_days * 86400)
        if removed:
            log.info("retention purged %d reported messages", removed)
        return removed

    async def sync_once(self) -> None:
        """One full pass, waiting for every tenant call it starts (tests, CLI)."""
        await self.settle()
        await self.cycle()
        await self.settle()

    async def settle(self) -> None:
        while self._active:
            await asyncio.gather(*self._active.values(), return_exceptions=True)

    async def cycle(self) -> None:
        """Start a task for every tenant that is owed a call and has none running."""
        now = self._clock.now()
        forced, self._forced = self._forced, set()
        states = {s.tenant_id: s for s in await self._store.list_sync_states()}
        pending = await self._store.pending_event_counts()
        deadline = now + self._s.max_sleep
        for tenant in await self._store.list_tenants():
            state = states.get(tenant.id) or SyncState(tenant.id)
            target = sync.target_of(tenant, self._s.rules)
            count = pending.get(tenant.id, 0)
            if target is None:
                if count:  # nowhere to report: nothing may wait forever
                    await self._store.ack_all_events(tenant.id, int(now))
                continue
            if tenant.id in self._active:
                self._forced.update(forced & {tenant.id})
                continue
            is_forced = tenant.id in forced
            if sync.call_due(tenant, state, count, now, self._s.rules, forced=is_forced):
                self._spawn(tenant, target, is_forced)
            else:
                deadline = min(deadline, self._next_time(tenant, state, count))
        self._deadline = deadline

    def _next_time(self, tenant: Tenant, state: SyncState, pending: int) -> float:
        if pending and state.retry_at is not None:
            return state.retry_at
        at = sync.next_heartbeat_ts(tenant, state, self._s.rules)
        return float("inf") if at is None else at

    def _spawn(self, tenant: Tenant, target: sync.Target, forced: bool) -> None:
        task = asyncio.create_task(self._serve(tenant, target, forced),
                                   name=f"report:{tenant.id}")
        self._active[tenant.id] = task
        task.add_done_callback(lambda _t: self._done(tenant.id))

    def _done(self, tenant_id: str) -> None:
        self._active.pop(tenant_id, None)
        self._event.set()  # re-evaluate: more events, resync, or a retry may be owed

    # -- one tenant --------------------------------------------------------------------------

    async def _serve(self, tenant: Tenant, target: sync.Target, forced: bool) -> None:
        async with self._slots:
            now = self._clock.now()
            until = now + self._s.timeout + 60
            try:
                if not await self._store.acquire_report_lease(tenant.id, self._s.owner, now,
                                                              until):
                    return  # another process reports this tenant right now
                try:
                    await self._report(tenant, target, forced)
                finally:
                    await self._store.release_report_lease(tenant.id, self._s.owner)
            except StoreError as exc:
                log.warning("reporting to tenant %s stopped: %s", tenant.id, exc)
            except Exception:
                log.exception("reporting to tenant %s failed unexpectedly", tenant.id)

    async def _report(self, tenant: Tenant, target: sync.Target, forced: bool) -> None:
        """Post batches of at most 1000 events, in order, until none is left or one fails."""
        state = await self._store.get_sync_state(tenant.id)
        events = await self._store.pending_events(tenant.id, sync.MAX_ITEMS)
        if not sync.call_due(tenant, state, len(events), self._clock.now(), self._s.rules,
                             forced=forced):
            return
        while True:
            now = self._clock.now()
            await self._store.acquire_report_lease(tenant.id, self._s.owner, now,
                                                   now + self._s.timeout + 60)
            result = await self._call(target, [sync.report_item(e) for e in events if e.pk],
                                      now)
            self._observe(tenant.id, result)
            state = await self._settle_call(tenant, state, events, result, now)
            if not result.ok or len(events) < sync.MAX_ITEMS:
                return
            events = await self._store.pending_events(tenant.id, sync.MAX_ITEMS)
            if not events:
                return

    def _observe(self, tenant_id: str, result: CallResult) -> None:
        try:
            if result.ok:
                self._observer.report_sent(tenant_id)
            else:
                self._observer.report_failed(tenant_id)
        except Exception as exc:  # an observer never stops reporting
            log.warning("report observer failed: %s", exc)

    async def _settle_call(self, tenant: Tenant, state: SyncState, events: Sequence[Event],
                           result: CallResult, now: float) -> SyncState:
        if result.ok:
            if events:
                await self._store.ack_events(tenant.id, [e.event_id for e in events], int(now))
            reply = sync.parse_reply(result.reply, now)
            if reply.error_ids or reply.not_found_ids:
                log.info("tenant %s reported errors for %s, not found %s", tenant.id,
                         list(reply.error_ids), list(reply.not_found_ids))
            state = sync.after_success(state, now, reply, self._s.rules)
        else:
            delay = report_backoff(state.consecutive_failures + 1, self._rng)
            state = sync.after_failure(state, now, result.error or "failed", delay)
            log.warning("report to tenant %s failed (%s); next try in %.0f s", tenant.id,
                        state.last_error, delay)
        await self._store.put_sync_state(state)
        return state

    async def _call(self, target: sync.Target, items: list[dict[str, Any]], now: float
                    ) -> CallResult:
        body = json.dumps({"delivery_report": items}, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")
        headers = request_headers(target, body, int(now))
        session = self._guarded if target.restricted else self._open
        assert session is not None, "reporter not started"
        try:
            if target.restricted:
                check_literal(urlsplit(target.url).hostname or "", self._s.allow_private)
            async with session.post(
                target.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._s.timeout),
            ) as resp:
                payload = await resp.read()
                if not 200 <= resp.status < 300:
                    return CallResult(False, f"HTTP {resp.status}")
        except AddressRefused as exc:
            return CallResult(False, str(exc))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                return CallResult(False, str(exc.os_error))
            return CallResult(False, f"connection failed: {exc}")
        except TimeoutError:
            return CallResult(False, f"timeout after {self._s.timeout:g} s")
        except aiohttp.ClientError as exc:
            return CallResult(False, f"connection failed: {exc}")
        return CallResult(True, reply=_json_or_none(payload))


def request_headers(target: sync.Target, body: bytes, t: int) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    auth = target.auth
    if auth.method == "bearer" and auth.token:
        headers["Authorization"] = f"Bearer {auth.token}"
    elif auth.method == "basic" and auth.user is not None:
        pair = f"{auth.user}:{auth.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    if target.secret:
        headers["X-Mail-Proxy-Signature"] = f"t={t},v1={signature(target.secret, t, body)}"
    return headers


def signature(secret: str, t: int, body: bytes) -> str:
    """§8.4: lowercase hex HMAC-SHA256 of "<t>.<body>" keyed with the secret."""
    message = str(t).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _json_or_none(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None
