"""PriorityLane: freed slots go to the most urgent waiter, cancelled waiters lose nothing."""

from __future__ import annotations

import asyncio

from mailproxy.lane import PriorityLane


async def _holder(lane: PriorityLane, priority: int, name: str, order: list[str],
                  gate: asyncio.Event) -> None:
    await lane.acquire(priority)
    order.append(name)
    await gate.wait()
    lane.release()


async def test_a_freed_slot_goes_to_the_most_urgent_waiter_then_by_arrival() -> None:
    lane = PriorityLane(1)
    order: list[str] = []
    gate = asyncio.Event()
    await lane.acquire(3)  # the one slot is taken
    tasks = [asyncio.create_task(_holder(lane, p, n, order, gate))
             for p, n in ((3, "low-1"), (3, "low-2"), (0, "immediate"), (1, "high"))]
    await asyncio.sleep(0)
    gate.set()
    lane.release()
    await asyncio.gather(*tasks)
    assert order == ["immediate", "high", "low-1", "low-2"]


async def test_a_cancelled_waiter_does_not_keep_or_lose_a_slot() -> None:
    lane = PriorityLane(1)
    await lane.acquire(3)
    waiter = asyncio.create_task(lane.acquire(0))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    lane.release()
    await asyncio.wait_for(lane.acquire(3), 1)  # the slot came back


async def test_cancelled_just_after_the_hand_over_gives_the_slot_back() -> None:
    lane = PriorityLane(1)
    await lane.acquire(3)
    waiter = asyncio.create_task(lane.acquire(0))
    await asyncio.sleep(0)
    lane.release()  # handed to the waiter, which has not resumed yet
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await asyncio.wait_for(lane.acquire(3), 1)
