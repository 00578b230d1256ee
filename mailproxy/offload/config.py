"""The tenant's `large_file_config` (§11): its shape check at save time, its parsed form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MB = 2**20
ACTIONS = ("warn", "reject", "rewrite")
SCHEMES = ("file", "s3", "gs", "az")


@dataclass(frozen=True, slots=True)
class LargeFileConfig:
    enabled: bool = False
    max_size_mb: float = 10
    action: str = "warn"
    storage_url: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    public_base_url: str | None = None
    file_ttl_days: int = 30
    lifespan_after_download_days: int | None = None

    @property
    def threshold(self) -> int:
        """Attachments of more bytes than this trigger the action."""
        return int(self.max_size_mb * MB)


def parse(data: Mapping[str, Any] | None) -> LargeFileConfig | None:
    """The enabled config, or None when absent or disabled (attach everything)."""
    if not data or not data.get("enabled"):
        return None
    defaults = LargeFileConfig()
    ttl = data.get("file_ttl_days")
    return LargeFileConfig(
        enabled=True,
        max_size_mb=float(data.get("max_size_mb") or defaults.max_size_mb),
        action=str(data.get("action") or defaults.action),
        storage_url=data.get("storage_url"),
        storage_options=data.get("storage_options") or {},
        public_base_url=data.get("public_base_url"),
        file_ttl_days=int(ttl) if ttl else defaults.file_ttl_days,
        lifespan_after_download_days=data.get("lifespan_after_download_days"),
    )


def storage_problem(url: str) -> str | None:
    """Why a storage URL is malformed, or None: its shape only, never its reachability or
    whether this instance has the backend's driver (§11: those fail at send time)."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in SCHEMES:
        return "storage_url must start with s3://, gs://, az:// or file://"
    if scheme in ("s3", "gs") and not parts.netloc:
        return f"storage_url {scheme}:// needs a bucket: {scheme}://bucket/prefix"
    if scheme == "az" and not parts.netloc:
        return "storage_url az:// needs a container: az://container/prefix"
    if scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
        return "storage_url file:// needs an absolute directory: file:///abs/dir"
    return None


def save_problem(data: Mapping[str, Any]) -> str | None:
    """The rule checks of a config being saved beyond JSON types (never contacts storage)."""
    url = data.get("storage_url")
    if url:
        problem = storage_problem(url)
        if problem:
            return problem
    if data.get("action") == "rewrite":
        if not url:
            return "storage_url is required for action rewrite"
        if urlsplit(url).scheme == "file" and not data.get("public_base_url"):
            return "rewrite with file:// storage needs public_base_url (file:// cannot sign)"
    return None
