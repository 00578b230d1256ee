"""Process memory tuning of `serve` (mailproxy.heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mailproxy import heap


@pytest.fixture
def collector_state() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_state")
def test_start_up_objects_leave_the_collectors_view() -> None:
    gc.unfreeze()
    heap.tune_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == heap.GC_YOUNG_THRESHOLD
