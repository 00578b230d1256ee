"""Message pks: UUIDs of version 7, so that new rows land at the end of the pk index."""

from __future__ import annotations

import time
import uuid

from mailproxy.store.rows import new_pk


def test_pks_are_canonical_version_7_uuids() -> None:
    for _ in range(500):
        pk = new_pk()
        parsed = uuid.UUID(pk)
        assert str(parsed) == pk
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_pks_carry_their_creation_time_and_sort_by_it() -> None:
    before = int(time.time() * 1000)
    first = new_pk()
    time.sleep(0.002)
    second = new_pk()
    after = int(time.time() * 1000)
    assert before <= uuid.UUID(first).int >> 80 <= uuid.UUID(second).int >> 80 <= after
    assert first < second
    assert len({new_pk() for _ in range(1000)}) == 1000
