"""Command-log lines written just after their response (§3.7), a group at a time.

A REST command's line is handed in without waiting for it to be written
(MailService.record_command_after). One task writes the lines gathered meanwhile with one
store call: a busy instance spends a list append per command, not a task, a future and a
store call (with 16 single-message add-messages at a time, the task per line was ~25 us of
the event loop per request).

Reads of the log wait for the lines handed in before them (settle), so a caller who reads the
log after its response sees its own command; lines handed in meanwhile are not waited for.
Past `backlog` lines waiting (a slow database) a caller waits for its own line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from mailproxy.model import CommandEntry

log = logging.getLogger("mailproxy.service")


class LineWriter(Protocol):
    async def log_commands(self, entries: Sequence[CommandEntry]) -> None: ...


class LaterLines:
    def __init__(self, writer: LineWriter, *, backlog: int) -> None:
        self._writer = writer
        self._backlog = backlog
        self._waiting: list[CommandEntry] = []
        self._waiting_done: asyncio.Future[None] | None = None  # when the waiting are written
        self._writing_done: asyncio.Future[None] | None = None  # when those being written are
        self._task: asyncio.Task[None] | None = None

    async def add(self, entry: CommandEntry) -> None:
        """Hand a line in; returns at once, unless `backlog` lines are waiting already."""
        loop = asyncio.get_running_loop()
        self._waiting.append(entry)
        done = self._waiting_done
        if done is None:
            done = self._waiting_done = loop.create_future()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="command-log")
            self._task.add_done_callback(self._ended)
        if len(self._waiting) > self._backlog:
            await asyncio.shield(done)

    async def settle(self, timeout: float | None = None) -> None:
        """Until the lines handed in so far are written, or have failed (at most `timeout`)."""
        pending = [f for f in (self._writing_done, self._waiting_done) if f is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _run(self) -> None:
        while self._waiting:
            lines, done = self._waiting, self._waiting_done
            self._waiting, self._waiting_done = [], None
            self._writing_done = done
            try:
                await self._writer.log_commands(lines)
            except Exception as exc:  # the commands are done; losing a line is not fatal
                log.warning("command log write failed for %d line(s), the first %s: %s",
                            len(lines), lines[0].endpoint, type(exc).__name__)
            finally:
                self._writing_done = None
                _settle(done)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """Cancelled (shutdown), even before it began: nobody may be left waiting for lines
        that no task will write."""
        if task.cancelled() and task is self._task:
            _settle(self._writing_done)
            _settle(self._waiting_done)


def _settle(done: asyncio.Future[None] | None) -> None:
    if done is not None and not done.done():
        done.set_result(None)
