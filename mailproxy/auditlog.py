"""Command-log lines written just after their response (§3.7), a group at a time.

A REST command's line is handed in without waiting for it to be written
(MailService.record_command_after). One task writes the lines gathered meanwhile, in groups
of at most GROUP lines per store call: a busy instance spends a list append per command, not
a task, a future and a store call (with 16 single-message add-messages at a time, the task
per line was ~25 us of the event loop per request). Lines whose caller waits for them (the
dashboard's, MailService.record_command) join the same queue, so every line is written in
the order it came, which the replay export relies on.

Reads of the log wait for the lines handed in before them (settle), so a caller who reads the
log after its response sees its own command; lines handed in meanwhile are not waited for.
Past `backlog` lines not yet written (a slow database) a caller waits for its own line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from mailproxy.model import CommandEntry

log = logging.getLogger("mailproxy.service")

GROUP = 64  # lines per store call at most


class LineWriter(Protocol):
    async def log_commands(self, entries: Sequence[CommandEntry]) -> None: ...


class LaterLines:
    def __init__(self, writer: LineWriter, *, backlog: int) -> None:
        self._writer = writer
        self._backlog = backlog
        self._waiting: list[CommandEntry] = []
        self._waiting_done: asyncio.Future[None] | None = None  # when the waiting are written
        self._writing = 0  # lines taken by the task and not yet written
        self._writing_done: asyncio.Future[None] | None = None  # when those are written
        self._task: asyncio.Task[None] | None = None

    async def add(self, entry: CommandEntry) -> None:
        """Hand a line in; returns at once, unless `backlog` lines are not yet written."""
        done = self._queue(entry)
        if len(self._waiting) + self._writing > self._backlog:
            await asyncio.shield(done)

    async def add_and_wait(self, entry: CommandEntry) -> None:
        """Hand a line in and wait until it is written (or has failed)."""
        await asyncio.shield(self._queue(entry))

    def _queue(self, entry: CommandEntry) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        self._waiting.append(entry)
        done = self._waiting_done
        if done is None:
            done = self._waiting_done = loop.create_future()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="command-log")
            self._task.add_done_callback(self._ended)
        return done

    async def settle(self, timeout: float | None = None) -> None:
        """Until the lines handed in so far are written, or have failed (at most `timeout`)."""
        pending = [f for f in (self._writing_done, self._waiting_done) if f is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _run(self) -> None:
        while self._waiting:
            lines, done = self._waiting, self._waiting_done
            self._waiting, self._waiting_done = [], None
            self._writing, self._writing_done = len(lines), done
            try:
                for start in range(0, len(lines), GROUP):
                    await self._write(lines[start:start + GROUP])
                    self._writing -= len(lines[start:start + GROUP])
            finally:
                self._writing, self._writing_done = 0, None
                _settle(done)

    async def _write(self, lines: Sequence[CommandEntry]) -> None:
        try:
            await self._writer.log_commands(lines)
        except Exception as exc:  # the commands are done; losing their lines is not fatal
            log.warning("command log write failed for %d line(s), the first %s: %s",
                        len(lines), lines[0].endpoint, type(exc).__name__)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """Cancelled (shutdown), even before it began: nobody may be left waiting for lines
        that no task will write. Lines still waiting go with the next task, if any."""
        if task.cancelled() and task is self._task:
            _settle(self._writing_done)
            _settle(self._waiting_done)
            self._writing, self._writing_done, self._waiting_done = 0, None, None


def _settle(done: asyncio.Future[None] | None) -> None:
    if done is not None and not done.done():
        done.set_result(None)
