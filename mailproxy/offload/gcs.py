"""gs:// storage through gcloud-aio-storage (aiohttp-based, like the rest of the service).

The driver is imported only when a gs:// storage is used (the `gcs` extra), so an instance
without it starts and saves configs; a missing driver is a temporary upload error naming
the backend (§11). A service-account key in `storage_options` lets us sign V4 URLs
locally; with ambient credentials the links go through our own /download route.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from mailproxy.offload.storage import CHUNK, MAX_PRESIGN, ObjectStore, StorageError

NAME = "Google Cloud Storage (gs://)"


def service_account(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The service-account key in the options (gcsfs's `token`, as a dict or JSON text)."""
    value = options.get("token", options.get("service_account_info"))
    if isinstance(value, str) and value.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, Mapping) and value.get("private_key") and value.get("client_email"):
        return dict(value)
    return None


class GcsStorage(ObjectStore):
    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url)
        self._key_info = service_account(options)
        endpoint = options.get("endpoint_url")
        self._endpoint = str(endpoint).rstrip("/") if endpoint else None
        self.can_sign = self._key_info is not None

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[Any]:
        try:
            from gcloud.aio.storage import Storage as Client
        except ImportError:
            raise StorageError(f"{NAME} needs gcloud-aio-storage "
                               "(pip install 'mailproxy[gcs]')") from None
        service = io.StringIO(json.dumps(self._key_info)) if self._key_info else None
        try:
            async with Client(service_file=service, api_root=self._endpoint) as client:
                yield client
        except StorageError:
            raise
        except Exception as exc:  # aiohttp, auth and HTTP errors alike mean "failed"
            raise StorageError(f"{NAME}: {type(exc).__name__}: {exc}") from None

    async def upload(self, key: str, source: Path | bytes, content_type: str) -> None:
        async with self._client() as gcs:
            if isinstance(source, Path):
                with source.open("rb") as body:  # streamed from disk, never read whole
                    await gcs.upload(self.bucket, self._key(key), body,
                                     content_type=content_type, timeout=120)
            else:
                await gcs.upload(self.bucket, self._key(key), source,
                                 content_type=content_type, timeout=120)

    async def presign(self, key: str, seconds: int, filename: str) -> str:
        async with self._client() as gcs:
            blob = gcs.get_bucket(self.bucket).new_blob(self._key(key))
            url: str = await blob.get_signed_url(min(seconds, MAX_PRESIGN))
            return url

    async def download(self, key: str) -> AsyncIterator[bytes]:
        async with self._client() as gcs:
            stream = await gcs.download_stream(self.bucket, self._key(key))
            while chunk := await stream.read(CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        async with self._client() as gcs:
            try:
                await gcs.delete(self.bucket, self._key(key))
            except Exception as exc:
                if getattr(exc, "status", None) != 404:  # already gone is deleted
                    raise
