"""az:// storage through azure-storage-blob's asyncio client (its transport is aiohttp).

`az://container/prefix`, with the account from `storage_options` (adlfs's names:
`connection_string`, or `account_name` with `account_key` / `sas_token`, and `account_url`
for another endpoint). The driver is imported only when used (the `azure` extra); a missing
driver is a temporary upload error naming the backend (§11). With an account key we sign a
read-only SAS URL; otherwise the links go through our own /download route.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from mailproxy.offload.storage import ObjectStore, StorageError

NAME = "Azure Blob Storage (az://)"


def _sdk() -> Any:
    """azure.storage.blob with its aio module, or the temporary error naming the backend."""
    try:
        import azure.storage.blob.aio
    except ImportError:
        raise StorageError(f"{NAME} needs azure-storage-blob and aiohttp "
                           "(pip install 'mailproxy[azure]')") from None
    return azure.storage.blob


def connection_fields(text: str) -> dict[str, str]:
    """`Key=Value;...` of an Azure connection string (values may contain '=')."""
    pairs = (item.split("=", 1) for item in text.split(";") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs}


class AzureStorage(ObjectStore):
    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url)
        self._connection = options.get("connection_string")
        fields = connection_fields(str(self._connection)) if self._connection else {}
        self._account = options.get("account_name") or fields.get("AccountName")
        self._key_value = options.get("account_key") or fields.get("AccountKey")
        self._sas = options.get("sas_token")
        self._url = (options.get("account_url") or fields.get("BlobEndpoint")
                     or (f"https://{self._account}.blob.core.windows.net"
                         if self._account else None))
        self.can_sign = bool(self._account and self._key_value)

    def _credential(self) -> Any:
        if self._key_value and self._account:
            return {"account_name": self._account, "account_key": self._key_value}
        if self._sas:
            return self._sas
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError:
            raise StorageError(f"{NAME}: ambient credentials need azure-identity; or give "
                               "storage_options a connection_string, account_key or sas_token"
                               ) from None
        return DefaultAzureCredential()

    @contextlib.asynccontextmanager
    async def _blob(self, key: str) -> AsyncIterator[Any]:
        aio = _sdk().aio
        client = aio.BlobServiceClient
        # One quick retry (the SDK's default waits 15 s first): our retry schedule does the rest.
        tuning = {"retry_policy": aio.ExponentialRetry(initial_backoff=1, retry_total=1),
                  "connection_timeout": 10, "read_timeout": 60}
        try:
            if self._connection:
                service = client.from_connection_string(str(self._connection), **tuning)
            elif self._url:
                service = client(str(self._url), credential=self._credential(), **tuning)
            else:
                raise StorageError(f"{NAME}: storage_options name no account")
            async with service:
                yield service.get_blob_client(self.bucket, self._key(key))
        except StorageError:
            raise
        except Exception as exc:  # azure-core and aiohttp errors alike mean "failed"
            raise StorageError(f"{NAME}: {type(exc).__name__}: {exc}") from None

    async def upload(self, key: str, source: Path | bytes, content_type: str) -> None:
        settings = _sdk().ContentSettings(content_type=content_type)
        async with self._blob(key) as blob:
            if isinstance(source, Path):
                with source.open("rb") as body:  # streamed from disk in blocks
                    await blob.upload_blob(body, length=source.stat().st_size,
                                           overwrite=True, content_settings=settings)
            else:
                await blob.upload_blob(source, overwrite=True, content_settings=settings)

    async def presign(self, key: str, seconds: int, filename: str) -> str:
        sdk = _sdk()
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        sas = sdk.generate_blob_sas(str(self._account), self.bucket, self._key(key),
                                account_key=str(self._key_value),
                                permission=sdk.BlobSasPermissions(read=True), expiry=expiry)
        async with self._blob(key) as blob:
            return f"{blob.url}?{sas}"

    async def download(self, key: str) -> AsyncIterator[bytes]:
        async with self._blob(key) as blob:
            stream = await blob.download_blob()
            async for chunk in stream.chunks():
                yield chunk

    async def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        async with self._blob(key) as blob:
            with contextlib.suppress(ResourceNotFoundError):  # already gone is deleted
                await blob.delete_blob()
