"""Tuning of a long-running `serve` process: Python's cyclic collector.

Measured and left out (issue 16): fixed glibc mmap/trim thresholds (mallopt) gave back
12 MB of RSS after bursts of 1000-message requests, but every large request buffer then
came from fresh pages, and batched intake cost 10 % more CPU."""

from __future__ import annotations

import gc

# New container objects between two young collections of the cyclic collector (Python's
# default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Once started: what start-up built (modules, schemas, templates) is moved out of the
    cyclic collector's view, and young collections run every GC_YOUNG_THRESHOLD new
    objects instead of 700. With the defaults a 1000-message request set off some twenty
    collections, and the full ones walked every object of the process: 12 % of the CPU of
    batched intake went to them. Garbage without cycles is freed at once by reference
    counting either way."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
