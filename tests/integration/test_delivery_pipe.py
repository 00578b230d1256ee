"""Every reply class at every step of a transaction: pipelined, one by one, and chunked.

aiosmtpd cannot refuse the DATA command itself nor misbehave, so these tests use a scripted
relay on loopback: it answers each command from a table, follows RFC 2920 (after a refused
MAIL every later command gets 503, DATA after no accepted RCPT gets 554) unless told to
misbehave, and records how the commands arrived. In "chunked" mode it also offers
CHUNKING (RFC 3030) and takes BDAT.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mailproxy.delivery import SmtpPool
from mailproxy.delivery_pipe import _Replies
from mailproxy.errors import DeliveryError, PermanentFailure, TemporaryFailure
from mailproxy.model import Account

MESSAGE = b"Subject: hi\r\n\r\n.dot line\r\nbody\r\n"


class Scripted(asyncio.Protocol):
    """One session of the scripted relay."""

    def __init__(self, relay: ScriptedRelay) -> None:
        self.relay = relay
        self.buffer = b""
        self.in_data = False
        self.bdat: int | None = None  # bytes of a BDAT chunk still to come
        self.chunk = b""
        self.mail_ok = False
        self.rcpts = 0
        self.held = False  # the reply to a content is held back (relay.hold_end)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.relay.connections += 1
        transport.write(b"220 scripted ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.relay.chunks.append(data)
        if self.held:
            self.relay.early.append(data)
        self.buffer += data
        self.work()

    def work(self) -> None:
        while not self.transport.is_closing() and not self.held:
            if self.bdat is not None:
                if not self.take_chunk():
                    return
                continue
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.relay.contents.append(self.buffer[:end + 2])
                self.buffer = self.buffer[end + 5:]
                self.in_data = False
                self.end(self.relay.replies.get("END", "250 2.0.0 queued"))
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            self.command(line.decode())

    def take_chunk(self) -> bool:
        """Consume BDAT content; True once the chunk is complete and answered."""
        assert self.bdat is not None
        part, self.buffer = self.buffer[:self.bdat], self.buffer[self.bdat:]
        self.chunk += part
        self.bdat -= len(part)
        if self.bdat:
            return False
        self.bdat = None
        chunk, self.chunk = self.chunk, b""
        if not self.mail_ok:
            self.answer("503 5.5.1 need MAIL")
        elif not self.rcpts:
            self.mail_ok = False
            self.answer("554 5.5.1 no valid recipients")
        else:
            self.relay.contents.append(chunk)
            self.end(self.relay.replies.get("END", "250 2.0.0 queued"))
        return True

    def end(self, reply: str) -> None:
        """Answer a content; the transaction stays open after a refusal if the relay keeps
        it (as Postfix does), and the reply waits relay.hold_end seconds if set."""
        self.mail_ok = self.relay.keeps_open and not reply.startswith("2")
        if self.relay.replies_end:
            reply = self.relay.replies_end.pop(0)
            self.mail_ok = self.relay.keeps_open and not reply.startswith("2")
        if not self.relay.hold_end:
            self.answer(reply)
            return
        self.held = True
        self.relay.early.append(self.buffer)  # what came with the content, after its end

        def release() -> None:
            self.held = False
            self.answer(reply)
            self.work()

        asyncio.get_running_loop().call_later(self.relay.hold_end, release)

    def command(self, line: str) -> None:
        verb = line[:4].upper()
        replies = self.relay.replies
        if verb == "EHLO":
            pipelining = "250-PIPELINING\r\n" if self.relay.mode != "one-by-one" else ""
            chunking = "250-CHUNKING\r\n" if self.relay.mode == "chunked" else ""
            self.answer(f"250-scripted\r\n{pipelining}{chunking}250 SIZE 1000000")
        elif verb == "MAIL":
            if self.mail_ok:
                self.answer("503 5.5.1 Error: nested MAIL command")
                return
            reply = replies.get("MAIL", "250 2.1.0 ok")
            self.mail_ok, self.rcpts = reply.startswith("2"), 0
            self.answer(reply)
        elif verb == "RCPT":
            address = line.partition("<")[2].rstrip(">")
            reply = self.relay.rcpt.get(address, replies.get("RCPT", "250 2.1.5 ok"))
            if not self.mail_ok:
                reply = "503 5.5.1 need MAIL"
            self.rcpts += reply.startswith("2")
            self.answer(reply)
        elif verb == "DATA":
            reply = replies.get("DATA", "354 go ahead")
            if not self.mail_ok or (not self.rcpts and not self.relay.misbehave):
                reply = "554 5.5.1 no valid recipients" if self.mail_ok else "503 5.5.1 need MAIL"
            self.in_data = reply.startswith("354")
            self.answer(reply)
        elif verb == "BDAT" and self.relay.mode == "chunked":
            self.bdat = int(line.split()[1])
        elif verb == "RSET":
            self.mail_ok = False
            self.relay.rsets += 1
            self.answer("250 2.0.0 ok")
        elif verb in ("NOOP", "QUIT"):
            self.answer("250 ok" if verb == "NOOP" else "221 bye")
        else:
            self.answer("502 5.5.2 what")

    def answer(self, reply: str) -> None:
        self.transport.write(reply.encode() + b"\r\n")
        if reply.startswith("421"):
            self.transport.close()


class ScriptedRelay:
    def __init__(self) -> None:
        self.mode = "pipelined"
        self.misbehave = False
        self.replies: dict[str, str] = {}
        self.rcpt: dict[str, str] = {}
        self.replies_end: list[str] = []  # the replies to the next contents, in turn
        self.keeps_open = False  # a refused content leaves the transaction open (Postfix)
        self.hold_end = 0.0  # seconds the reply to a content is held back
        self.early: list[bytes] = []  # what arrived while such a reply was held back
        self.chunks: list[bytes] = []
        self.contents: list[bytes] = []
        self.connections = 0
        self.rsets = 0
        self.port = 0

    def account(self) -> Account:
        return Account("t1", "a1", "127.0.0.1", self.port, use_tls=False)


@pytest.fixture(params=["pipelined", "one-by-one", "chunked"])
async def scripted(request: pytest.FixtureRequest) -> AsyncIterator[ScriptedRelay]:
    relay = ScriptedRelay()
    relay.mode = request.param
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Scripted(relay), "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    yield relay
    server.close()
    await server.wait_closed()


@pytest.fixture
async def pool() -> AsyncIterator[SmtpPool]:
    smtp = SmtpPool(pool_size=1, pool_wait=2, connect_timeout=3, send_timeout=3,
                    local_hostname="client.test")
    yield smtp
    await smtp.close()


async def send(pool: SmtpPool, relay: ScriptedRelay, recipients: list[str] | None = None
               ) -> Any:
    return await pool.send(relay.account(), "a@example.com", recipients or ["b@example.org"],
                           MESSAGE)


CASES = [
    # step, reply, failure kind, whether the connection is kept
    ("MAIL", "451 4.3.0 try later", TemporaryFailure, True),
    ("MAIL", "550 5.7.1 relaying denied", PermanentFailure, True),
    ("MAIL", "421 4.3.2 closing", TemporaryFailure, False),
    ("RCPT", "450 4.2.1 mailbox busy", TemporaryFailure, True),
    ("RCPT", "550 5.1.1 no such user", PermanentFailure, True),
    ("RCPT", "421 4.3.2 closing", TemporaryFailure, False),
    ("DATA", "451 4.3.0 no space", TemporaryFailure, True),
    ("DATA", "554 5.7.1 not for you", PermanentFailure, True),
    ("DATA", "421 4.3.2 closing", TemporaryFailure, False),
    ("END", "452 4.3.1 full", TemporaryFailure, True),
    ("END", "552 5.3.4 too big", PermanentFailure, True),
    ("END", "421 4.3.2 closing", TemporaryFailure, False),
]


@pytest.mark.parametrize(("step", "reply", "kind", "kept"), CASES)
async def test_reply_class_at_each_step(
    scripted: ScriptedRelay, pool: SmtpPool, step: str, reply: str, kind: type[DeliveryError],
    kept: bool,
) -> None:
    if step == "DATA" and scripted.mode == "chunked":
        pytest.skip("BDAT replaces DATA")
    scripted.replies[step] = reply

    with pytest.raises(kind) as info:
        await send(pool, scripted)

    assert str(info.value) == reply
    assert info.value.code == int(reply[:3])
    on_wire = MESSAGE if scripted.mode == "chunked" else MESSAGE.replace(b"\r\n.", b"\r\n..")
    assert scripted.contents == ([on_wire] if step == "END" else [])
    scripted.replies.clear()
    assert await send(pool, scripted) == ()
    assert scripted.connections == (1 if kept else 2)


async def test_some_recipients_refused(scripted: ScriptedRelay, pool: SmtpPool) -> None:
    scripted.rcpt = {"x@example.org": "550 5.1.1 no such user", "y@example.org": "451 4.4.0 later"}

    refused = await send(pool, scripted, ["x@example.org", "ok@example.org", "y@example.org"])

    assert [(r.address, r.code, r.reason) for r in refused] == [
        ("x@example.org", 550, "5.1.1 no such user"), ("y@example.org", 451, "4.4.0 later")]
    assert len(scripted.contents) == 1


async def test_all_refused_with_a_4xx_is_temporary(scripted: ScriptedRelay, pool: SmtpPool
                                                   ) -> None:
    scripted.rcpt = {"x@example.org": "550 5.1.1 no such user", "y@example.org": "451 4.4.0 later"}

    with pytest.raises(TemporaryFailure) as info:
        await send(pool, scripted, ["x@example.org", "y@example.org"])

    assert info.value.code == 451 and len(info.value.recipients) == 2
    assert scripted.rsets == 1
    assert await send(pool, scripted) == ()
    assert scripted.connections == 1


async def test_commands_go_in_one_write_only_when_pipelining(
    scripted: ScriptedRelay, pool: SmtpPool
) -> None:
    await send(pool, scripted)
    scripted.chunks.clear()

    await send(pool, scripted, ["b@example.org", "c@example.org"])

    envelope = (f"MAIL FROM:<a@example.com> SIZE={len(MESSAGE)}\r\nRCPT TO:<b@example.org>\r\n"
                "RCPT TO:<c@example.org>\r\n").encode()
    if scripted.mode == "chunked":  # content and all, unstuffed
        assert scripted.chunks[0] == envelope + f"BDAT {len(MESSAGE)} LAST\r\n".encode() + MESSAGE
    elif scripted.mode == "pipelined":
        assert scripted.chunks[0] == envelope + b"DATA\r\n"
    else:
        assert scripted.chunks[:4] == [*envelope.splitlines(keepends=True), b"DATA\r\n"]
    assert scripted.contents[-1].replace(b"\r\n..", b"\r\n.") == MESSAGE


async def test_354_after_every_recipient_was_refused_drops_the_connection(
    scripted: ScriptedRelay, pool: SmtpPool
) -> None:
    scripted.misbehave = True
    scripted.rcpt = {"x@example.org": "550 5.1.1 no such user"}

    with pytest.raises(PermanentFailure):
        await send(pool, scripted, ["x@example.org"])

    assert await send(pool, scripted) == ()
    assert len(scripted.contents) == 1  # only the second message; nothing sent after the 354
    assert scripted.connections == (2 if scripted.mode == "pipelined" else 1)


async def test_an_unreadable_reply_after_the_content_drops_the_connection(
    scripted: ScriptedRelay, pool: SmtpPool
) -> None:
    """After a reply that cannot be parsed the session may be out of step: an RSET on it
    could read the wrong reply, so the connection is closed and the next send opens one."""
    scripted.replies["END"] = "queued, thanks"  # no reply code at all

    with pytest.raises(TemporaryFailure):
        await send(pool, scripted)

    scripted.replies.clear()
    assert await send(pool, scripted) == ()
    assert scripted.rsets == 0
    assert scripted.connections == 2


# -- the reply parser on its own --------------------------------------------------------------


class _Inner(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: list[Exception | None] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def test_parser_reads_replies_split_anywhere_and_joined() -> None:
    wire = b"250 ok\r\n250-first\r\n250-second\r\n250 last\r\n354 go\r\n"
    for cut in range(1, len(wire)):
        replies = _Replies(_Inner())
        owed = replies.expect(3)
        replies.data_received(wire[:cut])
        replies.data_received(wire[cut:])
        got = [await reply for reply in owed]
        assert [(r.code, r.message) for r in got] == [
            (250, "ok"), (250, "first\nsecond\nlast"), (354, "go")]
        assert replies.owed == 0


async def test_parser_reports_garbage_and_loss_after_what_it_read() -> None:
    import aiosmtplib

    inner = _Inner()
    replies = _Replies(inner)
    first, second = replies.expect(2)
    replies.data_received(b"250 ok\r\nnonsense\r\n")
    assert (await first).code == 250
    with pytest.raises(aiosmtplib.SMTPResponseException, match="Malformed"):
        await second
    (later,) = replies.expect(1)  # nothing after garbage is read: the stream is out of step
    with pytest.raises(aiosmtplib.SMTPResponseException, match="Malformed"):
        await later

    replies = _Replies(inner)
    (reply,) = replies.expect(1)
    replies.data_received(b"250-x" * 10_000)
    with pytest.raises(aiosmtplib.SMTPResponseException, match="too long"):
        await reply

    replies = _Replies(inner)
    first, second = replies.expect(2)
    replies.data_received(b"421 bye\r\n")
    replies.connection_lost(None)
    assert (await first).code == 421
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await second
    assert inner.lost == [None]  # aiosmtplib's protocol learns of the loss too


async def test_a_reply_nobody_asked_for_fails_the_connection() -> None:
    """A relay that answers more than it was asked is out of step (or is closing an idle
    session): the connection is closed, not read on."""
    import aiosmtplib

    class Transport(asyncio.Transport):
        closed = False

        def close(self) -> None:
            self.closed = True

    transport = Transport()
    replies = _Replies(_Inner(), transport)
    replies.data_received(b"421 4.4.2 idle too long\r\n")
    assert transport.closed
    (reply,) = replies.expect(1)
    with pytest.raises(aiosmtplib.SMTPResponseException, match="nobody asked for"):
        await reply


# -- transactions written behind one another ---------------------------------------------------


async def test_the_next_transaction_is_written_while_the_content_reply_is_awaited(
    scripted: ScriptedRelay, pool: SmtpPool
) -> None:
    """One connection, two messages at once: on a pipelining relay the second message's
    commands are on the wire before the first one's content is answered; never otherwise
    (one by one, or chunked, where a refused BDAT leaves the session to the relay)."""
    await send(pool, scripted)  # the connection is open and pooled
    scripted.hold_end = 0.3

    assert await asyncio.gather(send(pool, scripted), send(pool, scripted)) == [(), ()]

    early = b"".join(scripted.early)
    assert (b"MAIL FROM:<a@example.com>" in early) == (scripted.mode == "pipelined")
    assert len(scripted.contents) == 3 and scripted.connections == 1


@pytest.mark.parametrize("held", [False, True], ids=["answered", "still-awaited"])
@pytest.mark.parametrize("end", ["554 5.7.1 refused after the content",
                                 "451 4.3.0 later after the content"])
async def test_a_refused_content_that_leaves_the_transaction_open(
    scripted: ScriptedRelay, pool: SmtpPool, end: str, held: bool
) -> None:
    """A relay that keeps the transaction open after refusing a content (Postfix answers
    the next MAIL with 503 "nested MAIL command"): the next message goes through, on the
    same connection if it was written after the refusal was read (it begins with RSET), on
    a new one if it was written behind the content, before the refusal came (its RCPT and
    DATA went into the open transaction: the connection is dropped without a content)."""
    scripted.keeps_open = True
    await send(pool, scripted)
    scripted.replies_end = [end]
    scripted.hold_end = 0.2 if held else 0.0

    if held:
        first, second = await asyncio.gather(send(pool, scripted), send(pool, scripted),
                                             return_exceptions=True)
    else:
        (first,) = await asyncio.gather(send(pool, scripted), return_exceptions=True)
        second = await send(pool, scripted)

    assert isinstance(first, DeliveryError) and str(first) == end
    assert isinstance(first, PermanentFailure if end.startswith("5") else TemporaryFailure)
    assert second == ()
    overlapped = held and scripted.mode == "pipelined"
    assert len(scripted.contents) == 3
    assert scripted.connections == (2 if overlapped else 1)
    assert scripted.rsets == (0 if overlapped else 1)
    rsets = scripted.rsets
    assert await send(pool, scripted) == ()  # and the connection is in step
    assert scripted.rsets == rsets
