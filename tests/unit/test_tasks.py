"""Stopping background tasks (mailproxy.tasks)."""

from __future__ import annotations

import asyncio

import pytest

from mailproxy.tasks import cancel_and_wait


async def test_a_task_that_loses_a_cancellation_is_still_stopped() -> None:
    """As a loop whose cancellation was swallowed by an inner wait_for (Python 3.11) goes on
    waiting: the next cancellation, a moment later, ends it."""
    rounds = 0

    async def loop_that_swallows_once() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if rounds == 1:
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    task = asyncio.create_task(loop_that_swallows_once())
    await asyncio.sleep(0)

    await asyncio.wait_for(cancel_and_wait(task, every=0.05), timeout=2)

    assert task.cancelled() and rounds == 2


async def test_an_error_the_task_ends_with_is_raised() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_a_finished_task_is_left_as_it_is() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task

    await cancel_and_wait(task)
    assert not task.cancelled()
