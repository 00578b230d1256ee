"""The offloaded-files index (§11) on every backend: put, lookup, first download, due, delete."""

from __future__ import annotations

from mailproxy.model import OffloadedFile
from mailproxy.ports import Store
from mailproxy.store.offload_index import offload_index

T0 = 1_800_000_000
DAY = 86400


def _file(file_id: str, *, lifespan: int | None = None, ttl_days: int = 30) -> OffloadedFile:
    expires = T0 + ttl_days * DAY
    return OffloadedFile(file_id, "acme", "file:///srv/x", f"{file_id}/a b.pdf", "a b.pdf",
                         "application/pdf", 12345, T0, expires, lifespan, None, expires)


async def test_index_round_trip_and_schedule(store: Store) -> None:
    index = offload_index(store)
    a, b, c = "a" * 32, "b" * 32, "c" * 32
    await index.put(_file(a))
    await index.put(_file(b, lifespan=2))
    await index.put(_file(c, ttl_days=1))
    assert await index.get(a) == _file(a)
    assert await index.get("f" * 32) is None
    # An upload retried after a failed send replaces its row.
    await index.put(_file(a, ttl_days=5))
    assert (await index.get(a)).expires_ts == T0 + 5 * DAY  # type: ignore[union-attr]
    # First download starts the lifespan countdown; later downloads change nothing.
    await index.mark_downloaded(b, T0 + DAY)
    await index.mark_downloaded(b, T0 + 2 * DAY)
    got = await index.get(b)
    assert got is not None and got.downloaded_ts == T0 + DAY and got.delete_ts == T0 + 3 * DAY
    assert [f.file_id for f in await index.due(T0 + 2 * DAY, 10)] == [c]
    assert [f.file_id for f in await index.due(T0 + 10 * DAY, 10)] == [c, b, a]
    assert [f.file_id for f in await index.due(T0 + 10 * DAY, 1)] == [c]
    await index.delete(c)
    assert await index.get(c) is None
    assert [f.file_id for f in await index.due(T0 + 10 * DAY, 10)] == [b, a]
