"""The command/reply exchange of SMTP transactions, pipelined (RFC 2920) when offered.

aiosmtplib's protocol reads one reply per command and drops bytes that arrive while an
earlier reply waits to be picked up, so a pipelined group cannot be read through it. On a
relay that offers PIPELINING, a `Pipeline` lends the connection's transport to `_Replies`
for as long as the connection is pooled: every write registers the replies it is owed, in
order, and each reply that arrives settles the oldest one owed. aiosmtplib keeps
connecting, TLS, STARTTLS, AUTH, EHLO parsing and QUIT (the transport is handed back for
it).

MAIL, every RCPT and DATA go out in one write and their replies are read in order; the
content follows the 354 (RFC 2920 §3.1: DATA ends a group). Once the content and its end
mark are out, the transaction ends with the next reply, whatever it says, so the next
transaction on the connection may write its commands at once, behind it
(`Transaction.overlaps`): the relay finds them waiting when it has answered the content,
instead of a round trip later. Not every relay closes the transaction when it refuses a
content (Postfix keeps it open and answers the next MAIL with 503 "nested MAIL command"), so
a transaction begins with RSET, in the same write, when the content before it was refused
(`reset`); one written behind a content whose reply had not come yet (`behind`) and met
that 503 is sent again on another connection (delivery.py). With CHUNKING (RFC 3030) the
group ends with BDAT <size> LAST and the content itself, so one write carries it all; it
does not overlap, as the state of a session after a refused BDAT is the relay's to define.
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

Reply = asyncio.Future[aiosmtplib.SMTPResponse]


class Exchange(Protocol):
    """Commands of one transaction and their replies, in order."""

    @property
    def overlaps(self) -> bool:
        """Whether the next transaction may write behind this one once its content is out."""
        ...

    @property
    def reset(self) -> bool:
        """Whether the transaction must begin with RSET (the content before it was refused)."""
        ...

    @property
    def behind(self) -> bool:
        """Whether it is written before the reply to the content before it came."""
        ...

    async def after_previous(self) -> None:
        """Until the reply to the content before it is in (at once if not `behind`), whatever
        that reply is: the relay only starts on this transaction then."""
        ...

    def send(self, commands: Sequence[bytes], tail: Sequence[bytes] = ()) -> None: ...

    def send_content(self, pieces: Sequence[bytes]) -> None:
        """The content after DATA's 354, end mark included; its reply is the next one."""
        ...

    async def reply(self) -> aiosmtplib.SMTPResponse: ...

    async def settle(self) -> bool: ...


class OneByOne:
    """Each command written when its reply is asked for, through aiosmtplib."""

    overlaps = reset = behind = False

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self._smtp = smtp
        self._due: collections.deque[bytes | None] = collections.deque()  # None: content

    def send(self, commands: Sequence[bytes], tail: Sequence[bytes] = ()) -> None:
        if any(tail):
            raise ValueError("content after the commands needs PIPELINING")
        self._due.extend(commands)

    async def after_previous(self) -> None:
        return None

    def send_content(self, pieces: Sequence[bytes]) -> None:
        protocol = self._protocol()
        for piece in pieces:
            protocol.write(piece)
        self._due.append(None)

    async def reply(self) -> aiosmtplib.SMTPResponse:
        command = self._due.popleft()
        if command is not None:
            return await self._smtp.execute_command(command)
        return await self._protocol().read_response()

    async def settle(self) -> bool:
        """Commands not sent yet are dropped: nothing is left to read."""
        self._due.clear()
        return True

    def _protocol(self) -> aiosmtplib.protocol.SMTPProtocol:
        protocol = self._smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        return protocol


class Pipeline:
    """A pooled connection's transport while it is lent to `_Replies`: transactions and
    single commands (NOOP, RSET) write through it, each awaiting the replies it is owed."""

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        protocol = smtp.protocol
        transport = protocol.transport if protocol is not None else None
        if protocol is None or transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._protocol = protocol
        # uvloop's transports are not asyncio.Transport instances, but have its methods
        self._transport = cast(asyncio.Transport, transport)
        self._replies = _Replies(protocol, transport)
        self._latest: Transaction | None = None
        transport.set_protocol(self._replies)

    @property
    def owed(self) -> int:
        """Replies written for and not arrived yet."""
        return self._replies.owed

    def transaction(self) -> Transaction:
        replies = self._replies
        reset, previous = replies.refused_content, replies.last_content
        replies.refused_content = False  # the RSET this transaction begins with clears it
        self._latest = Transaction(self, reset, previous if replies.contents_owed else None)
        return self._latest

    @property
    def waits_on_earlier(self) -> bool:
        """Whether an earlier transaction still waits for the reply to its content: the
        latest one has not sent its own, so every content reply owed is an earlier one's."""
        latest = self._latest
        return self._replies.contents_owed > 0 and latest is not None and not latest.content_sent

    async def command(self, command: bytes) -> aiosmtplib.SMTPResponse:
        """One command, after whatever is still owed on the connection."""
        if command == b"RSET":
            self._replies.refused_content = False
        (reply,) = self.write([command + b"\r\n"], 1)
        return await self.answer(reply)

    def write(self, pieces: Sequence[bytes], replies: int, content: bool = False
              ) -> list[Reply]:
        """One gathered write (the buffers are not copied); the replies it is owed. With
        `content`, the write ends a content (after DATA's 354) and its one reply is that of
        the end mark."""
        if self._transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        owed = self._replies.expect(replies, content)
        self._transport.writelines([piece for piece in pieces if piece])
        return owed

    async def answer(self, reply: Reply) -> aiosmtplib.SMTPResponse:
        response = await reply
        if response.code == CLOSING:
            self._transport.close()
        return response

    @property
    def closing(self) -> bool:
        return self._transport.is_closing()

    def release(self) -> None:
        """Give the transport back to aiosmtplib (QUIT); nothing may be owed any more."""
        if not self._transport.is_closing():
            self._transport.set_protocol(self._protocol)


