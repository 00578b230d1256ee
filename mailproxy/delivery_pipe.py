"""The command/reply exchange of one SMTP transaction, pipelined (RFC 2920) when offered.

aiosmtplib's protocol reads one reply per command and drops bytes that arrive while an
earlier reply waits to be picked up, so a pipelined group cannot be read through it. For
the span of one transaction a `Pipeline` lends the connection's transport to `_Replies`,
which parses every reply in the order it arrives, and hands it back afterwards: aiosmtplib
keeps connecting, TLS, STARTTLS, AUTH, EHLO parsing, NOOP, RSET and QUIT.

MAIL, every RCPT and DATA go out in one write and their replies are read in order; the
content follows the 354 (RFC 2920 §3.1: DATA ends a group). With CHUNKING (RFC 3030) the
group ends with BDAT <size> LAST and the content itself, so one write carries it all.
Both exchanges raise aiosmtplib's own exceptions, so that delivery.py classifies failures
the same either way.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Protocol, cast

import aiosmtplib

CLOSING = 421  # the relay is ending the session; aiosmtplib closes on it too
START_INPUT = 354
MAX_LINE = 8192
MAX_REPLY = MAX_LINE * 4  # a reply with all its continuation lines


class Exchange(Protocol):
    """Commands of one transaction and their replies, in order."""

    def send(self, commands: Sequence[bytes], tail: Sequence[bytes] = ()) -> None: ...

    async def reply(self) -> aiosmtplib.SMTPResponse: ...

    async def content(self, pieces: Sequence[bytes]) -> aiosmtplib.SMTPResponse: ...

    async def settle(self) -> bool: ...

    def release(self) -> None: ...


def open_exchange(smtp: aiosmtplib.SMTP, pipelining: bool) -> Exchange:
    """A Pipeline when the relay advertised PIPELINING, else one command per round trip."""
    return Pipeline(smtp) if pipelining else OneByOne(smtp)


class OneByOne:
    """Each command written when its reply is asked for, through aiosmtplib."""

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self._smtp = smtp
        self._commands: collections.deque[bytes] = collections.deque()

    def send(self, commands: Sequence[bytes], tail: Sequence[bytes] = ()) -> None:
        if any(tail):
            raise ValueError("content after the commands needs PIPELINING")
        self._commands.extend(commands)

    async def reply(self) -> aiosmtplib.SMTPResponse:
        return await self._smtp.execute_command(self._commands.popleft())

    async def content(self, pieces: Sequence[bytes]) -> aiosmtplib.SMTPResponse:
        protocol = self._smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        for piece in pieces:
            protocol.write(piece)
        return await protocol.read_response()

    async def settle(self) -> bool:
        """Commands not sent yet are dropped: nothing is left to read."""
        self._commands.clear()
        return True

    def release(self) -> None:
        return None


class Pipeline:
    """Commands written together, their replies read in order from a borrowed transport."""

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        protocol = smtp.protocol
        transport = protocol.transport if protocol is not None else None
        if protocol is None or transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._protocol = protocol
        # uvloop's transports are not asyncio.Transport instances, but have its methods
        self._transport = cast(asyncio.Transport, transport)
        self._replies = _Replies(protocol)
        self._due = 0
        transport.set_protocol(self._replies)

    def send(self, commands: Sequence[bytes], tail: Sequence[bytes] = ()) -> None:
        """One write: the commands, then `tail` (the pieces of the content of a BDAT among
        them), handed over as separate buffers (a gathered write), not copied."""
        self._write([b"".join([command + b"\r\n" for command in commands]), *tail],
                    len(commands))

    async def reply(self) -> aiosmtplib.SMTPResponse:
        self._due -= 1
        reply = await self._replies.next()
        if reply.code == CLOSING:
            self._transport.close()
        return reply

    async def content(self, pieces: Sequence[bytes]) -> aiosmtplib.SMTPResponse:
        self._write(pieces, 1)
        return await self.reply()

    async def settle(self) -> bool:
        """Read the replies still due after an early refusal; False if the session is out
        of step (lost, or waiting for content after a 354 that should not have come)."""
        try:
            while self._due > 0:
                if self._transport.is_closing():
                    return False
                if (await self.reply()).code == START_INPUT:
                    return False
        except (aiosmtplib.SMTPException, OSError):
            return False
        return True

    def release(self) -> None:
        """Give the transport back to aiosmtplib for RSET, NOOP, QUIT and the next send."""
        if not self._transport.is_closing():
            self._transport.set_protocol(self._protocol)

    def _write(self, pieces: Sequence[bytes], replies: int) -> None:
        if self._transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._transport.writelines([piece for piece in pieces if piece])
        self._due += replies


class _Replies(asyncio.Protocol):
    """Parses every reply that arrives; connection events go on to aiosmtplib's protocol,
    so that the aiosmtplib client sees a lost connection as it would have."""

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self._inner = inner
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the lines so far of a multi-line reply
        self._size = 0
        self._ready: collections.deque[aiosmtplib.SMTPResponse] = collections.deque()
        self._failure: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def next(self) -> aiosmtplib.SMTPResponse:
        while not self._ready:
            if self._failure is not None:
                raise self._failure
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._ready.popleft()

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
        self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _parse(self) -> None:
        buffer, start = self._buffer, 0
        while (end := buffer.find(b"\n", start)) >= 0:
            self._line(bytes(buffer[start:end + 1]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")

    def _line(self, line: bytes) -> None:
        self._size += len(line)
        if len(line) > MAX_LINE or self._size > MAX_REPLY:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        try:
            code = int(line[:3])
        except ValueError:
            text = line.decode("utf-8", errors="ignore")
            raise aiosmtplib.SMTPResponseException(
                -1, f"Malformed SMTP response line: {text}") from None
        self._lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            message = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
            self._ready.append(aiosmtplib.SMTPResponse(code, message))
            self._lines, self._size = [], 0
