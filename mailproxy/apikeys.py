"""Tenant API keys: whose key a presented token is."""

from __future__ import annotations

from mailproxy.model import Tenant
from mailproxy.ports import TenantReader
from mailproxy.tokens import hash_token, same


async def tenant_for_token(tenants: TenantReader, token: str, now: float) -> Tenant | None:
    """The tenant whose current, unexpired API key is `token` (admin token excluded)."""
    digest = hash_token(token)
    tenant = await tenants.tenant_by_key_hash(digest)
    if tenant is None or tenant.api_key_hash is None:
        return None
    if not same(tenant.api_key_hash, digest):
        return None
    expires = tenant.api_key_expires_at
    if expires is not None and expires <= now:
        return None
    return tenant