class Transaction:
    """The replies of one transaction on a Pipeline, read in the order they were written."""

    overlaps = True

    def __init__(self, pipeline: Pipeline, reset: bool, previous: Reply | None) -> None:
        self._pipeline = pipeline
        self._due: collections.deque[Reply] = collections.deque()
        self._previous = previous  # the reply owed to the content this one is written behind
        self.reset = reset
        self.behind = previous is not None
        self.content_sent = False

    async def after_previous(self) -> None:
        if self._previous is not None and not self._previous.done():
            # asyncio.wait: neither the previous reply's failure nor its cancellation (its
            # owner gave up) is raised here; this transaction's own replies tell
            await asyncio.wait([self._previous])

    def send(self, commands: Sequence[bytes], tail: Sequence[bytes] = ()) -> None:
        """One write: the commands, then `tail` (the pieces of the content of a BDAT among
        them), handed over as separate buffers (a gathered write), not copied."""
        head = b"".join([command + b"\r\n" for command in commands])
        self._due.extend(self._pipeline.write([head, *tail], len(commands)))

    def send_content(self, pieces: Sequence[bytes]) -> None:
        self._due.extend(self._pipeline.write(pieces, 1, content=True))
        self.content_sent = True

    async def reply(self) -> aiosmtplib.SMTPResponse:
        return await self._pipeline.answer(self._due.popleft())

    async def settle(self) -> bool:
        """Read the replies still due after an early refusal; False if the session is out
        of step (lost, or waiting for content after a 354 that should not have come)."""
        try:
            while self._due:
                if self._pipeline.closing:
                    return False
                if (await self.reply()).code == START_INPUT:
                    return False
        except (aiosmtplib.SMTPException, OSError):
            return False
        return True


class _Replies(asyncio.Protocol):
    """Parses every reply that arrives and settles the oldest one owed; connection events go
    on to aiosmtplib's protocol, so that the aiosmtplib client sees a lost connection as it
    would have. A reply nobody is owed (a relay out of step, or closing an idle session)
    fails the connection."""

    def __init__(self, inner: asyncio.BaseProtocol,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self._inner = inner
        self._transport = transport  # closed when a reply cannot be read
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the lines so far of a multi-line reply
        self._size = 0
        self._owed: collections.deque[tuple[Reply, bool]] = collections.deque()
        self._failure: Exception | None = None
        self.contents_owed = 0  # replies owed to end marks
        self.last_content: Reply | None = None  # the reply owed to the latest end mark
        # an end mark was refused and no RSET was written since (set as the reply is read,
        # before any task runs, so that a transaction written next sees it)
        self.refused_content = False

    @property
    def owed(self) -> int:
        return len(self._owed)

    def expect(self, count: int, content: bool = False) -> list[Reply]:
        loop = asyncio.get_running_loop()
        replies = [loop.create_future() for _ in range(count)]
        if self._failure is not None:
            for reply in replies:
                _fail_quietly(reply, self._failure)
        else:
            self._owed.extend((reply, content) for reply in replies)
            if content:
                self.contents_owed += count
                self.last_content = replies[-1]
        return replies

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except aiosmtplib.SMTPResponseException as exc:
            # out of step: nothing later on this connection can be trusted
            self._fail(exc)
            if self._transport is not None:
                self._transport.close()

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
        while self._owed:
            _fail_quietly(self._owed.popleft()[0], exc)
        self.contents_owed = 0

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
            self._lines, self._size = [], 0
            if not self._owed:
                raise aiosmtplib.SMTPResponseException(
                    -1, f"Reply nobody asked for: {code} {message}")
            reply, content = self._owed.popleft()
            if content:
                self.contents_owed -= 1
                self.refused_content = self.refused_content or code != 250
            if not reply.done():  # its owner may have given up (a timeout)
                reply.set_result(aiosmtplib.SMTPResponse(code, message))


def _fail_quietly(reply: Reply, exc: Exception) -> None:
    """Fail a reply without asyncio's "exception was never retrieved" if its owner is gone."""
    if not reply.done():
        reply.set_exception(exc)
        reply.exception()
