"""Dashboard use cases: what a signed-in admin or tenant may see and do.

Scope is decided here, not in the views: a tenant session's filters are pinned to its own
tenant, and an object of another tenant reads as missing. Changes go through MailService
where it has the use case (suspend/activate) and are written to the command log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mailproxy.bounces.model import BounceView, SuppressionView
from mailproxy.dashboard.port import (
    CANCELLABLE,
    RETRYABLE,
    STATUSES,
    ActionResult,
    BounceSource,
    Cursor,
    DashboardStore,
    Filter,
    MessageDetail,
    Page,
)
from mailproxy.dashboard.query import QueryError, parse
from mailproxy.errors import Conflict, InvalidRequest, NotFound
from mailproxy.model import RateLimits, Tenant
from mailproxy.service import Caller, MailService

ACTIONS = ("retry", "cancel")
PAGE_SIZE = 50
SCAN_WINDOW = 5000  # messages one page request may look at (column filters only)
TEXT_SCAN_WINDOW = 1000  # the same when it must read payloads (to:, from:, free text)
MAINTAIN_EVERY = 600  # seconds between counter folds / rollup pruning
WINDOWS = (("minute", 60), ("hour", 3600), ("day", 86400))


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: str
    up: bool


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant_id: str
    name: str
    active: bool
    suspended: tuple[str, ...]
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Overview:
    counts: dict[str, int]
    tenants: tuple[TenantRow, ...]
    minutes: tuple[tuple[int, int, int, int], ...]  # (minute, sent, error, deferred)
    oldest_waiting_ts: float | None
    listeners: tuple[Listener, ...]
    worker_active: bool


@dataclass(frozen=True, slots=True)
class WindowUse:
    label: str
    used: int | None  # None: not counted (an account without any limit)
    limit: int | None

    @property
    def full(self) -> bool:
        return self.limit is not None and (self.used or 0) >= self.limit

    @property
    def ratio(self) -> float:
        if not self.limit:
            return 0.0
        return min(1.0, (self.used or 0) / self.limit)


@dataclass(frozen=True, slots=True)
class RateRow:
    tenant_id: str
    account_id: str | None  # None: the tenant's own limits
    windows: tuple[WindowUse, ...]
    waiting: int


@dataclass
class Dashboard:
    store: DashboardStore
    service: MailService
    bounces: BounceSource
    listeners: Callable[[], Sequence[Listener]] = lambda: ()
    worker_active: Callable[[], bool] = lambda: True
    _maintained: int = 0

    def now(self) -> int:
        return int(self.service.clock.now())

    # -- overview ----------------------------------------------------------------------------

    async def _maintain(self, now: int) -> None:
        """Fold counter shards, prune old minutes (and analyze a fresh database), at most
        every MAINTAIN_EVERY seconds, on the first page of a session onwards."""
        if now - self._maintained >= MAINTAIN_EVERY:
            self._maintained = now
            await self.store.maintain(now)

    async def overview(self, caller: Caller) -> Overview:
        now = self.now()
        await self._maintain(now)
        per_tenant = await self.store.status_counts(caller.tenant_id, now)
        totals = dict.fromkeys(STATUSES, 0)
        for counts in per_tenant.values():
            for status, n in counts.items():
                totals[status] = totals.get(status, 0) + n
        oldest = await self.store.oldest_waiting(caller.tenant_id, now)
        return Overview(
            counts=totals,
            tenants=tuple(await self._tenant_rows(caller, per_tenant)),
            minutes=tuple(await self._minutes(caller.tenant_id, now)),
            oldest_waiting_ts=oldest,
            listeners=tuple(self.listeners()), worker_active=self.worker_active(),
        )

    async def _tenant_rows(self, caller: Caller, per_tenant: dict[str, dict[str, int]]
                           ) -> list[TenantRow]:
        rows = []
        for tenant in await self._tenants(caller):
            counts = {s: per_tenant.get(tenant.id, {}).get(s, 0) for s in STATUSES}
            rows.append(TenantRow(tenant.id, tenant.name or tenant.id, tenant.active,
                                  tenant.suspended_batches, counts))
        return rows

    async def _tenants(self, caller: Caller) -> list[Tenant]:
        return await self.service.visible_tenants(caller)

    async def _minutes(self, tenant_id: str | None, now: int
                       ) -> list[tuple[int, int, int, int]]:
        first = now // 60 * 60 - 59 * 60
        found: dict[int, dict[str, int]] = {first + 60 * i: {} for i in range(60)}
        for item in await self.store.minute_counts(tenant_id, first):
            if item.minute in found:
                bucket = found[item.minute]
                bucket[item.kind] = bucket.get(item.kind, 0) + item.n
        return [(m, c.get("sent", 0), c.get("error", 0), c.get("deferred", 0))
                for m, c in sorted(found.items())]

    # -- queue -------------------------------------------------------------------------------

    def filter_for(self, caller: Caller, text: str) -> Filter:
        """The query box, parsed and pinned to the caller's scope (QueryError if invalid)."""
        flt = parse(text)
        if caller.admin:
            return flt
        if flt.tenant_id is not None and flt.tenant_id != caller.tenant_id:
            raise QueryError("tenant: this session sees only its own tenant")
        return replace(flt, tenant_id=caller.tenant_id)

    async def queue(self, caller: Caller, text: str, cursor: str | None) -> tuple[Filter, Page]:
        flt = self.filter_for(caller, text)
        await self._maintain(self.now())
        reads_payload = bool(flt.to or flt.sender or flt.text)
        page = await self.store.page(flt, self.now(), Cursor.decode(cursor), PAGE_SIZE,
                                     TEXT_SCAN_WINDOW if reads_payload else SCAN_WINDOW)
        return flt, page

    async def message(self, caller: Caller, pk: str) -> MessageDetail:
        detail = await self.store.message(pk, self.now())
        if detail is None or not self._sees(caller, detail.row.tenant_id):
            raise NotFound("message not found")
        return detail

    @staticmethod
    def _sees(caller: Caller, tenant_id: str) -> bool:
        return caller.admin or caller.tenant_id == tenant_id

    # -- actions -----------------------------------------------------------------------------

    async def act_on_message(self, caller: Caller, pk: str, action: str) -> ActionResult:
        detail = await self.message(caller, pk)
        flt = Filter(tenant_id=detail.row.tenant_id, pk=pk)
        result = await self._act(flt, action, None)
        if result.changed == 0:
            allowed = RETRYABLE if action == "retry" else CANCELLABLE
            raise InvalidRequest(f"cannot {action} a message that is {detail.row.status} "
                                 f"(only {', '.join(allowed)})")
        await self._log(caller, f"/ui/messages/{pk}/{action}", detail.row.tenant_id,
                        {"pk": pk, "action": action})
        return result

    async def bulk_count(self, caller: Caller, text: str, action: str) -> int:
        _check_action(action)
        return await self.store.count_actionable(self.filter_for(caller, text), action,
                                                 self.now())

    async def bulk(self, caller: Caller, text: str, action: str, expected: int
                   ) -> ActionResult:
        """Act on every message matching the filter, if the count is still the confirmed one."""
        flt = self.filter_for(caller, text)
        result = await self._act(flt, action, expected)
        await self._log(caller, "/ui/queue/bulk", flt.tenant_id,
                        {"action": action, "query": text, "count": result.changed})
        return result

    async def _act(self, flt: Filter, action: str, expected: int | None) -> ActionResult:
        _check_action(action)
        result = await self.store.act(flt, action, self.now(), expected)
        if expected is not None and result.matched != expected:
            raise Conflict(f"{result.matched} messages match now, not {expected}; "
                           "confirm the new count")
        if result.changed:
            if action == "retry":
                self.service.waker.wake()
            if action == "cancel":
                self.service.wake_reports()
        return result

    async def suspend(self, caller: Caller, tenant_id: str, batch: str | None,
                      suspend: bool) -> list[str]:
        action = self.service.suspend if suspend else self.service.activate
        batches, _pending = await action(caller, tenant_id, batch)
        path = "/commands/suspend" if suspend else "/commands/activate"
        await self._log(caller, path, tenant_id, {"tenant_id": tenant_id, "batch_code": batch})
        return batches

    async def _log(self, caller: Caller, path: str, tenant_id: str | None,
                   payload: dict[str, Any]) -> None:
        await self.service.record_command("POST", path, caller.tenant_id or tenant_id,
                                          {**payload, "via": "dashboard"}, 200)

    # -- rate usage --------------------------------------------------------------------------

    async def rates(self, caller: Caller) -> list[RateRow]:
        """Sliding-window use (§9.5) where a limit is set; a tenant without limits shows
        its sends from the per-minute counts instead (whole minutes, so approximate)."""
        now = self.now()
        plan: list[tuple[str, str | None, RateLimits]] = []
        for tenant, accounts in await self.service.tenants_with_accounts(caller):
            plan.append((tenant.id, None, tenant.rate_limits or RateLimits()))
            plan.extend((tenant.id, account.id, account.limits) for account in accounts)
        scopes = [_scope(t, a) for t, a, _ in plan]
        used = await self.store.rate_use(scopes, now)
        rows = []
        for (tenant_id, account_id, limits), scope in zip(plan, scopes, strict=True):
            counts: tuple[int | None, ...] = used.get(scope, (0, 0, 0))
            if not limits.windows():
                counts = (await self._sent_by_minute(tenant_id, now) if account_id is None
                          else (None, None, None))
            windows = tuple(WindowUse(label, n, _limit(limits, seconds))
                            for (label, seconds), n in zip(WINDOWS, counts, strict=True))
            waiting = 0
            if account_id is not None and any(w.full for w in windows):
                waiting = await self.store.waiting_of_account(tenant_id, account_id)
            rows.append(RateRow(tenant_id, account_id, windows, waiting))
        _sum_tenant_waiting(rows)
        return rows

    async def _sent_by_minute(self, tenant_id: str, now: int) -> tuple[int, int, int]:
        found = await self.store.minute_counts(tenant_id, now - 86400)
        sent = [m for m in found if m.kind == "sent"]

        def within(seconds: int) -> int:
            return sum(m.n for m in sent if m.minute > now - seconds - 60)

        return within(60), within(3600), within(86400)

    # -- bounces -----------------------------------------------------------------------------

    async def bounce_page(self, caller: Caller
                          ) -> tuple[list[BounceView], list[SuppressionView]]:
        tenants = [t.id for t in await self._tenants(caller)]
        return (await self.bounces.recent_bounces(caller, 100),
                await self.bounces.suppressions(caller, tenants, 200))

    async def change_suppression(self, caller: Caller, tenant_id: str, address: str,
                                 add: bool, reason: str | None = None) -> int:
        """Add or remove one address; the bounce use case checks scope and the address."""
        if not self.bounces.available:
            raise InvalidRequest("suppressions are not available in this build")
        if add:
            changed = await self.bounces.add_suppression(caller, tenant_id, address, reason)
        else:
            changed = await self.bounces.remove_suppression(caller, tenant_id, address)
        verb = "POST" if add else "DELETE"
        await self.service.record_command(
            verb, f"/tenant/{tenant_id}/suppressions", tenant_id,
            {"addresses": [address], "reason": reason, "via": "dashboard"}, 200)
        return changed


def _check_action(action: str) -> None:
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}")


def _scope(tenant_id: str, account_id: str | None) -> str:
    """The rate_sends scope key of the store (§9.5)."""
    return f"t:{tenant_id}" if account_id is None else f"a:{tenant_id}/{account_id}"


def _limit(limits: RateLimits, seconds: int) -> int | None:
    for window, n in limits.windows():
        if window == seconds:
            return n
    return None


def _sum_tenant_waiting(rows: list[RateRow]) -> None:
    """A tenant row waits on whatever its accounts wait on."""
    for i, row in enumerate(rows):
        if row.account_id is None:
            total = sum(r.waiting for r in rows if r.tenant_id == row.tenant_id
                        and r.account_id is not None)
            rows[i] = replace(row, waiting=total)
