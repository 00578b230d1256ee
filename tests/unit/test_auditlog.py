"""LaterLines: command-log lines written after their response, a group per store call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mailproxy.auditlog import GROUP, LaterLines
from mailproxy.model import CommandEntry


def _line(n: int) -> CommandEntry:
    return CommandEntry(command_ts=n, endpoint=f"POST /x/{n}", tenant_id=None, payload={},
                        response_status=200)


class Writer:
    """Records each store call; a call waits for `gate` while it is clear."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def log_commands(self, entries: Sequence[CommandEntry]) -> None:
        await self.gate.wait()
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        self.calls.append([e.command_ts for e in entries])


async def test_lines_handed_in_during_a_write_share_the_next_call() -> None:
    writer = Writer()
    lines = LaterLines(writer, backlog=100)
    writer.gate.clear()
    await lines.add(_line(0))
    await asyncio.sleep(0)  # the first write begins, and is held
    for n in range(1, 6):
        await lines.add(_line(n))  # none of them waits
    writer.gate.set()
    await lines.settle(5)
    assert writer.calls == [[0], [1, 2, 3, 4, 5]]


async def test_past_the_backlog_a_caller_waits_for_its_own_line() -> None:
    writer = Writer()
    lines = LaterLines(writer, backlog=3)
    writer.gate.clear()
    await lines.add(_line(0))
    await asyncio.sleep(0)  # being written: counts toward the backlog
    await lines.add(_line(1))
    await lines.add(_line(2))
    third = asyncio.create_task(lines.add(_line(3)))
    await asyncio.sleep(0.05)
    assert not third.done()
    writer.gate.set()
    await asyncio.wait_for(third, 5)
    assert writer.calls == [[0], [1, 2, 3]]


async def test_a_failed_write_is_reported_and_later_lines_are_still_written(
        caplog: pytest.LogCaptureFixture) -> None:
    writer = Writer()
    lines = LaterLines(writer, backlog=100)
    writer.fail = True
    await lines.add(_line(0))
    await asyncio.wait_for(lines.settle(), 5)  # a failure does not leave a reader waiting
    assert "command log write failed for 1 line(s), the first POST /x/0: OSError" in caplog.text
    await lines.add(_line(1))
    await lines.settle(5)
    assert writer.calls == [[1]]


async def test_a_reader_is_not_held_by_a_write_cut_off_at_shutdown() -> None:
    writer = Writer()
    lines = LaterLines(writer, backlog=0)
    writer.gate.clear()
    waiting = asyncio.create_task(lines.add(_line(0)))  # over the backlog: waits for its line
    await asyncio.sleep(0)
    for task in asyncio.all_tasks():
        if task.get_name() == "command-log":
            task.cancel()
    await asyncio.wait_for(waiting, 5)
    await asyncio.wait_for(lines.settle(), 5)


async def test_lines_waited_for_and_lines_not_keep_one_order() -> None:
    """A dashboard line (its caller waits) after REST lines (not waited for) is written
    after them: the replay export relies on the order lines came in."""
    writer = Writer()
    lines = LaterLines(writer, backlog=100)
    writer.gate.clear()
    await lines.add(_line(0))
    await asyncio.sleep(0)  # the first write begins, and is held
    await lines.add(_line(1))
    waited = asyncio.create_task(lines.add_and_wait(_line(2)))
    await asyncio.sleep(0.05)
    assert not waited.done()
    writer.gate.set()
    await asyncio.wait_for(waited, 5)
    assert [n for call in writer.calls for n in call] == [0, 1, 2]


async def test_a_long_backlog_is_written_in_groups() -> None:
    writer = Writer()
    lines = LaterLines(writer, backlog=10_000)
    writer.gate.clear()
    await lines.add(_line(0))
    await asyncio.sleep(0)
    for n in range(1, 2 * GROUP + 2):
        await lines.add(_line(n))
    writer.gate.set()
    await lines.settle(5)
    assert [len(call) for call in writer.calls] == [1, GROUP, GROUP, 1]


async def test_lines_being_written_count_toward_the_backlog() -> None:
    writer = Writer()
    lines = LaterLines(writer, backlog=2)
    writer.gate.clear()
    await lines.add(_line(0))
    await lines.add(_line(1))
    await asyncio.sleep(0)  # both taken, being written
    third = asyncio.create_task(lines.add(_line(2)))
    await asyncio.sleep(0.05)
    assert not third.done()
    writer.gate.set()
    await asyncio.wait_for(third, 5)


async def test_after_a_cancelled_writer_later_lines_are_written_and_waited_for() -> None:
    writer = Writer()
    lines = LaterLines(writer, backlog=100)
    writer.gate.clear()
    await lines.add(_line(0))
    for task in asyncio.all_tasks():
        if task.get_name() == "command-log":
            task.cancel()
    await asyncio.sleep(0)
    await lines.add(_line(1))
    reading = asyncio.create_task(lines.settle())
    await asyncio.sleep(0.05)
    assert not reading.done()  # the line handed in after the cancel is waited for
    writer.gate.set()
    await asyncio.wait_for(reading, 5)
    assert writer.calls == [[0, 1]]
