"""Group commit of small writes (mailproxy/store/groups.py), with a recording writer."""

from __future__ import annotations

import asyncio

import pytest

from mailproxy.errors import StoreError
from mailproxy.store.groups import GroupWriter, Linger


class Refused(Exception):
    """A statement the database refused: one call's fault."""


class Away(Exception):
    """The database is unreachable: nobody's fault."""


class Recorder:
    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.away = False

    async def write(self, items: list[str]) -> list[str]:
        await asyncio.sleep(0)  # a round trip: later calls queue meanwhile
        if self.away:
            raise Away("connection refused")
        if "bad" in items:
            raise Refused("bad item")
        self.groups.append(list(items))
        return [item.upper() for item in items]


def writer(recorder: Recorder, limit: int = 10) -> GroupWriter[str, str]:
    return GroupWriter(recorder.write, limit=limit, name="test-group",
                       isolate=lambda exc: isinstance(exc, Refused))


async def test_calls_that_wait_together_share_one_write_in_arrival_order() -> None:
    recorder = Recorder()
    group = writer(recorder)
    results = await asyncio.gather(group.submit(["a"]), group.submit(["b", "c"]),
                                   group.submit(["d"]))
    assert results == [["A"], ["B", "C"], ["D"]]
    assert recorder.groups == [["a", "b", "c", "d"]]


async def test_calls_arriving_during_a_write_go_in_the_next_group() -> None:
    recorder = Recorder()
    group = writer(recorder)
    first = asyncio.ensure_future(group.submit(["a"]))
    await asyncio.sleep(0)  # the first group is being written
    later = [asyncio.ensure_future(group.submit([x])) for x in "bc"]
    assert await asyncio.gather(first, *later) == [["A"], ["B"], ["C"]]
    assert recorder.groups == [["a"], ["b", "c"]]


async def test_a_group_holds_at_most_the_limit_and_a_large_call_goes_alone() -> None:
    recorder = Recorder()
    group = writer(recorder, limit=3)
    results = await asyncio.gather(group.submit(["a", "b"]), group.submit(["c", "d"]),
                                   group.submit(["e", "f", "g", "h"]), group.submit(["i"]))
    assert results == [["A", "B"], ["C", "D"], ["E", "F", "G", "H"], ["I"]]
    assert recorder.groups == [["a", "b"], ["c", "d"], ["e", "f", "g", "h"], ["i"]]


async def test_a_refused_call_fails_alone_and_the_others_are_written() -> None:
    recorder = Recorder()
    group = writer(recorder)
    results = await asyncio.gather(group.submit(["a"]), group.submit(["bad"]),
                                   group.submit(["c"]), return_exceptions=True)
    assert results[0] == ["A"] and results[2] == ["C"]
    assert isinstance(results[1], Refused)
    assert recorder.groups == [["a"], ["c"]]


async def test_an_unreachable_database_fails_every_call_of_the_group() -> None:
    recorder = Recorder()
    recorder.away = True
    group = writer(recorder)
    results = await asyncio.gather(group.submit(["a"]), group.submit(["b"]),
                                   return_exceptions=True)
    assert all(isinstance(r, Away) for r in results)
    recorder.away = False
    assert await group.submit(["c"]) == ["C"]  # the next call starts a new group


async def test_a_caller_that_gave_up_before_its_group_is_not_written() -> None:
    recorder = Recorder()
    group = writer(recorder)
    first = asyncio.ensure_future(group.submit(["a"]))
    await asyncio.sleep(0)
    gone = asyncio.ensure_future(group.submit(["b"]))
    kept = asyncio.ensure_future(group.submit(["c"]))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first == ["A"] and await kept == ["C"]
    with pytest.raises(asyncio.CancelledError):
        await gone
    await group.drain()
    assert recorder.groups == [["a"], ["c"]]


class Gated(Recorder):
    """A writer whose writes wait until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def write(self, items: list[str]) -> list[str]:
        await self.gate.wait()
        return await super().write(items)


async def test_a_caller_that_gave_up_during_a_refused_group_is_not_retried() -> None:
    recorder = Gated()
    group = writer(recorder)
    calls = [asyncio.ensure_future(group.submit([x])) for x in ("a", "bad", "c")]
    await asyncio.sleep(0.01)  # the group of three is being written
    calls[2].cancel()
    recorder.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == ["A"] and isinstance(results[1], Refused)
    assert isinstance(results[2], asyncio.CancelledError)
    assert recorder.groups == [["a"]]


async def test_cancelling_a_drain_does_not_stop_the_writing() -> None:
    recorder = Gated()
    group = writer(recorder)
    call = asyncio.ensure_future(group.submit(["a"]))
    await asyncio.sleep(0.01)
    drain = asyncio.ensure_future(group.drain())
    await asyncio.sleep(0.01)
    drain.cancel()
    recorder.gate.set()
    async with asyncio.timeout(5):  # a writer cancelled with the drain answers nobody
        assert await call == ["A"]


async def test_callers_are_answered_when_the_writer_itself_is_cancelled() -> None:
    recorder = Gated()
    group = writer(recorder)
    writing = asyncio.ensure_future(group.submit(["a"]))
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(group.submit(["b"]))
    await asyncio.sleep(0.01)
    assert group._task is not None
    group._task.cancel()  # as the event loop does at shutdown
    async with asyncio.timeout(5):
        results = await asyncio.gather(writing, queued, return_exceptions=True)
    assert all(isinstance(r, StoreError) and "unknown" in str(r) for r in results)
    recorder.gate.set()
    assert await group.submit(["c"]) == ["C"]  # a later call starts a new writer


async def test_under_load_a_writer_lingers_until_enough_calls_wait() -> None:
    recorder = Recorder()
    group = GroupWriter(recorder.write, limit=10, name="test-group",
                        isolate=lambda exc: isinstance(exc, Refused),
                        linger=Linger(gather=3, wait=5, busy=10))
    assert await group.submit(["a"]) == ["A"]  # after a quiet spell: written at once
    later = asyncio.ensure_future(group.submit(["b"]))
    await asyncio.sleep(0.05)
    assert not later.done()  # the previous group was taken just now: wait for company
    rest = await asyncio.gather(group.submit(["c"]), group.submit(["d"]))
    assert await later == ["B"] and rest == [["C"], ["D"]]
    assert recorder.groups == [["a"], ["b", "c", "d"]]


async def test_a_lingering_writer_writes_what_it_has_after_its_wait() -> None:
    recorder = Recorder()
    group = GroupWriter(recorder.write, limit=10, name="test-group",
                        isolate=lambda exc: isinstance(exc, Refused),
                        linger=Linger(gather=3, wait=0.05, busy=10))
    assert await group.submit(["a"]) == ["A"]
    async with asyncio.timeout(5):
        assert await group.submit(["b"]) == ["B"]
    assert recorder.groups == [["a"], ["b"]]
