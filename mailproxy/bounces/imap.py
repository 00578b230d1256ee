"""IMAP mailbox poller (aioimaplib): the machinery shared by the bounce and PEC pollers.

One poll: take the poller lease (so one process polls a mailbox at a time), connect, log
in, SELECT (or EXAMINE when the mailbox must stay untouched), compare UIDVALIDITY with the
stored cursor (a change restarts from UID 0), UID SEARCH for mail after the last UID, FETCH
it in chunks and hand each chunk to `process`, which commits what it found together with
the new cursor. Only then is the chunk flagged \\Seen or moved, when asked. Connection
failures back off (1 s doubling to 5 min) and recover; `process` is expected to survive
unparsable mail (the bounce handler skips it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aioimaplib import IMAP4, IMAP4_SSL

from mailproxy.bounces.model import MailboxCursor
from mailproxy.bounces.service import BounceStore, Clock
from mailproxy.tasks import cancel_and_wait

log = logging.getLogger("mailproxy.bounces.imap")

CHUNK = 200  # messages per FETCH
COMMIT = 50  # messages per transaction
MAX_PAUSE = 5.0
MAX_BACKOFF = 300.0
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCH_UID = re.compile(rb"\bUID (\d+)")

Fetched = Sequence[tuple[int, bytes]]
Process = Callable[[MailboxCursor, Fetched], Awaitable[None]]


class ImapError(Exception):
    """The server refused a command (login, select, search, fetch)."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """Where to read, and what to do with mail once it is processed."""

    name: str  # cursor and lease key: "bounce", "pec:<tenant>/<account>"
    host: str
    port: int
    user: str
    password: str
    folder: str = "INBOX"
    ssl: bool = True
    mark_seen: bool = False
    move_to: str | None = None
    timeout: float = 30.0
    ca_file: str | None = None  # trusted besides the system CA store (GMP_BOUNCE_IMAP_CA_FILE)

    @property
    def read_only(self) -> bool:
        return not self.mark_seen and not self.move_to


def _ok(response: Any, what: str) -> Any:
    if response.result != "OK":
        detail = b" ".join(bytes(x) for x in response.lines[-1:]).decode("utf-8", "replace")
        raise ImapError(f"{what} refused: {detail}")
    return response


def _fetched(lines: Sequence[Any]) -> list[tuple[int, bytes]]:
    """(uid, bytes) pairs from a UID FETCH response: a `* n FETCH (UID u BODY[] {len}` line
    followed by the literal (a bytearray)."""
    out: list[tuple[int, bytes]] = []
    uid: int | None = None
    for line in lines:
        if isinstance(line, bytearray):
            if uid is not None:
                out.append((uid, bytes(line)))
            uid = None
            continue
        match = _FETCH_UID.search(line) if b"FETCH" in line else None
        if match is not None:
            uid = int(match.group(1))
    return out


@functools.lru_cache(maxsize=8)
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: the system CA store, plus `ca_file` when given (a missing
    or unreadable file fails the poll with its reason). Kept: loading the store is slow."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class Session:
    """One logged-in IMAP connection on one folder."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self._imap: Any = None

    async def __aenter__(self) -> Session:
        box = self.box
        if box.ssl:
            context = await asyncio.to_thread(tls_context, box.ca_file)
            self._imap = IMAP4_SSL(host=box.host, port=box.port, timeout=box.timeout,
                                   ssl_context=context)
        else:
            self._imap = IMAP4(host=box.host, port=box.port, timeout=box.timeout)
        try:
            await self._imap.wait_hello_from_server()
            _ok(await self._imap.login(box.user, box.password), "LOGIN")
        except BaseException:
            await self._drop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._imap.logout(), self.box.timeout)
        await self._drop()

    async def _drop(self) -> None:
        imap, self._imap = self._imap, None
        transport = getattr(getattr(imap, "protocol", None), "transport", None)
        if transport is not None:
            transport.close()
        task = getattr(imap, "_client_task", None)
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved: a failed connect is reported by our caller

    async def open_folder(self) -> int:
        """SELECT (EXAMINE when read-only); the folder's UIDVALIDITY."""
        imap = self._imap
        folder = self.box.folder
        if self.box.read_only:
            response = await asyncio.wait_for(imap.examine(folder), self.box.timeout)
        else:
            response = await imap.select(folder)
        _ok(response, f"SELECT {folder}")
        if self.box.read_only:
            # aioimaplib moves to SELECTED only on SELECT; EXAMINE selects just the same.
            imap.protocol.state = "SELECTED"
        found = _UIDVALIDITY.search(b"\n".join(bytes(x) for x in response.lines))
        if found is None:
            raise ImapError(f"no UIDVALIDITY for {folder}")
        return int(found.group(1))

    async def uids_after(self, last_uid: int) -> list[int]:
        response = _ok(await self._imap.uid_search(f"UID {last_uid + 1}:*", charset=None),
                       "UID SEARCH")
        uids: set[int] = set()
        for line in response.lines[:-1]:
            uids.update(int(x) for x in bytes(line).split() if x.isdigit())
        # `n:*` always includes the highest UID, even when it is below n.
        return sorted(u for u in uids if u > last_uid)

    async def fetch(self, uids: Sequence[int]) -> list[tuple[int, bytes]]:
        wanted = ",".join(str(u) for u in uids)
        response = _ok(await asyncio.wait_for(
            self._imap.uid("fetch", wanted, "(UID BODY.PEEK[])"), self.box.timeout * 4),
            "UID FETCH")
        return _fetched(response.lines)

    async def done(self, uids: Sequence[int]) -> None:
        """Flag or move processed mail, as configured (never in read-only mode)."""
        if not uids or self.box.read_only:
            return
        wanted = ",".join(str(u) for u in uids)
        if self.box.move_to:
            _ok(await self._imap.uid("move", wanted, self.box.move_to), "UID MOVE")
        elif self.box.mark_seen:
            _ok(await self._imap.uid("store", wanted, "+FLAGS.SILENT", r"(\Seen)"),
                "UID STORE")


