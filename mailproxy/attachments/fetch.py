"""The attachment fetcher: one Attachment -> its bytes, through the cache (§10)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from mailproxy.attachments import names
from mailproxy.attachments.cache import Blob, Cache, Spool
from mailproxy.attachments.names import FetchError
from mailproxy.attachments.sources import HttpSource, Request, origin, read_file, sandboxed
from mailproxy.compose import decode_base64
from mailproxy.model import Attachment, ClientAuth, Tenant
from mailproxy.netguard import AllowList


@dataclass(frozen=True, slots=True)
class FetchSettings:
    roots: tuple[Path, ...] = ()
    allow: AllowList = field(default_factory=AllowList)
    max_bytes: int = 50 * 2**20
    timeout: float = 30.0
    concurrency: int = 3


@dataclass(frozen=True, slots=True)
class Fetched:
    """An attachment ready to send: the name without its marker, the type, the content."""

    filename: str
    mime_type: str
    blob: Blob


class Fetcher:
    """Fetches attachments of any mode. Network and disk fetches of one scope (an account)
    run at most `concurrency` at once, so a slow source of one account never takes the
    fetch slots of another; cache hits and inline data take no slot."""

    def __init__(self, settings: FetchSettings, cache: Cache) -> None:
        self._s = settings
        self.cache = cache
        self._http = HttpSource(settings.allow, settings.timeout)
        self._slots: dict[object, asyncio.Semaphore] = {}

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._s.roots

    async def start(self) -> None:
        await asyncio.to_thread(self.cache.load)
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def fetch(self, tenant: Tenant, attachment: Attachment, auth: ClientAuth | None,
                    scope: object = None) -> Fetched:
        filename = attachment.filename
        blob = await self._content(tenant, attachment, auth, scope)
        return Fetched(names.sent_name(filename),
                       names.mime_type(attachment.mime_type, filename), blob)

    async def _content(self, tenant: Tenant, attachment: Attachment, auth: ClientAuth | None,
                       scope: object) -> Blob:
        filename = attachment.filename
        mode = attachment.fetch_mode  # set at intake, inferred there when not given
        key = names.cache_key(attachment.content_md5, filename)
        if mode == "base64":
            try:
                data = decode_base64(attachment.storage_path)
            except ValueError:
                raise FetchError(filename, "bad base64 data", temporary=False) from None
            return self._verified(tenant, filename, key, Spool.of(data), cache=False)
        if key is not None:
            hit = self.cache.get(tenant.id, key)
            if hit is not None:
                return hit
        slots = self._slots.setdefault(scope, asyncio.Semaphore(self._s.concurrency))
        async with slots:
            spool = Spool(self.cache.directory, self.cache.limits.disk_threshold)
            try:
                await self._into(spool, mode, tenant, attachment, auth)
            except BaseException:
                spool.discard()
                raise
        return self._verified(tenant, filename, key, spool, cache=True)

    async def _into(self, spool: Spool, mode: str, tenant: Tenant, attachment: Attachment,
                    auth: ClientAuth | None) -> None:
        filename, limit = attachment.filename, self._s.max_bytes
        if mode == "filesystem":
            try:
                path = sandboxed(attachment.storage_path, self._s.roots)
            except ValueError as exc:
                raise FetchError(filename, f"refused: {exc}", temporary=False) from None
            await asyncio.to_thread(read_file, path, spool, limit, filename)
        elif mode == "http_url":
            # Tenant credentials never go to a URL the message names: only its own auth.
            await self._http.fetch(Request(attachment.storage_path, auth=auth), spool, limit,
                                   filename)
        elif mode == "endpoint":
            await self._http.fetch(endpoint_request(tenant, attachment, auth),
                                   spool, limit, filename)
        else:
            raise FetchError(filename, f"unknown fetch_mode {mode}", temporary=False)

    def _verified(self, tenant: Tenant, filename: str, key: str | None, spool: Spool, *,
                  cache: bool) -> Blob:
        md5 = spool.md5
        data, path = spool.finish()
        if key is not None and key != md5:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise FetchError(filename, "attachment checksum mismatch", temporary=False)
        if cache:
            return self.cache.put(tenant.id, md5, data, path)
        return Blob(md5, spool.size, data=data)


def endpoint_request(tenant: Tenant, attachment: Attachment, auth: ClientAuth | None
                     ) -> Request:
    """The POST to the tenant's attachment endpoint, or to the `[url]params` form's URL.

    The tenant's own endpoint is restricted by the private-address rule only while a
    tenant token set its URLs (§2.2); the explicit form always is, and gets the tenant's
    credentials only when its origin is the tenant's.
    """
    base, storage_path = tenant.client_base_url, attachment.storage_path
    if storage_path.startswith("[") and "]" in storage_path:
        url, _, params = storage_path[1:].partition("]")
        same = base is not None and origin(url) == origin(base)
        creds = auth or (tenant.client_auth if same else None)
        return Request(url, "POST", {"storage_path": params}, creds, restricted=True)
    if not base:
        raise FetchError(attachment.filename, "tenant has no client_base_url for endpoint "
                         "attachments", temporary=False)
    url = base.rstrip("/") + "/" + tenant.client_attachment_path.lstrip("/")
    return Request(url, "POST", {"storage_path": storage_path}, auth or tenant.client_auth,
                   restricted=tenant.urls_set_by_tenant)
