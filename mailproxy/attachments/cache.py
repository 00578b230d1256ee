"""Two-tier attachment cache (§10): a memory LRU for small files, a disk tier for large ones.

Content is stored under its computed MD5, so a hit is the right content by construction.
Every entry is also scoped by the tenant that fetched it: the MD5 a client names is no
proof that it may read the content, so a hit only serves the same tenant's earlier fetch.
The disk tier is a directory of `<sha256(tenant)>/<md5[:2]>/<md5>` files; its index is
rebuilt from the directory at start, so it survives a restart. Both tiers expire entries
after their TTL and evict least-recently-used entries beyond their size budget.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_HEX = frozenset("0123456789abcdef")


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and set(name) <= _HEX


@functools.lru_cache(maxsize=4096)
def scope_of(tenant_id: str) -> str:
    """The directory (and key prefix) of one tenant's entries: a hash, so any tenant id
    is a safe path component."""
    return hashlib.sha256(tenant_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Blob:
    """Fetched content: in memory when small, a file of the disk tier when large."""

    md5: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


@dataclass(frozen=True, slots=True)
class CacheLimits:
    memory_bytes: int = 50 * 2**20
    memory_ttl: float = 300.0
    disk_bytes: int = 500 * 2**20
    disk_ttl: float = 3600.0
    disk_threshold: int = 100 * 2**10


class Spool:
    """Bytes arriving in chunks: kept in memory up to the disk threshold, then in a temporary
    file in the cache directory, MD5 computed on the way. Never holds a large file in memory."""

    def __init__(self, directory: Path, threshold: int) -> None:
        self._dir = directory
        self._threshold = threshold
        self._chunks: list[bytes] = []
        self._file: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._md5.update(chunk)
        self.size += len(chunk)
        if self._file is None and self.size > self._threshold:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in finish/discard)
                dir=self._dir, prefix=".spool-", delete=False)
            self._file.write(b"".join(self._chunks))
            self._chunks = []
            self._file.write(chunk)
        elif self._file is not None:
            self._file.write(chunk)
        else:
            self._chunks.append(chunk)

    @classmethod
    def of(cls, data: bytes) -> Spool:
        """A spool already holding `data` (inline content), never written to disk."""
        spool = cls(Path("."), len(data))
        spool.write(data)
        return spool

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    def finish(self) -> tuple[bytes | None, Path | None]:
        """(data, None) for a small spool, (None, path of a temporary file) for a large one."""
        if self._file is None:
            return b"".join(self._chunks), None
        self._file.close()
        return None, Path(self._file.name)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._file.name)


class Cache:
    def __init__(self, directory: Path, limits: CacheLimits,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.limits = limits
        self._clock = clock
        self._memory: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._memory_size = 0
        self._disk: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (stored, size)
        self._disk_size = 0
        self.hits = 0
        self.misses = 0

    def load(self) -> None:
        """Rebuild the disk index from the directory (oldest first); drop stray spools and
        unscoped entries of an older layout, whose tenant is unknown."""
        if not self.directory.is_dir():
            return
        found: list[tuple[float, str, int]] = []
        for path in self.directory.glob("*/*/*"):
            scope, md5 = path.parent.parent.name, path.name
            if _is_hex(scope, 64) and _is_hex(md5, 32) and path.parent.name == md5[:2]:
                stat = path.stat()
                found.append((stat.st_mtime, f"{scope}/{md5}", stat.st_size))
        self._drop_unscoped()
        for stored, key, size in sorted(found):
            self._disk[key] = (stored, size)
            self._disk_size += size
        self._evict_disk()

    def _drop_unscoped(self) -> None:
        for path in [*self.directory.glob(".spool-*"), *self.directory.glob("??/*")]:
            if path.name.startswith(".spool-") or _is_hex(path.name, 32):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _disk_path(self, key: str) -> Path:
        # One string join and os.path below: a disk-tier hit is the warm path of every
        # message naming a large cached file, and pathlib's joins cost more than the stat.
        scope, md5 = key.split("/")
        return Path(os.path.join(self.directory, scope, md5[:2], md5))

    def get(self, tenant_id: str, md5: str) -> Blob | None:
        """The content of `md5` as this tenant fetched it before, or None."""
        now, key = self._clock(), f"{scope_of(tenant_id)}/{md5}"
        item = self._memory.get(key)
        if item is not None:
            if now - item[0] <= self.limits.memory_ttl:
                self._memory.move_to_end(key)
                self.hits += 1
                return Blob(md5, len(item[1]), data=item[1])
            self._drop_memory(key)
        entry = self._disk.get(key)
        if entry is not None:
            path = self._disk_path(key)
            if now - entry[0] <= self.limits.disk_ttl and os.path.exists(path):
                self._disk.move_to_end(key)
                self.hits += 1
                return Blob(md5, entry[1], path=path)
            self._drop_disk(key)
        self.misses += 1
        return None

    def put(self, tenant_id: str, md5: str, data: bytes | None, spooled: Path | None) -> Blob:
        """Keep content this tenant fetched (a small `data`, or a large `spooled` file)."""
        now, key = self._clock(), f"{scope_of(tenant_id)}/{md5}"
        if data is not None and len(data) < self.limits.disk_threshold:
            if len(data) <= self.limits.memory_bytes:
                self._drop_memory(key)
                self._memory[key] = (now, data)
                self._memory_size += len(data)
                self._evict_memory()
            return Blob(md5, len(data), data=data)
        return self._put_disk(key, md5, data, spooled, now)

    def _put_disk(self, key: str, md5: str, data: bytes | None, spooled: Path | None,
                  now: float) -> Blob:
        path = self._disk_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if spooled is None:
            assert data is not None
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".spool-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            spooled = Path(tmp)
        size = spooled.stat().st_size
        os.replace(spooled, path)
        os.utime(path, (now, now))  # the stored time, read back by load() after a restart
        self._drop_disk(key, unlink=False)
        self._disk[key] = (now, size)
        self._disk_size += size
        self._evict_disk(keep=key)
        return Blob(md5, size, path=path)

    def _drop_memory(self, key: str) -> None:
        item = self._memory.pop(key, None)
        if item is not None:
            self._memory_size -= len(item[1])

    def _drop_disk(self, key: str, *, unlink: bool = True) -> None:
        entry = self._disk.pop(key, None)
        if entry is not None:
            self._disk_size -= entry[1]
            if unlink:
                with contextlib.suppress(OSError):
                    self._disk_path(key).unlink()

    def _evict_memory(self) -> None:
        while self._memory_size > self.limits.memory_bytes and self._memory:
            self._drop_memory(next(iter(self._memory)))

    def _evict_disk(self, keep: str | None = None) -> None:
        now = self._clock()
        for key, (stored, _size) in list(self._disk.items()):
            if now - stored > self.limits.disk_ttl and key != keep:
                self._drop_disk(key)
        while self._disk_size > self.limits.disk_bytes and self._disk:
            oldest = next(iter(self._disk))
            if oldest == keep and len(self._disk) == 1:
                break
            if oldest == keep:
                self._disk.move_to_end(oldest)
                continue
            self._drop_disk(oldest)
