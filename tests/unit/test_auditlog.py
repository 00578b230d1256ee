"""LaterLines: command-log lines written after their response, a group per store call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mailproxy.auditlog import LaterLines
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
    lines = LaterLines(writer, backlog=2)
    writer.gate.clear()
    await lines.add(_line(0))
    await asyncio.sleep(0)
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
