"""Stopping background tasks for good."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

RECANCEL_SECONDS = 1.0


async def cancel_and_wait(task: asyncio.Task[Any], every: float = RECANCEL_SECONDS) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again every `every` seconds.

    On Python 3.11 a cancellation that arrives just as an inner `asyncio.wait_for` finishes
    can be lost (the result wins; fixed in 3.12, python/cpython#86296); a loop that goes on
    after it would never end, and neither would a shutdown waiting for it. Seen in CI: the
    IMAP poller, whose client library waits with wait_for. Exceptions other than the
    cancellation are raised, as by `await task`.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    with contextlib.suppress(asyncio.CancelledError):
        await task
