"""The large-file policy at send time, the download lookup and the cleanup (§11)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from mailproxy.attachments.fetch import Fetched
from mailproxy.attachments.prepare import Offloaded
from mailproxy.errors import PermanentFailure, TemporaryFailure
from mailproxy.model import Claimed, Content, OffloadedFile, Tenant
from mailproxy.offload import footer, links
from mailproxy.offload.config import LargeFileConfig, parse
from mailproxy.offload.storage import Storage, StorageError, open_storage

log = logging.getLogger("mailproxy.offload")

DAY = 86400
CLEANUP_BATCH = 100


class OffloadIndex(Protocol):
    async def put(self, f: OffloadedFile) -> None: ...

    async def get(self, file_id: str) -> OffloadedFile | None: ...

    async def mark_downloaded(self, file_id: str, now: int) -> None: ...

    async def due(self, now: int, limit: int) -> list[OffloadedFile]: ...

    async def delete(self, file_id: str) -> None: ...


TenantLookup = Callable[[str], Awaitable[Tenant | None]]
StorageFactory = Callable[[str, dict[str, object]], Storage]


@dataclass(frozen=True, slots=True)
class Download:
    file: OffloadedFile
    chunks: AsyncIterator[bytes]


class Offloader:
    def __init__(self, index: OffloadIndex, secret: bytes, tenants: TenantLookup,
                 clock: Callable[[], float], storage: StorageFactory = open_storage) -> None:
        self._index = index
        self._secret = secret
        self._tenants = tenants
        self._clock = clock
        self._storage = storage

    def _store_of(self, cfg: LargeFileConfig) -> Storage:
        assert cfg.storage_url is not None
        try:
            return self._storage(cfg.storage_url, dict(cfg.storage_options))
        except StorageError as exc:
            raise PermanentFailure(f"large-file storage: {exc}") from None

    def file_id(self, message: Claimed, index: int) -> str:
        """Derived from the message, so a retry overwrites its own upload, not a new one."""
        text = f"{message.pk}:{index}".encode()
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()[:32]

    # -- send time ----------------------------------------------------------------------------

    async def structured(self, message: Claimed, tenant: Tenant, content: Content,
                         files: Sequence[Fetched]) -> Offloaded:
        cfg = parse(tenant.large_file_config)
        kept: list[Fetched] = []
        made: list[footer.Link] = []
        for index, f in enumerate(files):
            if cfg is None or f.blob.size <= cfg.threshold or self._passes(cfg, f.filename,
                                                                             f.blob.size):
                kept.append(f)
                continue
            source: Path | bytes = f.blob.path if f.blob.path is not None else f.blob.read()
            made.append(await self._upload(message, tenant, cfg, index, f.filename,
                                           f.mime_type, source, f.blob.size))
        if not made:
            return Offloaded(tuple(kept))
        body, html_body = with_footer(content, made)
        return Offloaded(tuple(kept), body=body, html_body=html_body)

    def _passes(self, cfg: LargeFileConfig, filename: str, size: int) -> bool:
        """warn: log and attach (True); reject: permanent error; rewrite: False."""
        if cfg.action == "reject":
            raise PermanentFailure(f"Attachment '{filename}' ({footer.megabytes(size)} MB) "
                                   f"exceeds limit ({cfg.max_size_mb:g} MB)")
        if cfg.action == "rewrite" and cfg.storage_url:
            return False
        log.warning("attachment %r (%s MB) exceeds the large-file limit (%g MB); attached",
                    filename, footer.megabytes(size), cfg.max_size_mb)
        return True

    async def _upload(self, message: Claimed, tenant: Tenant, cfg: LargeFileConfig,
                      index: int, filename: str, mime: str, source: Path | bytes,
                      size: int) -> footer.Link:
        storage = self._store_of(cfg)
        file_id = self.file_id(message, index)
        key = f"{file_id}/{safe_name(filename)}"
        now = int(self._clock())
        expires = now + cfg.file_ttl_days * DAY
        if not (cfg.public_base_url or storage.can_sign):  # checked before any upload
            raise TemporaryFailure(f"attachment '{filename}': upload failed: "
                                   f"{cfg.storage_url} cannot sign links with these "
                                   "storage_options and public_base_url is not set")
        try:
            await storage.upload(key, source, mime)
            await self._index.put(OffloadedFile(
                file_id, tenant.id, cfg.storage_url or "", key, filename, mime, size, now,
                expires, cfg.lifespan_after_download_days, None, expires))
            if cfg.public_base_url or not storage.can_sign:
                assert cfg.public_base_url
                url = links.link(cfg.public_base_url, self._secret, file_id, expires, filename)
                return footer.Link(filename, size, url, expires)
            seconds = min(cfg.file_ttl_days * DAY, 7 * DAY)
            url = await storage.presign(key, seconds, filename)
            return footer.Link(filename, size, url, now + seconds)
        except (StorageError, FileNotFoundError) as exc:
            raise TemporaryFailure(f"attachment '{filename}': upload failed: {exc}") from None

    async def raw(self, message: Claimed, tenant: Tenant, raw: bytes) -> bytes | None:
        """A raw or SMTP-submitted message whose large parts became links, or None."""
        cfg = parse(tenant.large_file_config)
        if cfg is None or len(raw) <= cfg.threshold:
            return None  # no part can be larger than the whole message
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        changed = False
        for index, part in enumerate(parsed.walk()):
            if part.is_multipart() or not isinstance(part, EmailMessage):
                continue
            filename = part.get_filename()
            if filename is None and part.get_content_disposition() != "attachment":
                continue
            data = part.get_payload(decode=True)
            if not isinstance(data, bytes) or len(data) <= cfg.threshold:
                continue
            name = filename or f"attachment-{index}"
            if self._passes(cfg, name, len(data)):
                continue
            made = await self._upload(message, tenant, cfg, index, name,
                                      part.get_content_type(), data, len(data))
            part.set_content(footer.raw_part_text(made), disposition="inline")
            changed = True
        return parsed.as_bytes(policy=email.policy.SMTP) if changed else None

    # -- download and cleanup -------------------------------------------------------------------

    async def download(self, token: str, filename: str) -> Download:
        """The file behind a signed link: BadLink or LookupError (404), ExpiredLink (410)."""
        now = self._clock()
        file_id = links.verify(self._secret, token, filename, now)
        found = await self._index.get(file_id)
        if found is None or found.filename != filename or found.delete_ts < now:
            raise LookupError("unknown file")
        tenant = await self._tenants(found.tenant_id)
        cfg = parse(tenant.large_file_config) if tenant else None
        options = dict(cfg.storage_options) if cfg else {}
        storage = self._storage(found.storage_url, options)
        chunks = storage.download(found.object_key)
        try:
            first = await anext(chunks)
        except (StorageError, StopAsyncIteration):
            raise LookupError("file missing from storage") from None
        except Exception as exc:  # driver errors on the first read: not found, as above
            raise LookupError(f"storage: {exc}") from None
        if found.downloaded_ts is None:
            await self._index.mark_downloaded(file_id, int(now))
        return Download(found, _prepend(first, chunks))

    async def cleanup(self, now: float | None = None) -> int:
        """Delete the files whose time is up (expiry, or first download + lifespan)."""
        moment = int(self._clock() if now is None else now)
        done = 0
        while True:
            due = await self._index.due(moment, CLEANUP_BATCH)
            for f in due:
                await self._delete(f)
                done += 1
            if len(due) < CLEANUP_BATCH:
                return done

    async def _delete(self, f: OffloadedFile) -> None:
        tenant = await self._tenants(f.tenant_id)
        cfg = parse(tenant.large_file_config) if tenant else None
        try:
            storage = self._storage(f.storage_url, dict(cfg.storage_options) if cfg else {})
            await storage.delete(f.object_key)
        except Exception as exc:
            if tenant is not None:  # retried at the next run; a deleted tenant's row goes
                log.warning("cleanup of offloaded file %s failed: %s", f.file_id, exc)
                return
        await self._index.delete(f.file_id)

    async def run_cleanup(self, interval: float = 3600.0) -> None:
        """The hourly cleanup task."""
        while True:
            with contextlib.suppress(Exception):
                removed = await self.cleanup()
                if removed:
                    log.info("removed %d expired offloaded files", removed)
            await asyncio.sleep(interval)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def safe_name(filename: str) -> str:
    """The filename as an object-key segment: no path separators, no dot-only names."""
    cleaned = filename.replace("/", "_").replace("\\", "_").strip()
    return cleaned if cleaned.strip(".") else "file"


def with_footer(content: Content, made: Sequence[footer.Link]) -> tuple[str | None, str | None]:
    """(body, html_body) with the footer: plain in the text body, a list in the HTML."""
    body: str | None = None
    html_body: str | None = None
    if content.html_body:
        html_body = footer.html_body(content.html_body, made)
        if content.body:
            body = footer.plain(content.body, made)
    elif content.body_is_html:
        body = footer.html_body(content.body, made)
    else:
        body = footer.plain(content.body, made)
    return body, html_body