class Poller:
    """Polls one mailbox every `interval` seconds while `source` yields its settings.

    `source` is read before each poll, so a settings change (PUT /instance, reload) takes
    effect at the next one; None means polling is off.
    """

    def __init__(self, name: str, source: Callable[[], Awaitable[tuple[Mailbox | None, float]]],
                 process: Process, store: BounceStore, clock: Clock, owner: str, *,
                 duty: Callable[[], float] = lambda: 1.0) -> None:
        self.name = name
        self.duty = duty
        self._source = source
        self._process = process
        self._store = store
        self._clock = clock
        self._owner = owner
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = 0.0
        self.polls = 0  # completed polls (tests and /status may read it)
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name=f"poll-{self.name}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        with contextlib.suppress(Exception):
            await self._store.release_lease(self.name, self._owner)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            interval = 60.0
            try:
                box, interval = await self._source()
                if box is not None:
                    await self.poll_once(box, interval)
                    self._backoff = 0.0
                    self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection, server, store: back off and try again
                self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("mailbox %s: poll failed (%s); next try in %.0f s", self.name,
                            self.last_error, self._backoff)
            delay = self._backoff or interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def poll_once(self, box: Mailbox, interval: float) -> bool:
        """One poll, if this process holds the lease; True when it polled."""
        lease = max(60.0, 3 * interval)
        now = self._clock.now()
        if not await self._store.acquire_lease(self.name, self._owner, now, now + lease):
            return False
        async with Session(box) as session:
            uidvalidity = await session.open_folder()
            cursor = await self._store.get_cursor(self.name)
            last = 0
            if cursor is not None and cursor.uidvalidity == uidvalidity:
                last = cursor.last_uid
            elif cursor is not None:
                log.warning("mailbox %s: UIDVALIDITY changed (%d -> %d); rescanning",
                            self.name, cursor.uidvalidity, uidvalidity)
            uids = await session.uids_after(last)
            for start in range(0, len(uids), CHUNK):
                chunk = uids[start:start + CHUNK]
                fetched = sorted(await session.fetch(chunk))
                await self._commit(uidvalidity, chunk, fetched)
                await session.done(chunk)
                now = self._clock.now()
                await self._store.acquire_lease(self.name, self._owner, now, now + lease)
        self.polls += 1
        return True

    async def _commit(self, uidvalidity: int, chunk: Sequence[int], fetched: Fetched) -> None:
        """Process a fetched chunk in small transactions, each moving the cursor to its last
        UID, paced so that this work takes at most `duty()` of the time (asked after each
        transaction: the dispatcher shares the event loop, the database writer and the CPU)."""
        loop = asyncio.get_running_loop()
        for start in range(0, max(1, len(fetched)), COMMIT):
            part = fetched[start:start + COMMIT]
            last = part[-1][0] if start + COMMIT < len(fetched) else chunk[-1]
            began = loop.time()
            await self._process(MailboxCursor(self.name, uidvalidity, last), part)
            duty = self.duty()
            if duty < 1.0:
                spent = loop.time() - began
                await asyncio.sleep(min(MAX_PAUSE, spent * (1.0 - duty) / duty))
