"""The worker's Preparer: fetch a claimed message's attachments, apply the tenant's
large-file policy, and hand the worker what compose needs (§9.3 step 2)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from mailproxy import intake
from mailproxy.attachments.fetch import Fetched, Fetcher
from mailproxy.attachments.names import FetchError
from mailproxy.errors import PermanentFailure, TemporaryFailure
from mailproxy.model import Attachment, Claimed, ClientAuth, Content, Prepared, Tenant

log = logging.getLogger("mailproxy.attachments")

TENANT_CACHE_SECONDS = 10.0
AuthOpener = Callable[[Mapping[str, Any]], ClientAuth]
TenantLookup = Callable[[str], Awaitable[Tenant | None]]


class Offload(Protocol):
    """The large-file policy (§11), applied after fetching; see mailproxy.offload."""

    async def structured(self, message: Claimed, tenant: Tenant, content: Content,
                         files: Sequence[Fetched]) -> Prepared: ...

    async def raw(self, message: Claimed, tenant: Tenant, raw: bytes) -> bytes | None: ...


class MessagePreparer:
    def __init__(self, fetcher: Fetcher, tenants: TenantLookup, open_auth: AuthOpener,
                 offload: Offload | None = None) -> None:
        self._fetcher = fetcher
        self._tenants = tenants
        self._open_auth = open_auth
        self.offload = offload
        self._cache: dict[str, tuple[float, Tenant | None]] = {}

    async def _tenant(self, tenant_id: str) -> Tenant:
        now = time.monotonic()
        cached = self._cache.get(tenant_id)
        if cached is None or now - cached[0] > TENANT_CACHE_SECONDS:
            cached = (now, await self._tenants(tenant_id))
            self._cache[tenant_id] = cached
        if cached[1] is None:
            raise PermanentFailure("tenant deleted")
        return cached[1]

    async def prepare(self, message: Claimed) -> Prepared | None:
        if message.raw is not None:
            if self.offload is None:
                return None
            tenant = await self._tenant(message.tenant_id)
            rewritten = await self.offload.raw(message, tenant, message.raw)
            return None if rewritten is None else Prepared(raw=rewritten)
        attachments = message.payload.get("attachments")
        if not attachments:
            return None  # the common case: nothing to fetch, no tenant lookup
        try:
            content = intake.content_of(message.payload)
        except intake.Rejected as exc:
            raise PermanentFailure(str(exc)) from None
        tenant = await self._tenant(message.tenant_id)
        files = await self._fetch_all(message, tenant, content.attachments, attachments)
        if self.offload is not None:
            return await self.offload.structured(message, tenant, content, files)
        return Prepared(attachments=tuple((f.filename, f.mime_type, f.blob.read())
                                          for f in files))

    async def _fetch_all(self, message: Claimed, tenant: Tenant,
                         items: Sequence[Attachment], stored: Sequence[Any]) -> list[Fetched]:
        """One after the other: a message's attachments share its account's fetch slots."""
        scope = (message.tenant_id, message.account_id)
        out = []
        for item, raw in zip(items, stored, strict=True):
            auth = raw.get("auth") if isinstance(raw, dict) else None
            opened = self._open_auth(auth) if isinstance(auth, dict) else None
            try:
                out.append(await self._fetcher.fetch(tenant, item, opened, scope))
            except FetchError as exc:
                if exc.temporary:
                    raise TemporaryFailure(str(exc)) from None
                raise PermanentFailure(str(exc)) from None
        return out
