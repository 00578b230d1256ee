"""Tuning of a long-running `serve` process: Python's cyclic collector, and the C heap after
bursts of large requests.

Measured and left out (issue 16): fixed glibc mmap/trim thresholds (mallopt) gave back
12 MB of RSS after bursts of 1000-message requests, but every large request buffer then
came from fresh pages, and batched intake cost 10 % more CPU. Trimming once the burst is
over (HeapTrimmer) gives the same pages back without touching the burst itself."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

# A request body this large is a burst's worth of heap (a 1000-message batch is ~2.5 MB).
LARGE_BODY = 256 * 1024
# Seconds without a large request after which the heap is trimmed.
QUIET_SECONDS = 1.0

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


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """After a burst of large requests, once the process has had none for `quiet` seconds,
    hands the free pages of the C heap back to the system (malloc_trim). glibc keeps what a
    burst of 1000-message batches freed for reuse: 15 MB of RSS with 100,000 queued, for as
    long as the process runs. Trimming during the burst would only make the next request
    fault the pages in again, so each large request moves the trim later."""

    def __init__(self, quiet: float = QUIET_SECONDS,
                 trim: Callable[[], object] | None = None) -> None:
        self._quiet = quiet
        self._trim = trim if trim is not None else _malloc_trim()
        self._pending: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def large_request(self) -> None:
        if self._trim is None:
            return
        if self._pending is not None:
            self._pending.cancel()
        self._pending = asyncio.get_running_loop().call_later(self._quiet, self._run)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _run(self) -> None:
        self._pending = None
        if self._trim is not None:
            self._trim()
