"""The storage port of large-file offload and its backends: file://, s3:// (§11); gs:// and
az:// live in gcs.py and azure.py.

S3 goes through aiobotocore (botocore's own signing, presigned URLs, any S3-compatible
endpoint via `endpoint_url`), imported only when an s3:// storage is used, so an instance
without the `s3` extra still starts; a missing driver surfaces as a temporary upload error.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

CHUNK = 256 * 1024
MAX_PRESIGN = 7 * 86400  # S3 SigV4 and GCS V4 signed URLs: a week at most


class StorageError(Exception):
    """A storage operation failed; uploads retry (temporary), downloads answer 404."""


class Storage(Protocol):
    can_sign: bool

    async def upload(self, key: str, source: Path | bytes, content_type: str) -> None: ...

    async def presign(self, key: str, seconds: int, filename: str) -> str: ...

    def download(self, key: str) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...


class FileStorage:
    """A directory on this machine; links go through our signed /download route."""

    can_sign = False

    def __init__(self, url: str) -> None:
        self.root = Path(urlsplit(url).path)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError("object key escapes the storage directory")
        return path

    async def upload(self, key: str, source: Path | bytes, content_type: str) -> None:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            if isinstance(source, Path):
                shutil.copyfile(source, tmp)
            else:
                tmp.write_bytes(source)
            tmp.replace(path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise StorageError(f"upload failed: {exc}") from None

    async def presign(self, key: str, seconds: int, filename: str) -> str:
        raise StorageError("file:// storage cannot sign links")

    async def download(self, key: str) -> AsyncIterator[bytes]:
        try:
            fh = await asyncio.to_thread(self._path(key).open, "rb")
        except OSError:
            raise StorageError("file not found") from None
        try:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                yield chunk
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def remove() -> None:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()

        await asyncio.to_thread(remove)


_S3_OPTION_NAMES = {
    "endpoint_url": "endpoint_url", "region_name": "region_name", "region": "region_name",
    "aws_access_key_id": "aws_access_key_id", "key": "aws_access_key_id",
    "aws_secret_access_key": "aws_secret_access_key", "secret": "aws_secret_access_key",
    "aws_session_token": "aws_session_token", "token": "aws_session_token",
}


def s3_client_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """aiobotocore client arguments from `storage_options` (botocore or fsspec names)."""
    out: dict[str, Any] = {"region_name": "us-east-1"}
    for name, value in options.items():
        if name in _S3_OPTION_NAMES and value is not None:
            out[_S3_OPTION_NAMES[name]] = value
        elif name == "client_kwargs" and isinstance(value, Mapping):
            out.update({k: v for k, v in value.items() if k in _S3_OPTION_NAMES.values()})
    return out


class ObjectStore:
    """What the cloud backends share: `scheme://bucket/prefix`, keys under the prefix."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.bucket = parts.netloc  # Azure calls it a container
        self.prefix = parts.path.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


class S3Storage(ObjectStore):
    can_sign = True

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url)
        self._options = s3_client_options(options)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[Any]:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError:
            raise StorageError("s3:// needs aiobotocore (pip install 'mailproxy[s3]')") from None
        try:
            # SigV4 links (SigV2 is legacy); one quick retry: our own retry schedule does the rest.
            config = AioConfig(signature_version="s3v4", connect_timeout=10, read_timeout=60,
                               retries={"max_attempts": 2, "mode": "standard"})
            async with get_session().create_client("s3", config=config,
                                                   **self._options) as client:
                yield client
        except StorageError:
            raise
        except Exception as exc:  # botocore raises many unrelated types; all mean "failed"
            raise StorageError(f"S3 {type(exc).__name__}: {exc}") from None

    async def upload(self, key: str, source: Path | bytes, content_type: str) -> None:
        async with self._client() as s3:
            if isinstance(source, Path):
                with source.open("rb") as body:  # streamed from disk, never read whole
                    await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=body,
                                        ContentType=content_type)
            else:
                await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=source,
                                    ContentType=content_type)

    async def presign(self, key: str, seconds: int, filename: str) -> str:
        async with self._client() as s3:
            url: str = await s3.generate_presigned_url(
                "get_object", ExpiresIn=min(seconds, MAX_PRESIGN),
                Params={"Bucket": self.bucket, "Key": self._key(key)})
            return url

    async def download(self, key: str) -> AsyncIterator[bytes]:
        async with self._client() as s3:
            obj = await s3.get_object(Bucket=self.bucket, Key=self._key(key))
            async with obj["Body"] as stream:
                while chunk := await stream.read(CHUNK):
                    yield chunk

    async def delete(self, key: str) -> None:
        async with self._client() as s3:
            await s3.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_storage(url: str, options: Mapping[str, Any]) -> Storage:
    """The backend of a storage URL; drivers are imported at first use, not here."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return FileStorage(url)
    if scheme == "s3":
        return S3Storage(url, options)
    if scheme == "gs":
        from mailproxy.offload.gcs import GcsStorage

        return GcsStorage(url, options)
    if scheme == "az":
        from mailproxy.offload.azure import AzureStorage

        return AzureStorage(url, options)
    raise StorageError(f"storage_url {scheme}:// is not supported by this instance")
