"""A semaphore that serves its waiters by priority, then by arrival.

The worker claims rows ahead of their send (the claim buffer), so an account's claimed rows
wait for one of its connections. With a FIFO semaphore an `immediate` row claimed after a
backlog of `low` ones waited behind all of them; with this lane it takes the next free slot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class PriorityLane:
    """At most `slots` holders; a freed slot goes to the waiter with the lowest
    (priority, arrival), handed over directly so that no newcomer can take it first."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrival), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            raise

    def release(self) -> None:
        while self._waiting:
            _priority, _arrival, future = heapq.heappop(self._waiting)
            if not future.done():  # cancelled waiters are skipped here, lazily
                future.set_result(None)
                return
        self._free += 1
