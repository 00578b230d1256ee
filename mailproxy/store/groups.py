"""Group commit for small writes: calls that arrive while a group is being written are
written together in the next group, in arrival order, as if one after the other.

Each call hands in a few items and gets one result per item. A group that fails is retried
call by call when `isolate` says the failure may be one call's fault (nothing was
committed), so that one bad call never fails the others; any other failure (the database
is away, or the commit's outcome is unknown) reaches every caller of the group.

Under load a writer may also linger: when the previous group was taken a moment ago and
few calls wait, it waits a little for more to share the commit (see Linger).

As with any group commit, a caller that gives up (is cancelled) while its group is being
written may still have its items committed; one that gives up before is not written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mailproxy.errors import StoreError

I = TypeVar("I")  # noqa: E741 - an item written
R = TypeVar("R")  # its result
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Linger:
    """When the previous group was taken less than `busy` s ago and fewer than `gather`
    calls wait, wait up to `wait` s for more (as PostgreSQL's commit_delay). A call after a
    quiet spell is written at once."""

    gather: int
    wait: float
    busy: float


@dataclass(frozen=True, slots=True)
class _Call(Generic[I, R]):
    items: Sequence[I]
    future: asyncio.Future[list[R]]


class GroupWriter(Generic[I, R]):
    """write(items) -> one result per item, for the items of several calls at once."""

    def __init__(self, write: Callable[[list[I]], Awaitable[list[R]]], *, limit: int,
                 isolate: Callable[[Exception], bool], name: str,
                 linger: Linger | None = None) -> None:
        self._write = write
        self._limit = limit  # items per group at most (a larger call is a group by itself)
        self._isolate = isolate
        self._name = name
        self._linger = linger
        self._waiting: collections.deque[_Call[I, R]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._taken_at = float("-inf")  # loop time the last group was taken
        self._gathered: asyncio.Event | None = None  # set when enough calls wait

    async def submit(self, items: Sequence[I]) -> list[R]:
        loop = asyncio.get_running_loop()
        call: _Call[I, R] = _Call(items, loop.create_future())
        self._waiting.append(call)
        if (self._gathered is not None and self._linger is not None
                and len(self._waiting) >= self._linger.gather):
            self._gathered.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name=self._name)
        return await call.future

    async def drain(self) -> None:
        """Wait until every call handed in so far is written (or has failed). Cancelling
        the caller of drain() does not cancel the writing."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        group: list[_Call[I, R]] = []
        try:
            while self._waiting:
                await self._wait_for_more()
                group = self._next_group()
                if len(group) == 1:
                    await self._alone(group[0])
                elif group:
                    await self._together(group)
        except BaseException:  # cancelled, or a bug: nobody may be left waiting forever
            failure = StoreError("write interrupted; its outcome is unknown")
            for call in (*group, *self._waiting):
                _settle(call.future, exc=failure)
            self._waiting.clear()
            raise

    async def _wait_for_more(self) -> None:
        linger = self._linger
        loop = asyncio.get_running_loop()
        if (linger is None or loop.time() - self._taken_at >= linger.busy
                or len(self._waiting) >= linger.gather):
            return
        self._gathered = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(linger.wait):
                    await self._gathered.wait()
        finally:
            self._gathered = None

    def _next_group(self) -> list[_Call[I, R]]:
        self._taken_at = asyncio.get_running_loop().time()
        group: list[_Call[I, R]] = []
        size = 0
        while self._waiting and (not group or size + len(self._waiting[0].items)
                                 <= self._limit):
            call = self._waiting.popleft()
            if not call.future.done():  # a caller that gave up is not written
                group.append(call)
                size += len(call.items)
        return group

    async def _together(self, group: Sequence[_Call[I, R]]) -> None:
        try:
            results = await self._write([item for call in group for item in call.items])
        except Exception as exc:
            if self._isolate(exc):
                for call in group:
                    if not call.future.done():
                        await self._alone(call)
            else:
                for call in group:
                    _settle(call.future, exc=exc)
            return
        offset = 0
        for call in group:
            _settle(call.future, results[offset:offset + len(call.items)])
            offset += len(call.items)

    async def _alone(self, call: _Call[I, R]) -> None:
        try:
            results = await self._write(list(call.items))
        except Exception as exc:
            _settle(call.future, exc=exc)
        else:
            _settle(call.future, results)


def _settle(future: asyncio.Future[T], value: T | None = None, *,
            exc: BaseException | None = None) -> None:
    """Hand a waiting caller its result or exception, unless it gave up."""
    if future.done():  # the caller gave up (cancelled)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert value is not None
        future.set_result(value)
