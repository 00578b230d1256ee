"""One SQLite file, one running process: a second store on the same file is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailproxy.errors import StoreError
from mailproxy.store.sqlite import SqliteStore


class Plain:
    def encrypt(self, value: str | None) -> str | None:
        return value

    def decrypt(self, value: str | None) -> str | None:
        return value


async def test_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "mail_service.db")
    first = SqliteStore(path, Plain())
    await first.open()
    second = SqliteStore(path, Plain())
    with pytest.raises(StoreError, match="in use by another running mail-proxy process"):
        await second.open()
    await second.close()
    await first.close()
    third = SqliteStore(path, Plain())
    await third.open()  # the lock went with the first process's store
    await third.close()
