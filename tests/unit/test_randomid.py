"""Random ids drawn from blocks of os.urandom bytes: well-formed, distinct, per thread."""

from __future__ import annotations

import threading
import time
import uuid

from mailproxy import randomid


def test_ids_are_well_formed_uuids_of_their_version() -> None:
    for text, version in ((randomid.uuid4(), 4), (randomid.uuid7(), 7)):
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == version and parsed.variant == uuid.RFC_4122


def test_ids_stay_distinct_across_many_blocks_and_threads() -> None:
    seen: list[str] = []

    def draw() -> None:
        seen.extend(randomid.uuid4() for _ in range(5000))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    draw()
    assert len(set(seen)) == len(seen) == 25_000


def test_time_ordered_ids_sort_by_their_millisecond() -> None:
    first = randomid.uuid7()
    time.sleep(0.002)
    assert randomid.uuid7() > first
