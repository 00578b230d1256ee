"""The bounce page's data through the bounce use cases of mailproxy.bounces (issue 14)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailproxy.bounces.model import BounceView, SuppressionView
from mailproxy.bounces.service import BounceService
from mailproxy.service import Caller


@dataclass
class ServiceBounces:
    """BounceSource over BounceService: its scope checks apply to every call."""

    service: BounceService
    available: bool = True

    async def recent_bounces(self, caller: Caller, limit: int) -> list[BounceView]:
        return await self.service.list_bounces(caller, None, limit=limit)

    async def suppressions(self, caller: Caller, tenant_ids: Sequence[str], limit: int
                           ) -> list[SuppressionView]:
        """Newest first across the tenants the caller sees (one listing per tenant)."""
        found: list[SuppressionView] = []
        for tenant_id in tenant_ids:
            page = await self.service.list_suppressions(caller, tenant_id, limit=limit)
            found.extend(page.items)
        found.sort(key=lambda s: (-s.created_ts, s.tenant_id, s.address))
        return found[:limit]

    async def add_suppression(self, caller: Caller, tenant_id: str, address: str,
                              reason: str | None) -> int:
        return await self.service.add_suppressions(caller, tenant_id, [address], reason)

    async def remove_suppression(self, caller: Caller, tenant_id: str, address: str) -> int:
        return await self.service.remove_suppressions(caller, tenant_id, [address])
