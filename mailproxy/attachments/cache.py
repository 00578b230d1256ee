"""Two-tier attachment cache (§10): a memory LRU for small files, a disk tier for large ones.

Content is stored under its computed MD5, so a hit is the right content by construction.
The disk tier is a directory of `<md5[:2]>/<md5>` files; its index is rebuilt from the
directory at start, so it survives a restart. Both tiers expire entries after their TTL
and evict least-recently-used entries beyond their size budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_MD5_NAME = frozenset("0123456789abcdef")


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
        self._disk: OrderedDict[str, tuple[float, int]] = OrderedDict()  # md5 -> (stored, size)
        self._disk_size = 0
        self.hits = 0
        self.misses = 0

    def load(self) -> None:
        """Rebuild the disk index from the directory (oldest first); drop stray spools."""
        if not self.directory.is_dir():
            return
        found: list[tuple[float, str, int]] = []
        for path in self.directory.glob("*/*"):
            name = path.name
            if len(name) == 32 and set(name) <= _MD5_NAME:
                stat = path.stat()
                found.append((stat.st_mtime, name, stat.st_size))
        for path in self.directory.glob(".spool-*"):
            with contextlib.suppress(OSError):
                path.unlink()
        for stored, name, size in sorted(found):
            self._disk[name] = (stored, size)
            self._disk_size += size
        self._evict_disk()

    def _disk_path(self, md5: str) -> Path:
        return self.directory / md5[:2] / md5

    def get(self, md5: str) -> Blob | None:
        now = self._clock()
        item = self._memory.get(md5)
        if item is not None:
            if now - item[0] <= self.limits.memory_ttl:
                self._memory.move_to_end(md5)
                self.hits += 1
                return Blob(md5, len(item[1]), data=item[1])
            self._drop_memory(md5)
        entry = self._disk.get(md5)
        if entry is not None:
            path = self._disk_path(md5)
            if now - entry[0] <= self.limits.disk_ttl and path.exists():
                self._disk.move_to_end(md5)
                self.hits += 1
                return Blob(md5, entry[1], path=path)
            self._drop_disk(md5)
        self.misses += 1
        return None

    def put(self, md5: str, data: bytes | None, spooled: Path | None) -> Blob:
        """Keep fetched content (a small `data`, or a large `spooled` temporary file)."""
        now = self._clock()
        if data is not None and len(data) < self.limits.disk_threshold:
            if len(data) <= self.limits.memory_bytes:
                self._drop_memory(md5)
                self._memory[md5] = (now, data)
                self._memory_size += len(data)
                self._evict_memory()
            return Blob(md5, len(data), data=data)
        return self._put_disk(md5, data, spooled, now)

    def _put_disk(self, md5: str, data: bytes | None, spooled: Path | None, now: float) -> Blob:
        path = self._disk_path(md5)
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
        self._drop_disk(md5, unlink=False)
        self._disk[md5] = (now, size)
        self._disk_size += size
        self._evict_disk(keep=md5)
        return Blob(md5, size, path=path)

    def _drop_memory(self, md5: str) -> None:
        item = self._memory.pop(md5, None)
        if item is not None:
            self._memory_size -= len(item[1])

    def _drop_disk(self, md5: str, *, unlink: bool = True) -> None:
        entry = self._disk.pop(md5, None)
        if entry is not None:
            self._disk_size -= entry[1]
            if unlink:
                with contextlib.suppress(OSError):
                    self._disk_path(md5).unlink()

    def _evict_memory(self) -> None:
        while self._memory_size > self.limits.memory_bytes and self._memory:
            self._drop_memory(next(iter(self._memory)))

    def _evict_disk(self, keep: str | None = None) -> None:
        now = self._clock()
        for md5, (stored, _size) in list(self._disk.items()):
            if now - stored > self.limits.disk_ttl and md5 != keep:
                self._drop_disk(md5)
        while self._disk_size > self.limits.disk_bytes and self._disk:
            oldest = next(iter(self._disk))
            if oldest == keep and len(self._disk) == 1:
                break
            if oldest == keep:
                self._disk.move_to_end(oldest)
                continue
            self._drop_disk(oldest)
