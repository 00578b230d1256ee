"""Tenants and accounts as intake reads them on every add-messages call, kept briefly.

A single enqueue used to read its tenant and the tenant's accounts from the store on each
request: two trips to the database thread, about a third of the event loop's time per
request (issue 16). Only facts that exist are kept, for at most RECHECK_SECONDS, and all of
them are dropped on any tenant or account change: this instance's own (the service calls
changed()) and, on PostgreSQL, another instance's (the store's change notification). A
tenant or account that is not found is never taken from here: it is read again, so that one
created a moment ago on another instance is never refused for a stale miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from mailproxy.model import Account, Tenant
from mailproxy.ports import Clock, DirectoryReader

RECHECK_SECONDS = 2.0
MAX_TENANTS = 10_000  # past this many, the cache starts over (a bound, not an LRU)

T = TypeVar("T")


@dataclass
class DirectoryCache:
    store: DirectoryReader
    clock: Clock
    _tenants: dict[str, tuple[float, Tenant]] = field(default_factory=dict)
    _accounts: dict[str, tuple[float, dict[str, Account]]] = field(default_factory=dict)
    _generation: int = 0  # bumped by every change: a read begun before one is not kept

    def changed(self) -> None:
        self._generation += 1
        self._tenants.clear()
        self._accounts.clear()

    async def tenant(self, tenant_id: str) -> Tenant | None:
        now = self.clock.now()
        hit = self._tenants.get(tenant_id)
        if hit is not None and now - hit[0] < RECHECK_SECONDS:
            return hit[1]
        generation = self._generation
        tenant = await self.store.get_tenant(tenant_id)
        if tenant is not None:
            self._keep(self._tenants, tenant_id, tenant, now, generation)
        return tenant

    async def account(self, tenant_id: str, account_id: str) -> Account | None:
        """The tenant's account, from a kept list of them when it is there, else read."""
        now = self.clock.now()
        hit = self._accounts.get(tenant_id)
        if hit is not None and now - hit[0] < RECHECK_SECONDS and account_id in hit[1]:
            return hit[1][account_id]
        generation = self._generation
        accounts = {a.id: a for a in await self.store.list_accounts(tenant_id)}
        self._keep(self._accounts, tenant_id, accounts, now, generation)
        return accounts.get(account_id)

    def _keep(self, table: dict[str, tuple[float, T]], key: str, value: T, now: float,
              generation: int) -> None:
        """Keep what a read found, unless a change came while it ran."""
        if generation != self._generation:
            return
        if len(table) >= MAX_TENANTS:
            table.clear()
        table[key] = (now, value)
