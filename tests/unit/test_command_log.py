"""The command log line written just after the response (MailService.record_command_after),
over a real SQLite store whose log writes the test can hold back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from mailproxy.model import CommandEntry
from mailproxy.service import Caller, MailService
from mailproxy.store.sqlite import SqliteStore
from tests.conftest import FakeClock
from tests.unit.test_worker import Plain, _service


class Held(SqliteStore):
    """The real store; a log write (under `held`, a path prefix) waits for `gate`."""

    gate = asyncio.Event()
    held = "/"

    async def log_commands(self, entries: Sequence[CommandEntry]) -> None:
        if any(e.endpoint.split(" ", 1)[1].startswith(self.held) for e in entries):
            await self.gate.wait()
        await super().log_commands(entries)


@pytest.fixture
async def store() -> AsyncIterator[Held]:
    s = Held(":memory:", Plain())
    s.gate = asyncio.Event()
    await s.open()
    yield s
    await s.close()


async def _endpoints(service: MailService) -> list[str]:
    _total, entries = await service.command_log(
        Caller(), tenant_id=None, since_ts=None, until_ts=None, endpoint=None, limit=100,
        offset=0)
    return [e.endpoint for e in entries]


async def test_the_caller_is_not_held_up_but_reads_its_own_line(store: Held) -> None:
    service = await _service(store, FakeClock())
    store.gate.clear()
    # Returns while the write is held back: the response would not wait for it.
    await asyncio.wait_for(service.record_command_after(
        "POST", "/commands/add-messages", "acme", {"messages": []}, 200), 1)
    reading = asyncio.create_task(_endpoints(service))
    await asyncio.sleep(0.05)
    assert not reading.done()  # a read of the log waits for the line begun before it
    store.gate.set()
    assert await asyncio.wait_for(reading, 5) == ["POST /commands/add-messages"]


async def test_steady_writes_never_hold_a_reader_up(store: Held) -> None:
    service = await _service(store, FakeClock())
    store.held = "/later"  # the lines begun after the read are held back
    await service.record_command_after("POST", "/a", None, {}, 200)
    reading = asyncio.create_task(_endpoints(service))
    await asyncio.sleep(0)  # the read starts (and sees what is being written) first
    for n in range(20):
        await service.record_command_after("POST", f"/later/{n}", None, {}, 200)
    assert "POST /a" in await asyncio.wait_for(reading, 5)
    store.gate.set()
    await service.settle_command_log()
    assert len(await _endpoints(service)) == 21
