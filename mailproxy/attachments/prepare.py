"""The worker's Preparer: fetch a claimed message's attachments, apply the tenant's
large-file policy, and hand the worker what compose needs (§9.3 step 2)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mailproxy import compose
from mailproxy.attachments.fetch import Fetched, Fetcher
from mailproxy.attachments.names import FetchError
from mailproxy.errors import PermanentFailure, TemporaryFailure
from mailproxy.model import Attachment, Claimed, ClientAuth, Content, Prepared, Tenant

log = logging.getLogger("mailproxy.attachments")

TENANT_CACHE_SECONDS = 10.0
ENCODED_BUDGET = 16 * 2**20  # bytes of base64 kept for attachments sent again
AuthOpener = Callable[[Mapping[str, Any]], ClientAuth]
TenantLookup = Callable[[str], Awaitable[Tenant | None]]


@dataclass(frozen=True, slots=True)
class Offloaded:
    """What the large-file policy left: the files still attached, bodies with the footer."""

    kept: tuple[Fetched, ...]
    body: str | None = None
    html_body: str | None = None


class Offload(Protocol):
    """The large-file policy (§11), applied after fetching; see mailproxy.offload."""

    async def structured(self, message: Claimed, tenant: Tenant, content: Content,
                         files: Sequence[Fetched]) -> Offloaded: ...

    async def raw(self, message: Claimed, tenant: Tenant, raw: bytes) -> bytes | None: ...


class MessagePreparer:
    def __init__(self, fetcher: Fetcher, tenants: TenantLookup, open_auth: AuthOpener,
                 offload: Offload | None = None) -> None:
        self._fetcher = fetcher
        self._tenants = tenants
        self._open_auth = open_auth
        self.offload = offload
        self._cache: dict[str, tuple[float, Tenant | None]] = {}
        self._lines: OrderedDict[str, bytes] = OrderedDict()
        self._lines_size = 0

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
        content = message.content
        if not content.attachments:
            return None  # the common case: nothing to fetch, no tenant lookup
        tenant = await self._tenant(message.tenant_id)
        stored = message.payload.get("attachments") or ()
        files = await self._fetch_all(message, tenant, content.attachments, stored)
        done = Offloaded(tuple(files))
        if self.offload is not None:
            done = await self.offload.structured(message, tenant, content, files)
        try:
            parts = tuple((f.filename, f.mime_type, self._encoded(f)) for f in done.kept)
        except FileNotFoundError:  # evicted from the disk tier meanwhile: fetch again later
            raise TemporaryFailure("attachment cache entry vanished; retrying") from None
        return Prepared(attachments=parts, body=done.body, html_body=done.html_body)

    def _encoded(self, f: Fetched) -> bytes:
        """The attachment in base64 lines, from a small LRU keyed by content MD5: a file
        sent with many messages is read and encoded once, not once per message."""
        if f.mime_type.lower().startswith("message/"):
            return f.blob.read()  # compose may send these as 7-bit text
        hit = self._lines.get(f.blob.md5)
        if hit is not None:
            self._lines.move_to_end(f.blob.md5)
            return hit
        lines = compose.base64_lines(f.blob.read())
        if len(lines) <= ENCODED_BUDGET // 4:
            self._lines[f.blob.md5] = lines
            self._lines_size += len(lines)
            while self._lines_size > ENCODED_BUDGET:
                _md5, old = self._lines.popitem(last=False)
                self._lines_size -= len(old)
        return lines

    async def _fetch_all(self, message: Claimed, tenant: Tenant,
                         items: Sequence[Attachment], stored: Sequence[Any]) -> list[Fetched]:
        """One after the other: a message's attachments share its account's fetch slots."""
        scope = (message.tenant_id, message.account_id)
        out = []
        for i, item in enumerate(items):
            raw = stored[i] if i < len(stored) else None  # its credentials, sealed
            auth = raw.get("auth") if isinstance(raw, dict) else None
            opened = self._open_auth(auth) if isinstance(auth, dict) else None
            try:
                out.append(await self._fetcher.fetch(tenant, item, opened, scope))
            except FetchError as exc:
                if exc.temporary:
                    raise TemporaryFailure(str(exc)) from None
                raise PermanentFailure(str(exc)) from None
        return out
